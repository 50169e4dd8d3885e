"""How a training step keeps its activations: checkpointing, banding and an offload target.

A :class:`Policy` is a name (``"checkpoint+disk"``) plus its settings; ``apply`` installs it
around one forward+backward and removes it afterwards. :func:`.planner.plan` picks one.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch.nn as nn

from .band_model import band_model
from .checkpoint import checkpoint_hrnet
from .disk import DiskOffload
from .hooks import DEFAULT_THRESHOLD, OffloadHooks
from .host import HostOffload
from .meter import MemoryMeter

__all__ = ["Policy", "POLICY_NAMES"]

# Cheapest first. Checkpointing costs a bounded amount of compute (the backbone's forward once
# more, +30-70 % step time here); spilling costs 2-4 GB of disk traffic per megapixel each way,
# which the page cache hides only while it fits (benchmarks/results/memory.json). Host memory
# on CUDA overlaps with compute and comes first there.
# Banding (``band``) comes last: its segments run 3-6 passes each, and it is what brings the
# 3 GB full-resolution maps of a 6800x7200 scene down to one band each.
POLICY_NAMES = ("none", "host", "checkpoint", "checkpoint+host", "disk", "checkpoint+disk", "checkpoint+band",
                "checkpoint+band+host", "checkpoint+band+disk")


@dataclass(frozen=True)
class Policy:
    """How a training step keeps its activations; ``apply`` turns it on around forward+backward.

    ``offload``: ``"none"``, ``"host"`` (pinned host memory; a pass-through on CPU) or ``"disk"``.
    ``checkpoint``: recompute the HRNet stem, layer1 blocks and HRNet modules, and with
    ``checkpoint_head`` (the default) the context module and the heads, in backward. The heads
    halve what a 6800x7200 step keeps (ElegantSeg-S: 72 -> 36 GiB saved; 48 -> 28 GiB peak
    without spilling) for a few 1x1 convolutions more.
    ``band``: run the stem, layer1, the heads and the context module band by band instead
    (:mod:`.band_model`; exact, BatchNorm included), so that their full-resolution maps are never
    recomputed whole (a band's input is about ``band_bytes``); HRNet's modules are then
    checkpointed with their blocks nested inside.
    """

    checkpoint: bool = False
    band: bool = False
    band_bytes: int = 64 << 20
    offload: str = "none"
    checkpoint_head: bool = True
    threshold_bytes: int = DEFAULT_THRESHOLD
    spill_dir: str | None = None
    prefetch: int = 2
    max_inflight_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.offload not in ("none", "host", "disk"):
            raise ValueError(f"offload must be 'none', 'host' or 'disk', got {self.offload!r}")

    @property
    def name(self) -> str:
        parts = (["checkpoint"] if self.checkpoint else []) + (["band"] if self.band else []) + \
            ([self.offload] if self.offload != "none" else [])
        return "+".join(parts) or "none"

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> "Policy":
        """``"none"``, ``"checkpoint"``, ``"host"``, ``"disk"``, ``"checkpoint+disk"``, ..."""
        parts = set(name.split("+")) - {"none"}
        unknown = parts - {"checkpoint", "band", "host", "disk"}
        if unknown or {"host", "disk"} <= parts:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        offload = "host" if "host" in parts else "disk" if "disk" in parts else "none"
        return cls(checkpoint="checkpoint" in parts, band="band" in parts, offload=offload, **kwargs)

    def hooks(self, model: nn.Module | None = None, meter: MemoryMeter | None = None) -> OffloadHooks | None:
        """The saved-tensor hooks of this policy (None for no offload); parameters stay in place."""
        if self.offload == "host":
            return HostOffload(self.threshold_bytes, meter, self.prefetch, keep=model)
        if self.offload == "disk":
            return DiskOffload(self.spill_dir, self.threshold_bytes, meter, self.prefetch, keep=model,
                               max_inflight_bytes=self.max_inflight_bytes)
        return None

    @contextmanager
    def apply(self, model: nn.Module, meter: MemoryMeter | None = None) -> Iterator[OffloadHooks | None]:
        """``with policy.apply(model, meter): loss = f(model(x)); loss.backward()``.

        Backward must run inside: the disk target deletes its spill folder on exit. Checkpoint
        wrappers are installed on entry and removed on exit (the model is unchanged afterwards).
        """
        with self.wrapped(model):
            hooks = self.hooks(model, meter)
            with hooks if hooks is not None else nullcontext():
                yield hooks

    @contextmanager
    def wrapped(self, model: nn.Module) -> Iterator[None]:
        """The policy's checkpointing and banding installed on ``model``, removed on exit."""
        handles: list[Any] = []
        try:
            if self.band:
                handles.append(band_model(model, self.band_bytes))
            if self.checkpoint:
                handles.append(checkpoint_hrnet(model, stem=not self.band, layer1=not self.band,
                                                head=self.checkpoint_head and not self.band, blocks=self.band))
            yield
        finally:
            for h in reversed(handles):
                h.remove()
