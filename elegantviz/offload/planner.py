"""Choose how a holistic step stores its activations: measure small, extrapolate, pick what fits.

Saved-activation bytes grow linearly with pixels, so two dry forward+backward runs at small sizes
give bytes per pixel for every policy; the planner predicts the peak of the full scene and picks
the cheapest policy that fits the budget, or refuses before anything big starts, saying how much
the leanest policy would need.
"""

from __future__ import annotations

import copy
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ElegantvizError
from ..models.hrnet import find_hrnets
from .disk import default_spill_root
from .hooks import DEFAULT_THRESHOLD, OffloadHooks
from .meter import LiveTensorBytes, MemoryMeter
from .policy import POLICY_NAMES, Policy
from .records import Kept, SavedRecord, tensor_nbytes
from .sizes import default_budget, format_size, parse_size

__all__ = ["Plan", "plan", "MemoryBudgetError", "default_loss"]

_CUDA_ORDER = POLICY_NAMES
_CPU_ORDER = ("none", "checkpoint", "disk", "checkpoint+disk", "checkpoint+band", "checkpoint+band+disk")


class MemoryBudgetError(ElegantvizError, MemoryError):
    """No policy fits the memory budget; the message says how much the leanest one needs."""



class _Measure(OffloadHooks):
    """Keeps everything in place and counts the distinct saved bytes (for policies without hooks)."""

    def __init__(self, threshold_bytes: int, keep: nn.Module):
        super().__init__(threshold_bytes, None, 0, keep)
        self.total = 0

    def store(self, rec: SavedRecord, t: torch.Tensor) -> Kept:
        return Kept(t.detach(), None, counted=False)

    def on_new(self, nbytes: int, small: bool) -> None:
        self.total += nbytes



def default_loss(out: Any) -> torch.Tensor:
    """Cross-entropy on every 4-D output (logits and auxiliary logits), like the real loss; logits
    at a feature stride (``upsample=False``) through the banded BAE loss, as the trainer does;
    another family's training output (one with a ``loss_kind``: ISDNet's) through its own loss."""
    if getattr(out, "loss_kind", "elegantseg") != "elegantseg":
        from ..losses import training_loss

        labels = torch.zeros(out.logits.shape[0], *out.residual.shape[-2:], dtype=torch.uint8,
                             device=out.logits.device)
        return training_loss(out, labels, None)[0]
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
    loss_fn = loss_fn or default_loss
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
            rows.setdefault(name, []).append(peak + tensor_nbytes(x))
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
