"""Holistic inference with a bounded peak: ElegantSeg unit by unit on halo tiles, ECR kept global.

Why: plain no-grad inference of a whole scene holds whole-scene stride-4 tensors (layer1's 256
channels, the 270-channel concat, the context module's d channels, the logits at input size);
HRNet-W18 extrapolates to ~13 GiB at 6800x7200. Here every convolutional unit sees only a tile
plus a halo that covers the unit's receptive field, so its output on the tile's core is the
whole-image output up to float reassociation. Only the HRNet branch outputs (W..8W channels at
strides 4..32), the margin, the prediction and the requested maps are ever whole-scene; the keys
and queries maps not even those when streamed to sinks (``maps_to``).

Phases (:func:`tiled_forward`):

1. backbone: stem + layer1 + transition1, then each HighResolutionModule and each transition,
   on tiles of the scene zero-padded to a multiple of 32 (as :class:`HRNetBackbone` pads it),
   with halos derived from the modules' kernels, strides and dilations (:func:`unit_reach`);
2. margin: branch resize + concat + aux head per feature tile -> the whole-scene margin -> the
   hard region with the model's own :func:`select_hard` over the whole grid;
3. context: concat + context module per tile; the keys' softmax over all positions is streamed
   (running per-channel max, rescaled sum of exp and rescaled ``keys @ F^T``, as in flash
   attention), giving ECR's d x d context; the hard queries' mean is summed on the way;
4. heads: concat + context module again, keys with the final statistics, every pixel's query,
   the ECR update of the hard pixels (local once the context is known), head, upsampling and
   argmax. The context module is recomputed rather than kept: its whole-scene float32 output
   (d x h x w) would be the largest tensor of the run (3.1 GB for W18 at 6800x7200).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.hrnet import HighResolutionModule

from elegantviz.models.ecr import Evidence, logit_margin, select_hard
from elegantviz.models.elegantseg import ElegantSeg, SegOutput

__all__ = ["TiledOutput", "tiled_forward", "forward_tiled", "unit_reach", "backbone_halos"]

ALIGN = 32  # HRNet's coarsest stride: the backbone pads to it, tiles and halos are multiples of it
_STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "layer1")


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# --- receptive fields ------------------------------------------------------------------------
# A tile's outer edge acts like a zero-padded border, corrupting a band next to it that grows
# layer by layer. ``_reach(module, e, s)`` maps a corrupted depth ``e`` (scene px) on a map whose
# cells are ``s`` scene px to the depth after the module and the output cell size. A halo at
# least that deep on every inner edge leaves the core exact.


def _window_reach(m: nn.Module, e: int, s: int) -> tuple[int, int]:
    """Conv / pooling: widest one-sided kernel extent, rounded up to whole output cells."""
    k, st, d = _pair(m.kernel_size), _pair(m.stride), _pair(getattr(m, "dilation", 1))
    pad = m.padding
    if isinstance(pad, str):
        pad = tuple(0 if pad == "valid" else (k[i] - 1) * d[i] // 2 for i in range(2))
    pad = _pair(pad)
    if st[0] != st[1]:
        raise ValueError(f"anisotropic stride {st} in {m}")
    ext = max(max(pad[i], (k[i] - 1) * d[i] - pad[i]) for i in range(2)) * s
    s_out = s * st[0]
    return _ceil_to(e + ext, s_out), s_out


def _reach(m: nn.Module, e: int, s: int) -> tuple[int, int]:
    """Corrupted depth after ``m`` (see above); containers run their children in order,
    ModuleLists are parallel branches of one input, residual blocks take the deeper path."""
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return _window_reach(m, e, s)
    if isinstance(m, nn.Upsample):
        f = int(m.scale_factor)
        if s % f:
            raise ValueError(f"upsampling by {f} below one scene pixel")
        return (e if m.mode == "nearest" else e + s), s // f
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, HighResolutionModule)):
        raise ValueError(f"{type(m).__name__} has no local receptive field here")
    if isinstance(m, nn.ModuleList):
        outs = [_reach(c, e, s) for c in m]
        if len({o[1] for o in outs}) > 1:
            raise ValueError("parallel branches with different strides")
        return max(o[0] for o in outs), outs[0][1]
    shortcut = getattr(m, "downsample", None)
    out = (e, s)
    for child in m.children():
        if child is not shortcut:
            out = _reach(child, *out)
    if isinstance(shortcut, nn.Module):
        out = (max(out[0], _reach(shortcut, e, s)[0]), out[1])
    return out


def _hr_module_reach(m: HighResolutionModule, strides: Sequence[int]) -> int:
    """Deepest corruption over the module's branches and every fuse path into every output."""
    ends = [_reach(b, 0, s) for b, s in zip(m.branches, strides)]
    if m.num_branches == 1:
        return ends[0][0]
    return max(_reach(f, *ends[j])[0] for fuse in m.fuse_layers for j, f in enumerate(fuse))


