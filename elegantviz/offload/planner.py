"""Choose how a holistic step stores its activations: measure small, extrapolate, pick what fits.

Saved-activation bytes grow linearly with pixels, so two dry forward+backward runs at small sizes
give bytes per pixel for every policy; the planner predicts the peak of the full scene and picks
the cheapest policy that fits the budget, or refuses before anything big starts, saying how much
the leanest policy would need.
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ElegantvizError
from .checkpoint import CheckpointHandle, checkpoint_hrnet, find_hrnets
from .hooks import DEFAULT_THRESHOLD, DiskOffload, HostOffload, _Kept, _OffloadHooks, _Saved
from .meter import MemoryMeter

__all__ = ["Policy", "Plan", "plan", "parse_size", "format_size", "MemoryBudgetError", "POLICY_NAMES",
           "default_budget"]

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4,
          "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}

# Cheapest first. On CPU, spilling to the page cache costs less time than recomputing (see
# benchmarks/results/memory.json); checkpointing before disk on CUDA, where recompute is cheap
# and PCIe/disk are slow.
POLICY_NAMES = ("none", "host", "disk", "checkpoint", "checkpoint+host", "checkpoint+disk")
_CUDA_ORDER = ("none", "host", "checkpoint", "checkpoint+host", "disk", "checkpoint+disk")
_CPU_ORDER = ("none", "disk", "checkpoint", "checkpoint+disk")


class MemoryBudgetError(ElegantvizError, MemoryError):
    """No policy fits the memory budget; the message says how much the leanest one needs."""


def parse_size(text: str | int | float) -> int:
    """Bytes from ``"12GB"``, ``"1.5 GiB"``, ``"800M"`` or a number.

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB and bare K/M/G/T powers of 1024.
    """
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 12GB, 1.5GiB, 800M, 1000000)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def default_budget(device: torch.device | str = "cpu", margin: float = 0.8) -> int:
    """What the machine has free now, times ``margin`` (device memory on CUDA, else RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * margin)
    import psutil

    return int(psutil.virtual_memory().available * margin)


@dataclass(frozen=True)
class Policy:
    """How a training step keeps its activations; ``apply`` turns it on around forward+backward.

    ``offload``: ``"none"``, ``"host"`` (pinned host memory; a pass-through on CPU) or ``"disk"``.
    ``checkpoint``: recompute the HRNet stem, layer1 blocks and HRNet modules (and MLK with
    ``checkpoint_mlk``) in backward.
    """

    checkpoint: bool = False
    offload: str = "none"
    checkpoint_mlk: bool = False
    threshold_bytes: int = DEFAULT_THRESHOLD
    spill_dir: str | None = None
    prefetch: int = 2
    max_inflight_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.offload not in ("none", "host", "disk"):
            raise ValueError(f"offload must be 'none', 'host' or 'disk', got {self.offload!r}")

    @property
    def name(self) -> str:
        parts = (["checkpoint"] if self.checkpoint else []) + ([self.offload] if self.offload != "none" else [])
        return "+".join(parts) or "none"

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> "Policy":
        """``"none"``, ``"checkpoint"``, ``"host"``, ``"disk"``, ``"checkpoint+disk"``, ..."""
        parts = set(name.split("+")) - {"none"}
        unknown = parts - {"checkpoint", "host", "disk"}
        if unknown or {"host", "disk"} <= parts:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        offload = "host" if "host" in parts else "disk" if "disk" in parts else "none"
        return cls(checkpoint="checkpoint" in parts, offload=offload, **kwargs)

    def hooks(self, model: nn.Module | None = None, meter: MemoryMeter | None = None) -> _OffloadHooks | None:
        """The saved-tensor hooks of this policy (None for no offload); parameters stay in place."""
        if self.offload == "host":
            return HostOffload(self.threshold_bytes, meter, self.prefetch, keep=model)
        if self.offload == "disk":
            return DiskOffload(self.spill_dir, self.threshold_bytes, meter, self.prefetch, keep=model,
                               max_inflight_bytes=self.max_inflight_bytes)
        return None

    @contextmanager
    def apply(self, model: nn.Module, meter: MemoryMeter | None = None) -> Iterator[_OffloadHooks | None]:
        """``with policy.apply(model, meter): loss = f(model(x)); loss.backward()``.

        Backward must run inside: the disk target deletes its spill folder on exit. Checkpoint
        wrappers are installed on entry and removed on exit (the model is unchanged afterwards).
        """
        handle: CheckpointHandle | None = None
        if self.checkpoint:
            handle = checkpoint_hrnet(model, mlk=self.checkpoint_mlk)
        try:
            hooks = self.hooks(model, meter)
            with hooks if hooks is not None else nullcontext():
                yield hooks
        finally:
            if handle is not None:
                handle.remove()


