"""BatchNorm and Dropout2d run band by band: shared state, patched forwards, global statistics.

:class:`.banded.Banded` patches a segment's norms and dropouts with these forwards so that bands
reproduce the whole-image result: a norm in training mode uses statistics summed over the rows
each band owns (measured in passes, :class:`StopBand` ending a band's forward at the norm being
measured), and its backward applies the global part of its gradient; a Dropout2d draws one mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..autocast import compute_dtype

__all__ = ["StopBand", "BandState", "unbandable", "global_norm", "banded_norm_forward", "banded_dropout_forward",
           "finish_stats"]


class StopBand(Exception):
    """Raised by the norm being measured: the rest of the band's forward is not needed."""


@dataclass
class BandState:
    """What the patched norms and dropouts of one banded call share."""

    mode: str = "stats"  # "stats": measure the first norm without statistics; "run": all known
    in_rows: int = 0  # rows of the band's input
    first: int = 0  # the band's first input row (global)
    own: tuple[int, int] = (0, 0)  # the input rows the band owns (global)
    stats: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)
    sums: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # norms in the order the forward meets them
    grad_sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    collect: int | None = None  # the norm whose gradient sums this backward pass adds up
    collected: list[torch.Tensor] | None = None
    captured: torch.Tensor | None = None  # that norm's input in the current band
    captured_version: int = 0
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    met: set[int] = field(default_factory=set)  # norms and dropouts met so far in the current band
    amp: tuple[str, bool, torch.dtype | None] = ("cpu", False, None)  # the forward's autocast

    def autocast(self) -> torch.autocast:
        """Backward's recompute under the autocast the forward ran in (as checkpointing does)."""
        device, enabled, dtype = self.amp
        return torch.autocast(device, dtype=dtype, enabled=enabled)

    def owned(self, t: torch.Tensor) -> tuple[int, int]:
        """The rows of band tensor ``t`` that this band owns (``t``'s rows relative to the input)."""
        f = self.in_rows / t.shape[-2]
        if f != int(f):
            raise RuntimeError(f"banded: a map of {t.shape[-2]} rows inside a band of {self.in_rows} input rows "
                               "is not at an integer stride; pad the input to a multiple of the segment's stride")
        f = int(f)
        if self.first % f or self.own[0] % f or self.own[1] % f:
            raise RuntimeError(f"banded: a map at stride {f} inside the segment does not line up with the bands; "
                               "make the halo and the band rows multiples of the segment's largest inner stride")
        return (self.own[0] - self.first) // f, (self.own[1] - self.first) // f


