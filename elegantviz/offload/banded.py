"""Exact row-banded forward and backward of local layers, BatchNorm in training mode included.

At 6800x7200 every stride-4 map of 256 channels is 3.1 GB, and HRNet's stem, its layer1
bottlenecks, the FCN heads and MLK make and save several of them. Checkpointing only moves the
peak into backward, where the recomputed segment holds them all at once. Here such a segment runs
band of rows by band of rows (each band with a halo that covers its receptive field), so only
its input, its output and one band's intermediates are ever whole.

Convolutions, activations and dropout are local, but BatchNorm in training mode is not: its
batch statistics, and in backward the sums ``sum(dy)`` and ``sum(dy * xhat)`` (which are its
bias and weight gradients), run over the whole image. So a segment with K such norms runs in
passes:

- forward: pass k runs every band up to norm k and sums its input over the rows that band owns;
  the statistics are then known, the running statistics are updated once, as a plain forward
  would; pass K + 1 writes the output;
- backward: the norms' gradient sums are found last norm first, one pass each (a band's
  backward stops at that norm's input); a norm whose sums are known applies the global part of
  its gradient, ``-w / sigma * (sum(dy) + xhat * sum(dy * xhat)) / N``, on the rows its band
  owns; a final pass gives the input and parameter gradients.

Each row of every map is owned by exactly one band, and a band's halo rows get no gradient, so
the result equals the plain forward and backward up to the order of floating-point sums
(tested against the plain step). ``Dropout2d`` draws its channel mask once, from the same
random stream in the same way as the plain forward, and every band uses it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..pages import drop_file_pages, spill_mapping
from .band_norms import (BandState, StopBand, banded_dropout_forward, banded_norm_forward, finish_stats, global_norm,
                         unbandable)

__all__ = ["banded", "Banded", "band_rows"]

_TensorFn = Callable[[torch.Tensor], Any]


def band_rows(height: int, row_bytes: int, halo: int, unit: int, band_bytes: int = 64 << 20) -> int:
    """Input rows per band: about ``band_bytes`` of the widest map per band, at least 4 halos, a
    multiple of ``unit`` (the segment's coarsest stride)."""
    rows = max(band_bytes // max(1, row_bytes), 4 * halo, unit)
    rows = -(-rows // unit) * unit
    return min(rows, -(-height // unit) * unit)


class Banded:
    """Runs ``fn`` (a local segment: convolutions, activations, BatchNorm, Dropout2d) in bands.

    ``strides``: input rows per output row for each output of ``fn``; ``halo``: input rows a band
    reads beyond its own on each side (at least the segment's receptive-field radius, a multiple
    of the coarsest stride); ``rows``: input rows per band (a multiple of the coarsest stride).
    """

    def __init__(self, fn: _TensorFn, modules: Sequence[nn.Module], strides: Sequence[int], halo: int,
                 rows: int | None = None, band_bytes: int = 64 << 20):
        self.fn = fn
        self.modules = list(modules)
        self.strides = tuple(int(s) for s in strides)
        self.unit = max(self.strides)
        if halo % self.unit:
            raise ValueError(f"halo {halo} must be a multiple of the coarsest stride {self.unit}")
        self.halo = int(halo)
        self.rows = rows
        self.band_bytes = band_bytes
        self.params = list({id(p): p for mod in self.modules for p in mod.parameters()}.values())

    # -- bands ---------------------------------------------------------------------------------
    def bands(self, x: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """(first, last, own_lo, own_hi) input rows per band."""
        h = x.shape[-2]
        if h % self.unit:
            raise ValueError(f"banded: input height {h} is not a multiple of the segment's stride {self.unit}")
        if self.rows is not None and self.rows % self.unit:
            raise ValueError(f"banded: {self.rows} rows per band is not a multiple of the segment's stride {self.unit}")
        row_bytes = x[..., :1, :].numel() * x.element_size()
        rows = self.rows or band_rows(h, row_bytes * self.unit, self.halo, self.unit, self.band_bytes)
        out = []
        for lo in range(0, h, rows):
            hi = min(h, lo + rows)
            out.append((max(0, lo - self.halo), min(h, hi + self.halo), lo, hi))
        return out

    def _run_band(self, x: torch.Tensor, band: tuple[int, int, int, int], state: BandState) -> tuple:
        first, last, lo, hi = band
        state.first, state.in_rows, state.own = first, last - first, (lo, hi)
        state.met.clear()
        out = self.fn(x[..., first:last, :])
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(self.strides):
            raise RuntimeError(f"banded: the segment returned {len(outs)} outputs for {len(self.strides)} strides")
        return tuple(o[..., (lo - first) // s:(hi - first) // s, :] for o, s in zip(outs, self.strides))

    # -- patching ------------------------------------------------------------------------------
    def _patch(self, state: BandState) -> tuple[dict[int, _BatchNorm], Callable[[], None]]:
        """Swap the segment's BatchNorms and Dropout2d for their banded forwards; returns the
        norms and the function that puts everything back. Refuses what bands cannot reproduce,
        before anything is patched."""
        found = {id(m): m for mod in self.modules for m in mod.modules()}.values()
        for m in found:
            reason = unbandable(m)
            if reason:
                raise ValueError(f"banded: {type(m).__name__} {reason}, so banding would change the result")
            if (global_norm(m) or isinstance(m, nn.Dropout2d)) and "forward" in m.__dict__:
                raise ValueError(f"banded: {type(m).__name__} already has a patched forward")
        norms: dict[int, _BatchNorm] = {}
        patched: list[nn.Module] = []
        for m in found:
            if global_norm(m):
                norms[id(m)] = m
                m.forward = banded_norm_forward(m, state)
            elif isinstance(m, nn.Dropout2d):
                m.forward = banded_dropout_forward(m, state)
            else:
                continue
            patched.append(m)

        def unpatch() -> None:
            for m in patched:
                m.__dict__.pop("forward", None)

        return norms, unpatch

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], BandState]:
        state = BandState()
        device = x.device.type
        state.amp = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        bands = self.bands(x)
        norms, unpatch = self._patch(state)
        try:
            with torch.no_grad():
                for _ in range(len(norms) + 1):
                    outs: list[torch.Tensor] | None = None
                    for band in bands:
                        try:
                            parts = self._run_band(x, band, state)
                        except StopBand:
                            continue
                        if outs is None:
                            outs = [self._empty_like_full(p, x.shape[-2] // s) for p, s in zip(parts, self.strides)]
                        for o, p, s in zip(outs, parts, self.strides):
                            o[..., band[2] // s:band[3] // s, :] = p
                    if state.sums:
                        finish_stats(state, norms)
                    elif outs is not None:
                        state.mode = "run"
                        return tuple(outs), state
            raise RuntimeError("banded: the segment's forward did not finish")  # pragma: no cover
        finally:
            unpatch()

    @staticmethod
    def _empty_like_full(part: torch.Tensor, rows: int) -> torch.Tensor:
        shape = (*part.shape[:-2], rows, part.shape[-1])
        fmt = torch.channels_last if part.ndim == 4 and part.is_contiguous(memory_format=torch.channels_last) \
            and not part.is_contiguous() else torch.contiguous_format
        return torch.empty(shape, dtype=part.dtype, device=part.device, memory_format=fmt)

    # -- backward ------------------------------------------------------------------------------
    def backward(self, x: torch.Tensor, state: BandState, grads: Sequence[torch.Tensor | None],
                 input_grad: bool) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        bands = self.bands(x)
        params = [p for p in self.params if p.requires_grad]
        # x read back from a spill file: give each band's pages back once the next band starts
        mapping = spill_mapping(x)
        ends = [b[0] for b in bands[1:]] + [x.shape[-2]]

        def done(i: int) -> None:
            if mapping is not None:
                drop_file_pages(x, bands[i][0], ends[i], mapping=mapping)

        _, unpatch = self._patch(state)
        try:
            for key in reversed(state.order):  # each norm's gradient sums, last norm first
                state.collect = key
                state.collected = [torch.zeros_like(state.stats[key][0], dtype=torch.float64) for _ in range(2)]
                for i, band in enumerate(bands):
                    with torch.enable_grad(), _plain_saves(), state.autocast():
                        outs, gouts = self._band_outputs(x, band, state, grads, band[2:])
                        captured = state.captured
                        state.captured = None
                        if outs and captured is not None and captured.requires_grad:
                            if captured._version != state.captured_version:
                                raise RuntimeError("banded: a BatchNorm's input was modified in place after it "
                                                   "was used; its gradient sums cannot be collected")
                            torch.autograd.grad(outs, [captured], gouts, allow_unused=True)
                        del captured, outs, gouts
                    done(i)
                state.grad_sums[key] = (state.collected[0], state.collected[1])
            state.collect, state.collected = None, None
            gx = torch.zeros_like(x) if input_grad else None
            gparams: list[torch.Tensor | None] = [None] * len(params)
            for i, (first, last, lo, hi) in enumerate(bands):
                xb = x[..., first:last, :].detach().requires_grad_(input_grad)
                with torch.enable_grad(), _plain_saves(), state.autocast():
                    outs, gouts = self._band_outputs(xb, (0, last - first, lo - first, hi - first), state, grads,
                                                     (lo, hi))
                    wrt = ([xb] if input_grad else []) + params
                    got = list(torch.autograd.grad(outs, wrt, gouts, allow_unused=True)) if outs and wrt \
                        else [None] * len(wrt)
                if input_grad:
                    g = got.pop(0)
                    if g is not None:
                        gx[..., first:last, :] += g
                gparams = [g if acc is None else acc if g is None else acc + g for acc, g in zip(gparams, got)]
                del xb, got
                done(i)
            return gx, gparams
        finally:
            state.captured, state.collect, state.collected = None, None, None
            unpatch()

    def _band_outputs(self, x: torch.Tensor, band: tuple[int, int, int, int], state: BandState,
                      grads: Sequence[torch.Tensor | None], rows: tuple[int, int]) -> tuple[list, list]:
        """The band's own output rows that receive a gradient, and those gradients (``rows``: the
        band's own input rows in the full image)."""
        parts = self._run_band(x, band, state)
        outs, gouts = [], []
        for p, g, s in zip(parts, grads, self.strides):
            if g is not None and p.requires_grad:
                outs.append(p)
                gouts.append(g[..., rows[0] // s:rows[1] // s, :])
        return outs, gouts


def _plain_saves() -> torch.autograd.graph.saved_tensors_hooks:
    """Keep a band's saved tensors in memory even inside an offload context: the band is small, and
    spilling it would write every band to disk once per pass. (Detached, so that a saved output
    does not hold its own graph node.)"""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.detach(), lambda t: t)


class _BandedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, runner: Banded, x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, state = runner.forward(x)
        ctx.runner, ctx.state = runner, state
        ctx.save_for_backward(x)
        return outs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple:
        (x,) = ctx.saved_tensors
        runner: Banded = ctx.runner
        gx, gparams = runner.backward(x, ctx.state, grads, ctx.needs_input_grad[1])
        by_param = {id(p): g for p, g in zip([p for p in runner.params if p.requires_grad], gparams)}
        return (None, gx, *(by_param.get(id(p)) for p in runner.params))


def banded(fn: _TensorFn, x: torch.Tensor, modules: Sequence[nn.Module], strides: Sequence[int] = (1,),
           halo: int = 0, rows: int | None = None, band_bytes: int = 64 << 20) -> Any:
    """``fn(x)`` computed band by band (forward and backward); see :class:`Banded`.

    ``modules`` are the modules ``fn`` uses (their parameters get gradients, their BatchNorms and
    Dropout2d are run as described in the module docstring). Returns what ``fn`` returns.
    Without grad (or with nothing requiring it) the bands still bound the memory.
    """
    runner = Banded(fn, modules, strides, halo, rows, band_bytes)
    outs = _BandedFn.apply(runner, x, *runner.params)
    return outs if len(runner.strides) > 1 else outs[0]