class _Measure(_OffloadHooks):
    """Keeps everything in place and counts, per full-scene class: small, big, largest tensor."""

    def __init__(self, threshold_bytes: int, keep: nn.Module):
        super().__init__(threshold_bytes, None, 0, keep)
        self.small = self.big = self.largest = 0

    def _store(self, rec: _Saved, t: torch.Tensor) -> _Kept:
        return _Kept(t.detach(), None, counted=False)

    def _on_new(self, nbytes: int, small: bool) -> None:
        if small:
            self.small += nbytes
        else:
            self.big += nbytes
        self.largest = max(self.largest, nbytes)


def _segment_hooks(model: nn.Module, probe: _Measure) -> tuple[list[Any], list[int]]:
    """Forward hooks recording the saved bytes of each checkpoint segment (the recompute peak)."""
    sizes: list[int] = []
    handles = []
    starts: dict[int, int] = {}

    def pre(m: nn.Module, *_: Any) -> None:
        starts[id(m)] = probe.small + probe.big

    def post(m: nn.Module, *_: Any) -> None:
        sizes.append(probe.small + probe.big - starts.pop(id(m), probe.small + probe.big))

    segments: list[tuple[nn.Module, nn.Module]] = []
    for body in find_hrnets(model):
        segments.append((body.conv1, body.act2))
        segments += [(b, b) for b in body.layer1]
        segments += [(m, m) for stage in (body.stage2, body.stage3, body.stage4) for m in stage]
    for first, last in segments:
        handles.append(first.register_forward_pre_hook(lambda m, a, f=first: pre(f)))
        handles.append(last.register_forward_hook(lambda m, a, o, f=first: post(f)))
    return handles, sizes


def _default_loss(out: Any) -> torch.Tensor:
    """Cross-entropy on every 4-D output (logits and auxiliary logits), like the real loss."""
    if hasattr(out, "logits"):
        tensors = [out.logits] + ([out.aux_logits] if getattr(out, "aux_logits", None) is not None else [])
    elif isinstance(out, torch.Tensor):
        tensors = [out]
    else:
        tensors = [t for t in out if isinstance(t, torch.Tensor)]
    loss = tensors[0].new_zeros((), dtype=torch.float32)
    for t in tensors:
        if t.ndim == 4 and t.shape[1] >= 2:
            target = torch.zeros(t.shape[0], *t.shape[2:], dtype=torch.long, device=t.device)
            loss = loss + F.cross_entropy(t.float(), target)
        else:
            loss = loss + t.float().mean()
    return loss


@dataclass
class Plan:
    """The chosen policy and the figures behind the choice (bytes at the full scene)."""

    policy: Policy
    budget_bytes: int
    needs: dict[str, int]  # predicted peak per policy name
    scene_pixels: int
    per_megapixel: dict[str, float] = field(default_factory=dict)  # bytes/Mpx of the need, per policy
    measured: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        rows = ", ".join(f"{k} {format_size(v)}" for k, v in self.needs.items())
        return (f"policy {self.policy.name}: needs {format_size(self.needs[self.policy.name])} of "
                f"{format_size(self.budget_bytes)} budget ({rows})")


def _fit(x: Sequence[float], y: Sequence[float], at: float) -> float:
    b = (y[1] - y[0]) / (x[1] - x[0])
    return max(0.0, y[0] + b * (at - x[0]))