def unit_reach(module: nn.Module, cell: int = 1) -> int:
    """Receptive-field radius of a plain (non-HRNet) module on cells of ``cell`` px."""
    return _reach(module, 0, cell)[0]


def _stem_reach(body: nn.Module) -> int:
    e, s = 0, 1
    for name in _STEM:
        e, s = _reach(getattr(body, name), e, s)
    return max(_reach(t, e, s)[0] for t in body.transition1)


def _halo(reach: int) -> int:
    """Halo in scene px for a unit whose receptive-field radius is ``reach`` (tests patch it)."""
    return _ceil_to(reach, ALIGN)


# --- the backbone, unit by unit --------------------------------------------------------------


@dataclass
class _Unit:
    name: str
    fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    reach: int  # scene px


def _stage_units(body: nn.Module, num_branches: int, stage: nn.Module) -> list[_Unit]:
    strides = [4 * 2**i for i in range(num_branches)]
    return [_Unit(f"module{i}", lambda xs, m=m: m(list(xs)), _hr_module_reach(m, strides))
            for i, m in enumerate(stage)]


def backbone_halos(model: ElegantSeg) -> dict[str, int]:
    """Receptive-field radius (scene px) of each backbone unit, e.g. for W18 stem 24, stage 2
    64, stage 3 128, stage 4 256 (full fields 2 r + cell: 136 / 272 / 544 px)."""
    body = model.backbone.body
    out = {"stem": _stem_reach(body)}
    for k, (stage, n) in enumerate(((body.stage2, 2), (body.stage3, 3), (body.stage4, 4)), start=2):
        for u in _stage_units(body, n, stage):
            out[f"stage{k}.{u.name}"] = u.reach
    return out