class _FixedNorm(torch.autograd.Function):
    """BatchNorm with given statistics whose backward adds the global terms once known."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                invstd: torch.Tensor, count: int, state: BandState, key: int, rows: tuple[int, int]) -> torch.Tensor:
        dt = compute_dtype(x)  # bf16 maps (autocast) are normalised in float32, as BatchNorm does
        scale = (weight * invstd).to(dt).view(1, -1, 1, 1)
        shift = (bias - mean * weight * invstd).to(dt).view(1, -1, 1, 1)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count, ctx.state, ctx.key, ctx.rows = count, state, key, rows
        return (x.to(dt) * scale + shift).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple:
        x, weight, mean, invstd = ctx.saved_tensors
        state, key = ctx.state, ctx.key
        view = (1, -1, 1, 1)
        dt = compute_dtype(x)
        xhat = (x.to(dt) - mean.to(dt).view(view)) * invstd.to(dt).view(view)
        dy = dy.to(dt)
        dbias = dy.sum((0, 2, 3), dtype=torch.float64)
        dweight = (dy * xhat).sum((0, 2, 3), dtype=torch.float64)
        if state.collect == key and state.collected is not None:
            state.collected[0] += dbias
            state.collected[1] += dweight
        coef = weight.double() * invstd.double()
        dx = dy * coef.to(dt).view(view)
        known = state.grad_sums.get(key)
        if known is not None:
            lo, hi = ctx.rows
            sb, sw = (s / ctx.count for s in known)
            dx[..., lo:hi, :] -= (coef * sb).to(dt).view(view) + xhat[..., lo:hi, :] * (coef * sw).to(dt).view(view)
        return (dx.to(x.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype),
                None, None, None, None, None, None)


def unbandable(m: nn.Module) -> str | None:
    """Why ``m`` cannot run band by band (None if it can)."""
    if isinstance(m, nn.SyncBatchNorm) and m.training:
        return "shares statistics across processes"
    if isinstance(m, _BatchNorm) and global_norm(m) and m.weight is None:
        return "has no affine parameters (not supported)"
    if isinstance(m, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
        return "normalises over the whole image"
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "pools over the whole image"
    if m.training and isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout3d, nn.AlphaDropout,
                                     nn.FeatureAlphaDropout)) and m.p > 0:
        return "draws per pixel"
    if m.training and type(m).__name__ in ("DropPath", "DropBlock2d") and \
            (getattr(m, "drop_prob", 0) or getattr(m, "p", 0)) > 0:
        return "draws at random"
    return None


def global_norm(m: nn.Module) -> bool:
    """A norm whose forward uses batch statistics (global over the image)."""
    return isinstance(m, _BatchNorm) and (m.training or not m.track_running_stats)


def banded_norm_forward(m: _BatchNorm, state: BandState) -> Callable[[torch.Tensor], torch.Tensor]:
    key = id(m)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if key in state.met:  # its statistics and gradient sums would be those of two calls
            raise ValueError(f"banded: {type(m).__name__} {tuple(m.weight.shape)} is called twice in one forward "
                             "of the segment, which banding cannot reproduce; give each call its own module")
        state.met.add(key)
        lo, hi = state.owned(x)
        if key not in state.stats:
            if state.mode != "stats":
                raise RuntimeError("banded: a BatchNorm was reached that the statistics passes never met")
            part = x[..., lo:hi, :].to(compute_dtype(x))
            sums = state.sums.setdefault(key, [torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
                                               for _ in range(2)] + [0])
            sums[0] += part.sum((0, 2, 3), dtype=torch.float64)
            sums[1] += (part * part).sum((0, 2, 3), dtype=torch.float64)
            sums[2] += part.numel() // max(1, x.shape[1])
            raise StopBand
        mean, invstd, count = state.stats[key]
        if state.collect == key:
            state.captured, state.captured_version = x, x._version
        return _FixedNorm.apply(x, m.weight, m.bias, mean, invstd, count, state, key, (lo, hi))

    return forward


def banded_dropout_forward(m: nn.Dropout2d, state: BandState) -> Callable[[torch.Tensor], torch.Tensor]:
    key = id(m)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not m.training or m.p == 0:
            return x
        if key in state.met:
            raise ValueError("banded: a Dropout2d is called twice in one forward of the segment; the plain "
                             "forward would draw two masks: give each call its own module")
        state.met.add(key)
        mask = state.masks.get(key)
        if mask is None:  # the plain forward's draw: one Bernoulli per (image, channel), scaled
            mask = F.dropout2d(x.new_ones(x.shape[0], x.shape[1], 1, 1), m.p, True)
            state.masks[key] = mask
        return x * mask

    return forward


def finish_stats(state: BandState, norms: dict[int, _BatchNorm]) -> None:
    """Turn the summed input of the norm just measured into statistics; update its running ones."""
    (key, (s1, s2, n)), = state.sums.items()
    state.sums.clear()
    m = norms[key]
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0)
    state.stats[key] = (mean, torch.rsqrt(var + m.eps), n)
    state.order.append(key)
    if m.training and m.track_running_stats:
        with torch.no_grad():
            m.num_batches_tracked += 1
            factor = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
            unbiased = var * n / max(1, n - 1)
            m.running_mean.mul_(1 - factor).add_(mean.to(m.running_mean.dtype), alpha=factor)
            m.running_var.mul_(1 - factor).add_(unbiased.to(m.running_var.dtype), alpha=factor)

