"""Choose how a holistic step stores its activations: measure small, extrapolate, pick what fits.

Saved-activation bytes grow linearly with pixels, so two dry forward+backward runs at small sizes
give bytes per pixel for every policy; the planner predicts the peak of the full scene and picks
the cheapest policy that fits the budget, or refuses before anything big starts, saying how much
the leanest policy would need.
"""

from __future__ import annotations

import copy
import re
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import ElegantvizError
from .band_model import band_model
from .checkpoint import checkpoint_hrnet, find_hrnets
from .hooks import (DEFAULT_THRESHOLD, DiskOffload, HostOffload, _Kept, _nbytes, _OffloadHooks, _Saved,
                    default_spill_root)
from .meter import MemoryMeter

__all__ = ["Policy", "Plan", "plan", "LiveTensorBytes", "parse_size", "format_size", "MemoryBudgetError",
           "POLICY_NAMES",
           "default_budget", "mmap_large_allocations"]

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4,
          "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}

# Cheapest first. Checkpointing costs a bounded amount of compute (the backbone's forward once
# more, +30-70 % step time here); spilling costs 2-4 GB of disk traffic per megapixel each way,
# which the page cache hides only while it fits (benchmarks/results/memory.json). Host memory
# on CUDA overlaps with compute and comes first there.
# Banding (``band``) comes last: its segments run 3-6 passes each, and it is what brings the
# 3 GB full-resolution maps of a 6800x7200 scene down to one band each.
POLICY_NAMES = ("none", "host", "checkpoint", "checkpoint+host", "disk", "checkpoint+disk", "checkpoint+band",
                "checkpoint+band+host", "checkpoint+band+disk")
_CUDA_ORDER = POLICY_NAMES
_CPU_ORDER = ("none", "checkpoint", "disk", "checkpoint+disk", "checkpoint+band", "checkpoint+band+disk")


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