def _pad32(n: int) -> int:
    return -(-n // 32) * 32


def plan(model: nn.Module, sample_shape: Sequence[int], budget_bytes: int | str | None = None,
         device: torch.device | str | None = None, *, batch: int = 1, sizes: tuple[int, int] = (64, 128),
         candidates: Sequence[str] | None = None, loss_fn: Callable[[Any], torch.Tensor] | None = None,
         threshold_bytes: int = DEFAULT_THRESHOLD, spill_dir: str | None = None,
         max_inflight_bytes: int = 64 << 20, margin: float = 0.8) -> Plan:
    """Pick the cheapest policy whose predicted peak for ``batch`` scenes of ``sample_shape``
    ``(c, h, w)`` fits ``budget_bytes`` (default: free memory times ``margin``).

    Two dry runs per size (plain and checkpointed) on a copy of ``model`` measure, per pixel: all
    saved bytes, the bytes that stay in memory under the threshold, the largest checkpoint
    segment (recomputed in backward) and the largest tensor (a stand-in for the gradient working
    set, counted three times). Peak = those, per policy, + 8 bytes/px of labels + 3x the
    parameters (gradients, momentum). Raises :class:`MemoryBudgetError` if nothing fits.
    """
    c, h, w = (int(v) for v in sample_shape)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    budget = parse_size(budget_bytes) if budget_bytes is not None else default_budget(device, margin)
    cuda = device.type == "cuda"
    order = [n for n in (_CUDA_ORDER if cuda else _CPU_ORDER) if candidates is None or n in candidates]
    has_hrnet = bool(find_hrnets(model))
    if not has_hrnet:
        order = [n for n in order if "checkpoint" not in n]
    loss_fn = loss_fn or _default_loss
    scene_px = batch * _pad32(h) * _pad32(w)

    probe_model = copy.deepcopy(model).to(device).train()
    params = sum(p.numel() * p.element_size() for p in probe_model.parameters())
    rows: dict[str, list[float]] = {k: [] for k in ("all", "small", "ckpt_all", "ckpt_small", "segment", "largest")}
    pixels: list[float] = []
    for s in sizes:
        px = s * s
        pixels.append(px)
        # A tensor of n bytes here has n * scene_px / px bytes at full size: classify it as such.
        thr = max(1, int(threshold_bytes * px / scene_px))
        x = torch.randn(1, c, s, s, device=device)
        for ck in ([False, True] if has_hrnet else [False]):
            probe = _Measure(thr, probe_model)
            handles, segs = _segment_hooks(probe_model, probe) if not ck else ([], [])
            ctx = Policy(checkpoint=ck).apply(probe_model)
            try:
                with ctx, probe:
                    loss_fn(probe_model(x)).backward()
            finally:
                for hd in handles:
                    hd.remove()
            probe_model.zero_grad(set_to_none=True)
            if not ck:
                rows["all"].append(probe.small + probe.big)
                rows["small"].append(probe.small)
                rows["segment"].append(max(segs, default=0))
                rows["largest"].append(probe.largest)
            else:
                rows["ckpt_all"].append(probe.small + probe.big)
                rows["ckpt_small"].append(probe.small)
        del x
    del probe_model
    full = {k: _fit(pixels, v, scene_px / batch) * batch for k, v in rows.items() if v}
    work = 3 * full["largest"] + 8 * scene_px + 3 * params
    inflight = max_inflight_bytes
    needs_all = {
        "none": full["all"] + work,
        "host": full["small"] + work,  # device side; the rest goes to host RAM
        "disk": full["small"] + inflight + work,
    }
    if has_hrnet:
        needs_all.update({
            "checkpoint": full["ckpt_all"] + full["segment"] + work,
            "checkpoint+host": full["ckpt_small"] + full["segment"] + work,
            "checkpoint+disk": full["ckpt_small"] + full["segment"] + inflight + work,
        })
    needs = {n: int(needs_all[n]) for n in order}
    host_needs = {"host": full["all"] - full["small"],
                  "checkpoint+host": full.get("ckpt_all", 0) - full.get("ckpt_small", 0)}
    host_budget = default_budget("cpu", margin) if cuda else None
    mpx = scene_px / 1e6
    measured = {"sizes": list(sizes), "rows": rows, "params_bytes": params, "full": full}
    for name in order:
        if needs[name] > budget:
            continue
        if cuda and name in host_needs and host_needs[name] > host_budget:
            continue
        pol = Policy.from_name(name, threshold_bytes=threshold_bytes, spill_dir=spill_dir,
                               max_inflight_bytes=max_inflight_bytes)
        return Plan(pol, budget, needs, scene_px, {k: v / mpx for k, v in needs.items()}, measured)
    leanest = min(needs, key=needs.get)
    rows_txt = ", ".join(f"{k} {format_size(v)}" for k, v in needs.items())
    raise MemoryBudgetError(
        f"{batch} x {c}x{h}x{w} does not fit: the leanest policy ({leanest}) needs about "
        f"{format_size(needs[leanest])}, the budget is {format_size(budget)} (per policy: {rows_txt}). "
        "Raise --memory-budget, free memory, or train on smaller scenes."
    )