def _cores(h: int, w: int, tile: int, halo: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """Core tiles; a dimension that one window (tile + 2 halo) spans anyway is not split (the
    same bound on a window's size, less recomputation)."""
    th = h if h <= tile + 2 * halo else tile
    tw = w if w <= tile + 2 * halo else tile
    for y in range(0, h, th):
        for x in range(0, w, tw):
            yield y, min(y + th, h), x, min(x + tw, w)


class _Runner:
    """Shared state of one tiled run: geometry, device, memory format, progress bar."""

    def __init__(self, model: ElegantSeg, image: torch.Tensor, tile: int, feature_tile: int | None, bar):
        self.model = model
        self.dev = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.fmt = torch.channels_last if model.channels_last else torch.contiguous_format
        self.H, self.W = image.shape[-2:]
        self.Hp, self.Wp = _ceil_to(self.H, ALIGN), _ceil_to(self.W, ALIGN)
        self.tile = max(ALIGN, _ceil_to(tile, ALIGN))
        self.s = model.output_stride
        self.h, self.w = -(-self.H // self.s), -(-self.W // self.s)
        self.feature_tile = max(1, feature_tile or self.tile // self.s)
        self.bar = bar

    def to_dev(self, t: torch.Tensor) -> torch.Tensor:
        """A private copy on the model's device (modules may write into their input)."""
        return t.to(self.dev, dtype=self.dtype, copy=True, memory_format=self.fmt)

    def alloc(self, c: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(1, c, h, w, dtype=self.dtype, memory_format=self.fmt)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def run_unit(self, unit: _Unit, inputs: list[torch.Tensor], strides: list[int]) -> list[torch.Tensor]:
        """``unit`` on every core tile of the padded scene plus its halo; only cores are kept.

        ``inputs`` are whole-scene maps at ``strides``; a map smaller than the padded scene
        (the image) is zero-padded, as the backbone pads the whole scene.
        """
        halo = _halo(unit.reach)
        outs: list[torch.Tensor] | None = None
        for y0, y1, x0, x1 in _cores(self.Hp, self.Wp, self.tile, halo):
            wy0, wy1 = max(0, y0 - halo), min(self.Hp, y1 + halo)
            wx0, wx1 = max(0, x0 - halo), min(self.Wp, x1 + halo)
            xs = [self._crop(t, s, wy0, wy1, wx0, wx1) for t, s in zip(inputs, strides)]
            ys = unit.fn(xs)
            if outs is None:
                outs = [self.alloc(y.shape[1], self.Hp * y.shape[-2] // (wy1 - wy0),
                                   self.Wp * y.shape[-1] // (wx1 - wx0)) for y in ys]
            for y, out in zip(ys, outs):
                so = (wy1 - wy0) // y.shape[-2]
                out[..., y0 // so: y1 // so, x0 // so: x1 // so] = \
                    y[..., (y0 - wy0) // so: (y1 - wy0) // so, (x0 - wx0) // so: (x1 - wx0) // so].cpu()
            self.step()
        return outs

    def _crop(self, t: torch.Tensor, s: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        c = self.to_dev(t[..., y0 // s: y1 // s, x0 // s: x1 // s])
        ph, pw = (y1 - y0) // s - c.shape[-2], (x1 - x0) // s - c.shape[-1]
        return F.pad(c, (0, pw, 0, ph)).contiguous(memory_format=self.fmt) if ph or pw else c

    def count_tiles(self) -> int:
        """Tiles of the whole run, for the progress bar."""
        body, model = self.model.backbone.body, self.model
        reaches = list(backbone_halos(model).values())
        for trans, s_last in ((body.transition2, 8), (body.transition3, 16)):
            reaches.append(max(_reach(t, 0, s_last)[0] for t in trans if not isinstance(t, nn.Identity)))
        n = sum(len(list(_cores(self.Hp, self.Wp, self.tile, _halo(r)))) for r in reaches)
        rc = unit_reach(model.context)
        n += len(self.feature_cores(unit_reach(model.aux_head) + 1))
        n += len(self.feature_cores(rc + unit_reach(model.head) + 1))
        return n + (len(self.feature_cores(rc)) if model.ecr is not None else 0)

    def backbone(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four final-stage HRNet branches of the padded scene (strides 4, 8, 16, 32)."""
        body = self.model.backbone.body

        def stem(xs: list[torch.Tensor]) -> list[torch.Tensor]:
            x = xs[0]
            for name in _STEM:
                x = getattr(body, name)(x)
            return [t(x) for t in body.transition1]

        xl = self.run_unit(_Unit("stem", stem, _stem_reach(body)), [image], [1])
        for stage, transition in ((body.stage2, body.transition2), (body.stage3, body.transition3),
                                  (body.stage4, None)):
            strides = [4 * 2**i for i in range(len(xl))]
            for unit in _stage_units(body, len(xl), stage):
                xl = self.run_unit(unit, xl, strides)
            if transition is not None:
                xl = self._transition(transition, xl, strides[-1])
        return xl

    def _transition(self, trans: nn.ModuleList, yl: list[torch.Tensor], s_last: int) -> list[torch.Tensor]:
        """As timm: identity branches pass through, every other one is applied to the last branch."""
        todo = [i for i, t in enumerate(trans) if not isinstance(t, nn.Identity)]
        reach = max(_reach(trans[i], 0, s_last)[0] for i in todo)
        new = self.run_unit(_Unit("transition", lambda xs: [trans[i](xs[0]) for i in todo], reach),
                            [yl[-1]], [s_last])
        made = dict(zip(todo, new))
        return [made[i] if i in made else yl[i] for i in range(len(trans))]

    # --- feature resolution ----------------------------------------------------------------

    def feature_cores(self, r: int) -> list[tuple[int, int, int, int]]:
        return list(_cores(self.h, self.w, self.feature_tile, r))

    def region(self, core: tuple[int, int, int, int], r: int) -> tuple[int, int, int, int]:
        a0, a1, b0, b1 = core
        return max(0, a0 - r), min(self.h, a1 + r), max(0, b0 - r), min(self.w, b1 + r)

    def concat(self, branches: list[torch.Tensor], reg: tuple[int, int, int, int]) -> torch.Tensor:
        """HRNetBackbone's resize + concat on a feature region, exact: the branches are cropped to
        a 32-aligned window one coarsest cell wider than the region, so the bilinear resize sees
        what it sees on the whole scene."""
        a0, a1, b0, b1 = reg
        s = self.s
        wy0, wy1 = max(0, a0 * s // ALIGN * ALIGN - ALIGN), min(self.Hp, _ceil_to(a1 * s, ALIGN) + ALIGN)
        wx0, wx1 = max(0, b0 * s // ALIGN * ALIGN - ALIGN), min(self.Wp, _ceil_to(b1 * s, ALIGN) + ALIGN)
        size = ((wy1 - wy0) // s, (wx1 - wx0) // s)
        feats = []
        for i, t in enumerate(branches):
            sj = 4 * 2**i
            f = self.to_dev(t[..., wy0 // sj: wy1 // sj, wx0 // sj: wx1 // sj])
            feats.append(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear",
                                                                      align_corners=False))
        x = torch.cat(feats, dim=1)
        return x[..., a0 - wy0 // s: a1 - wy0 // s, b0 - wx0 // s: b1 - wx0 // s].contiguous(memory_format=self.fmt)

    def upsample(self, logits: torch.Tensor, reg, core) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """ElegantSeg._upsample on a region, cropped to the core's input pixels (and the scene)."""
        s = self.s
        up = F.interpolate(logits, size=(logits.shape[-2] * s, logits.shape[-1] * s), mode="bilinear",
                           align_corners=False)
        y0, y1 = core[0] * s, min(core[1] * s, self.H)
        x0, x1 = core[2] * s, min(core[3] * s, self.W)
        crop = up[..., y0 - reg[0] * s: y1 - reg[0] * s, x0 - reg[2] * s: x1 - reg[2] * s]
        return crop, (slice(y0, y1), slice(x0, x1))


def _core_of(t: torch.Tensor, reg, core) -> torch.Tensor:
    """The core's part of a (n, c, region) tensor."""
    return t[..., core[0] - reg[0]: core[1] - reg[0], core[2] - reg[2]: core[3] - reg[2]]


# --- ECR, streamed ---------------------------------------------------------------------------


class _StreamedKeys:
    """ECR's keys = softmax over all N positions per channel, and context = keys @ F^T, one tile
    at a time: a running max per channel, and the sum of exp and the context both rescaled by
    exp(old max - new max) whenever the max grows. Accumulated in float64."""

    def __init__(self, d: int, n: int, norm: str, dev: torch.device, dtype: torch.dtype):
        self.n, self.norm, self.dtype = n, norm, dtype
        self.max = torch.full((d,), -math.inf, device=dev, dtype=dtype)
        self.sum = torch.zeros(d, dtype=torch.float64, device=dev)
        self.ctx = torch.zeros(d, d, dtype=torch.float64, device=dev)

    def add(self, f: torch.Tensor) -> None:
        """f: (d, n_tile) features of one core."""
        if self.norm != "softmax":
            self.ctx += (f @ f.T).double()
            return
        new_max = torch.maximum(self.max, f.amax(dim=1))
        scale = torch.exp((self.max - new_max).double())
        e = torch.exp(f - new_max[:, None])
        self.sum = self.sum * scale + e.sum(dim=1, dtype=torch.float64)
        self.ctx = self.ctx * scale[:, None] + (e @ f.T).double()
        self.max = new_max

    def context(self) -> torch.Tensor:
        if self.norm != "softmax":
            return (self.ctx / math.sqrt(self.n)).to(self.dtype)
        return (self.ctx / self.sum[:, None]).to(self.dtype)

    def keys(self, f: torch.Tensor) -> torch.Tensor:
        """rho_k(f) with the final statistics, (d, n_tile)."""
        if self.norm != "softmax":
            return f / math.sqrt(self.n)
        return torch.exp(f - self.max[:, None]) / self.sum.to(f.dtype)[:, None]


# --- the result ------------------------------------------------------------------------------


def _put(sink: Any, sl: tuple, t: torch.Tensor) -> None:
    """A core into a whole map: a tensor, or a sink assigned numpy (e.g. a zarr array)."""
    t = t.cpu()
    sink[sl] = t if isinstance(sink, torch.Tensor) else t.numpy()


def _whole(a: Any) -> torch.Tensor:
    """A map as a tensor: itself, or all of a sink read back."""
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a[...]))


@dataclass
class TiledOutput:
    """What holistic prediction needs, without a batch dimension.

    ``keys`` and ``attention`` are relative to uniform (times N = h * w, so 1 is the average
    pixel and float16 keeps the precision); ``keys`` and ``queries`` (every pixel's normalised
    query) are in ``maps_dtype``, or are the sinks they were streamed to (``maps_to``).
    ``logits`` / ``aux_logits`` (1, c, H, W) only with ``return_logits=True`` (whole-scene
    float32 at input size: the largest tensors of a plain run).
    Without ECR the hard region is empty and the ECR fields are None.
    """

    pred: torch.Tensor  # (H, W) argmax of the main logits (uint8 for <= 256 classes)
    margin: torch.Tensor  # (h, w) float32 top-1 minus top-2 auxiliary logit
    hard_indices: torch.Tensor  # (k,) int64 into h * w, in select_hard's order
    keys: torch.Tensor | Any | None  # (d, h, w) rho_k(F) * N, or its sink
    queries: torch.Tensor | Any | None  # (d, h, w) rho_q(F) of every pixel, or its sink
    context: torch.Tensor | None  # (d, d) float32 rho_k(F) F^T
    attention: torch.Tensor | None  # (h, w) float32 mean hard query . keys (relative to uniform)
    feature_size: tuple[int, int]
    output_stride: int
    logits: torch.Tensor | None = None
    aux_logits: torch.Tensor | None = None

    def hard_mask(self) -> torch.Tensor:
        """(h, w) bool map of the hard region."""
        mask = torch.zeros(self.feature_size[0] * self.feature_size[1], dtype=torch.bool)
        mask[self.hard_indices] = True
        return mask.view(self.feature_size)

    def evidence(self) -> Evidence:
        """The model's Evidence (batch of one, float32 keys as rho_k(F), hard queries only); reads
        streamed maps back whole."""
        n = self.feature_size[0] * self.feature_size[1]
        keys = queries = context = None
        if self.keys is not None:
            keys = (_whole(self.keys).float() / n)[None]
            queries = _whole(self.queries).float().flatten(1)[:, self.hard_indices][None]
            context = self.context[None]
        return Evidence(self.margin[None], self.hard_indices[None], keys, queries, context, self.feature_size,
                        self.output_stride)

    def seg_output(self) -> SegOutput:
        """As ``model(image, return_evidence=True)``; needs ``return_logits=True``."""
        if self.logits is None:
            raise ValueError("run tiled_forward(..., return_logits=True) for logits")
        return SegOutput(self.logits, self.aux_logits, self.evidence())


# --- the passes ------------------------------------------------------------------------------


@contextmanager
def _eval(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _margin_pass(run: _Runner, branches, return_logits: bool, out: dict) -> None:
    """Aux head per tile -> whole-scene margin (and aux logits at input size if asked)."""
    model = run.model
    r = unit_reach(model.aux_head) + (1 if return_logits else 0)
    margin = torch.empty(run.h, run.w, dtype=run.dtype)
    for core in run.feature_cores(r):
        reg = run.region(core, r)
        aux = model.aux_head(run.concat(branches, reg))
        margin[core[0]: core[1], core[2]: core[3]] = logit_margin(_core_of(aux, reg, core))[0].cpu()
        if return_logits:
            up, (ys, xs) = run.upsample(aux, reg, core)
            out["aux_logits"][..., ys, xs] = up.cpu()
        run.step()
    out["margin"] = margin


def _context_pass(run: _Runner, branches, hard: torch.Tensor, keys: _StreamedKeys) -> torch.Tensor:
    """Context module per tile -> streamed keys statistics and context; returns the mean hard query."""
    model = run.model
    r = unit_reach(model.context)
    qsum = torch.zeros(keys.max.shape[0], dtype=torch.float64, device=run.dev)
    for core in run.feature_cores(r):
        reg = run.region(core, r)
        f = _core_of(model.context(run.concat(branches, reg)), reg, core)[0].flatten(1).contiguous()
        keys.add(f)
        sel = hard[core[0]: core[1], core[2]: core[3]].flatten().to(run.dev)
        qsum += model.ecr.queries(f[:, sel], keys.n).sum(dim=1, dtype=torch.float64)
        run.step()
    return (qsum / max(1, int(hard.sum()))).to(run.dtype)


def _head_pass(run: _Runner, branches, hard: torch.Tensor, keys: _StreamedKeys | None, mean_q, maps_dtype,
               return_logits: bool, out: dict) -> None:
    """Context module again, keys/queries/attention, ECR update of hard pixels, head, argmax."""
    model = run.model
    r = unit_reach(model.context) + unit_reach(model.head) + 1
    ctx = keys.context() if keys is not None else None
    for core in run.feature_cores(r):
        reg = run.region(core, r)
        x = run.concat(branches, reg)
        f = model.context(x)
        if keys is not None:
            fc = _core_of(f, reg, core)[0].flatten(1)
            k = keys.keys(fc) * keys.n
            shape = (-1, core[1] - core[0], core[3] - core[2])
            sl = (slice(None), slice(core[0], core[1]), slice(core[2], core[3]))
            _put(out["keys"], sl, k.view(shape).to(maps_dtype))
            _put(out["queries"], sl, model.ecr.queries(fc, keys.n).view(shape).to(maps_dtype))
            out["attention"][sl[1:]] = (mean_q @ k).view(shape[1:]).cpu()
            f = _ecr_update(model.ecr, f, hard[reg[0]: reg[1], reg[2]: reg[3]].to(run.dev), ctx, keys.n, run.fmt)
        logits = model.head(f)
        up, (ys, xs) = run.upsample(logits, reg, core)
        out["pred"][ys, xs] = up[0].argmax(0).to(out["pred"].dtype).cpu()
        if return_logits:
            out["logits"][..., ys, xs] = up.cpu()
        run.step()


def _ecr_update(ecr: nn.Module, f: torch.Tensor, hard: torch.Tensor, ctx: torch.Tensor, n_pos: int,
                fmt: torch.memory_format) -> torch.Tensor:
    """Hard pixels of a region, refined by the model's ECR with the whole-grid context (local once
    the context is known)."""
    _, d, h, w = f.shape
    flat = f[0].flatten(1).clone()
    sel = hard.flatten()
    if bool(sel.any()):
        fh = flat[:, sel]
        flat[:, sel] = ecr.refine(fh, ctx, ecr.queries(fh, n_pos)).to(flat.dtype)
    return flat.view(1, d, h, w).contiguous(memory_format=fmt)


@torch.no_grad()
def tiled_forward(
    model: ElegantSeg,
    image: torch.Tensor,
    tile: int = 1024,
    progress: bool = False,
    *,
    maps_dtype: torch.dtype = torch.float16,
    return_logits: bool = False,
    feature_tile: int | None = None,
    maps_to: Callable[[str, tuple[int, int, int]], Any] | None = None,
) -> TiledOutput:
    """``model(image, return_evidence=True)`` on a (1, c, H, W) image with a bounded peak.

    ``tile`` is the core edge in input pixels (rounded up to a multiple of 32); the feature
    passes use ``feature_tile`` feature pixels (default ``tile // output_stride``); halos come
    from the receptive fields. Peak memory is
    the whole-scene branch outputs (~34 floats per stride-4 cell for W18), the requested maps
    (2 d ``maps_dtype`` values per feature pixel) and one tile's working set, instead of
    growing with the scene at ~0.26 GB/Mpx. Big maps stay on the host; tiles run on the
    model's device. The model runs in eval mode (restored afterwards).

    ``maps_to(name, (d, h, w))``, when given, returns where ``keys`` and ``queries`` go: any
    array taking numpy ``maps_dtype`` by (channel, y, x) slices, e.g. a zarr array. Each core is
    written there, so these maps (3.1 GB for W18 at 6800x7200) are never whole in memory.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a (1, c, H, W) image, got {tuple(image.shape)}")
    from tqdm.auto import tqdm

    with _eval(model):
        run = _Runner(model, image, tile, feature_tile, None)
        total = run.count_tiles()
        with tqdm(total=total, desc="tiled predict", unit="tile", disable=not progress, leave=False) as bar:
            run.bar = bar
            return _run(run, image, maps_dtype, return_logits, maps_to)


def _run(run: _Runner, image: torch.Tensor, maps_dtype: torch.dtype, return_logits: bool,
         maps_to: Callable[[str, tuple[int, int, int]], Any] | None) -> TiledOutput:
    model = run.model
    branches = run.backbone(image)
    c = model.num_classes
    out: dict = {"pred": torch.empty(run.H, run.W, dtype=torch.uint8 if c <= 256 else torch.int64)}
    if return_logits:
        out["logits"] = torch.empty(1, c, run.H, run.W, dtype=run.dtype)
        out["aux_logits"] = torch.empty(1, c, run.H, run.W, dtype=run.dtype)
    _margin_pass(run, branches, return_logits, out)
    n = run.h * run.w
    keys = mean_q = None
    if model.ecr is not None:
        idx = select_hard(out["margin"].view(1, n), model.ecr.ratio)[0]
        d = model.head[0].in_channels  # the context module's width
        keys = _StreamedKeys(d, n, model.ecr.norm, run.dev, run.dtype)
        for key in ("keys", "queries"):
            out[key] = torch.empty(d, run.h, run.w, dtype=maps_dtype) if maps_to is None else \
                maps_to(key, (d, run.h, run.w))
        out["attention"] = torch.empty(run.h, run.w, dtype=run.dtype)
    else:
        idx = torch.zeros(0, dtype=torch.long)
    hard = torch.zeros(n, dtype=torch.bool)
    hard[idx] = True
    hard = hard.view(run.h, run.w)
    if keys is not None:
        mean_q = _context_pass(run, branches, hard, keys)
    _head_pass(run, branches, hard, keys, mean_q, maps_dtype, return_logits, out)
    return TiledOutput(
        pred=out["pred"], margin=out["margin"], hard_indices=idx.cpu(), keys=out.get("keys"),
        queries=out.get("queries"), context=keys.context().cpu() if keys is not None else None,
        attention=out.get("attention"), feature_size=(run.h, run.w), output_stride=run.s,
        logits=out.get("logits"), aux_logits=out.get("aux_logits"))


def forward_tiled(model, image: np.ndarray, device: torch.device | None = None, tile: int = 1024,
                  progress: bool = False, maps_to: Callable[[str, tuple[int, int, int]], Any] | None = None) -> dict:
    """Drop-in for ``predict.forward_holistic``: same keys, same dtypes, bounded peak.

    ``device`` is unused (tiles run where the model is); it keeps forward_holistic's signature.
    With ``maps_to`` (see :func:`tiled_forward`) ``keys`` and ``queries`` are the float16 sinks.
    """
    out = tiled_forward(model, torch.from_numpy(image)[None], tile, progress, maps_to=maps_to)
    result = {"pred": out.pred.to(torch.uint8).numpy(), "margin": out.margin.numpy(),
              "hard": out.hard_mask().to(torch.uint8).numpy(), "stride": out.output_stride}
    if out.keys is not None:
        for key in ("keys", "queries"):
            m = getattr(out, key)
            result[key] = m.half().numpy() if isinstance(m, torch.Tensor) else m
        result["attention"] = out.attention.numpy()
    return result