def mmap_large_allocations(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc serve allocations >= ``threshold_bytes`` with mmap; False where that fails.

    By default glibc raises its mmap threshold after each large free (up to 32 MiB) and keeps
    freed heap memory for reuse, so a step that spills or recomputes frees activations that
    the process still holds: peak RSS here was up to 2x the live tensor bytes (1.56 vs 0.88 GiB
    at 1024 px with disk spill). Process-wide and not undone; call once at start-up.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


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


class _Measure(_OffloadHooks):
    """Keeps everything in place and counts the distinct saved bytes (for policies without hooks)."""

    def __init__(self, threshold_bytes: int, keep: nn.Module):
        super().__init__(threshold_bytes, None, 0, keep)
        self.total = 0

    def _store(self, rec: _Saved, t: torch.Tensor) -> _Kept:
        return _Kept(t.detach(), None, counted=False)

    def _on_new(self, nbytes: int, small: bool) -> None:
        self.total += nbytes


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the CPU tensor storages created while active (forward, hooks and backward).

    CPU tensors have no allocator statistics; this counts every op's output storages and drops
    them when their storage dies (swept every few ops and whenever the peak would grow by
    over 1 %, so the peak is exact to 1 %).
    Parameter gradients are left out (a fixed cost the planner adds itself): counted, they make
    the peak of a small dry run a poor guide to how it grows with pixels.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0
        self._ops = 0
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._handles: list[Any] = []

    def __enter__(self) -> "LiveTensorBytes":
        self._handles = [p.register_post_accumulate_grad_hook(self._forget_grad) for p in self._params]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        super().__exit__(*exc)

    def _forget_grad(self, p: torch.Tensor) -> None:
        entry = self.live.pop(p.grad.untyped_storage().data_ptr(), None)
        if entry is not None:
            self.now -= entry[1]

    def _sweep(self) -> None:
        for ptr in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(ptr)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._ops += 1
        if self._ops % 8 == 0:
            self._sweep()
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            entry = self.live.get(ptr)
            if nbytes == 0 or (entry is not None and not entry[0].expired()):
                continue
            if entry is not None:
                self.now -= entry[1]
            self.live[ptr] = (StorageWeakRef(storage), nbytes)
            self.now += nbytes
            if self.now > self.peak * 1.01:
                self._sweep()  # a new peak counts what is still alive (to within 1 %: sweeping at
            self.peak = max(self.peak, self.now)  # every new peak made a step 6x slower)
        return out


def _default_loss(out: Any) -> torch.Tensor:
    """Cross-entropy on every 4-D output (logits and auxiliary logits), like the real loss; logits
    at a feature stride (``upsample=False``) through the banded BAE loss, as the trainer does."""
    stride = int(getattr(out, "stride", 1) or 1)
    if stride > 1:
        from ..losses import banded_bae_loss

        n, _, h, w = out.logits.shape
        labels = torch.zeros(n, h * stride, w * stride, dtype=torch.uint8, device=out.logits.device)
        seg, aux = banded_bae_loss(out.logits, out.aux_logits, labels, stride)
        return seg + aux
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

    def predict(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Predicted peak per measured policy for another scene size, from the same dry runs.

        Band policies are predicted with bands covering the same share of that scene as of the
        planned one (their bytes are linear in pixels only at a fixed share)."""
        m = self.measured
        px = _pad32(height) * _pad32(width)
        return {n: _need(n, _fit(m["pixels"], m["rows"][n], px) * batch, batch * px, m["params_bytes"],
                         m["max_inflight_bytes"]) for n in self.needs}

    def summary(self) -> str:
        rows = ", ".join(f"{k} {format_size(v)}" for k, v in self.needs.items())
        return (f"policy {self.policy.name}: needs {format_size(self.needs[self.policy.name])} of "
                f"{format_size(self.budget_bytes)} budget ({rows})")


def _disk_free(spill_dir: str | None) -> int:
    return shutil.disk_usage(spill_dir or default_spill_root()).free


def _need(name: str, activations: float, pixels: int, params_bytes: int, inflight_bytes: int) -> int:
    """A policy's predicted peak: its activations at the scene's size, + 8 bytes/px of labels,
    + twice the parameters (gradients, momentum), + the disk writer's in-flight bytes."""
    return int(activations + 8 * pixels + 2 * params_bytes + (inflight_bytes if "disk" in name else 0))


def _fit(x: Sequence[float], y: Sequence[float], at: float) -> float:
    b = (y[1] - y[0]) / (x[1] - x[0])
    return max(0.0, y[0] + b * (at - x[0]))


def _pad32(n: int) -> int:
    return -(-n // 32) * 32


def _dry_run(model: nn.Module, x: torch.Tensor, loss_fn: Callable[[Any], torch.Tensor],
             policy: Policy, forward_kwargs: dict | None = None) -> tuple[int, int, int]:
    """One forward+backward under ``policy``: (peak bytes on the device, peak saved bytes held in
    host memory, distinct saved bytes). CPU peaks come from :class:`LiveTensorBytes`, CUDA ones from
    the caching allocator."""
    meter = MemoryMeter(x.device)
    hooks = policy.hooks(model, meter) or _Measure(policy.threshold_bytes, model)
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
    live = LiveTensorBytes(model) if not cuda else nullcontext()
    try:
        with policy.wrapped(model), hooks, live:
            loss_fn(model(x, **(forward_kwargs or {}))).backward()
    finally:
        model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated(x.device) - base if cuda else live.peak
    counters = meter.snapshot()
    saved = hooks.total if isinstance(hooks, _Measure) else counters["saved_bytes"]
    return int(peak), counters["held_host_peak_bytes"] if cuda else 0, int(saved)


def plan(model: nn.Module, sample_shape: Sequence[int], budget_bytes: int | str | None = None,
         device: torch.device | str | None = None, *, batch: int = 1, sizes: tuple[int, int] = (128, 256),
         candidates: Sequence[str] | None = None, loss_fn: Callable[[Any], torch.Tensor] | None = None,
         threshold_bytes: int = DEFAULT_THRESHOLD, spill_dir: str | None = None,
         max_inflight_bytes: int = 64 << 20, margin: float = 0.8, evaluate_all: bool = False,
         forward_kwargs: dict | None = None, band_bytes: int = 64 << 20) -> Plan:
    """Pick the cheapest policy whose predicted peak for ``batch`` scenes of ``sample_shape``
    ``(c, h, w)`` fits ``budget_bytes`` (default: free memory times ``margin``).

    A dry forward+backward per candidate policy at each of two small sizes, on a copy of
    ``model``, under that policy's own hooks and checkpointing (the threshold scaled so that a
    tensor is kept or moved as it will be at full size), measures the peak bytes of live tensors
    (CPU: every op's outputs through a dispatch mode; CUDA: the allocator's peak). Peaks grow
    linearly with pixels; the fit at the full scene, + 8 bytes/px of labels, + twice the
    parameters (gradients, momentum), + the disk writer's in-flight bytes, is the need of each
    policy. A disk policy also needs room for every saved tensor in the spill folder. Policies
    are tried cheapest first and the first that fits is taken
    (``evaluate_all=True`` measures all of them, for reports); each costs two small steps.
    ``forward_kwargs`` go to the model's forward as in the real step (the trainer passes
    ``upsample=False``, and the default loss then is the banded BAE loss).
    Raises :class:`MemoryBudgetError` if nothing fits.
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
    host_budget = default_budget("cpu", margin) if cuda else None
    pixels = [float(s * s) for s in sizes]
    rows: dict[str, list[float]] = {}
    needs: dict[str, int] = {}
    spill: dict[str, int] = {}  # bytes a disk policy writes (it keeps every saved tensor there)
    disk_free = _disk_free(spill_dir)
    chosen: str | None = None
    for name in order:
        for s in sizes:
            # A tensor of n bytes here has n * scene_px / px bytes at full size: classify it as such.
            # Bands likewise: the same fraction of the image per band as at full size.
            scale = s * s * batch / scene_px
            x = torch.randn(1, c, s, s, device=device)
            peak, host, saved = _dry_run(probe_model, x, loss_fn, Policy.from_name(
                name, threshold_bytes=max(1, int(threshold_bytes * scale)), spill_dir=spill_dir,
                max_inflight_bytes=0, band_bytes=max(1024, int(band_bytes * scale))), forward_kwargs)
            rows.setdefault(name, []).append(peak + _nbytes(x))
            rows.setdefault(name + ":host", []).append(host)
            rows.setdefault(name + ":saved", []).append(saved)
        full = {k: _fit(pixels, rows[k], scene_px / batch) * batch for k in (name, name + ":host", name + ":saved")}
        needs[name] = _need(name, full[name], scene_px, params, max_inflight_bytes)
        fits = needs[name] <= budget and not (cuda and "host" in name and full[name + ":host"] > host_budget)
        if "disk" in name:
            spill[name] = int(full[name + ":saved"])
            fits = fits and spill[name] <= disk_free
        if fits and chosen is None:
            chosen = name
            if not evaluate_all:
                break
    del probe_model
    mpx = scene_px / 1e6
    full = {k: _fit(pixels, v, scene_px / batch) * batch for k, v in rows.items()}
    measured = {"sizes": list(sizes), "pixels": pixels, "rows": rows, "params_bytes": params, "full": full,
                "max_inflight_bytes": max_inflight_bytes, "spill_bytes": spill, "disk_free_bytes": disk_free}
    if chosen is not None:
        pol = Policy.from_name(chosen, threshold_bytes=threshold_bytes, spill_dir=spill_dir,
                               max_inflight_bytes=max_inflight_bytes, band_bytes=band_bytes)
        return Plan(pol, budget, needs, scene_px, {k: v / mpx for k, v in needs.items()}, measured)
    leanest = min(needs, key=needs.get)
    rows_txt = ", ".join(f"{k} {format_size(v)}" for k, v in needs.items())
    disk_txt = "".join(f"; {k} would write {format_size(v)} to the spill folder, which has {format_size(disk_free)} "
                       f"free" for k, v in spill.items() if v > disk_free)
    raise MemoryBudgetError(
        f"{batch} x {c}x{h}x{w} does not fit: the leanest policy ({leanest}) needs about "
        f"{format_size(needs[leanest])}, the budget is {format_size(budget)} (per policy: {rows_txt}){disk_txt}. "
        "Raise --memory-budget, free memory or disk (memory.spill_dir), or train on smaller scenes."
    )
