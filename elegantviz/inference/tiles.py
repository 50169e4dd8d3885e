"""Holistic inference with a bounded peak: ElegantSeg unit by unit on halo tiles, ECR kept global.

Why: plain no-grad inference of a whole scene holds whole-scene stride-4 tensors (layer1's 256
channels, the 270-channel concat, the context module's d channels, the logits at input size);
HRNet-W18 extrapolates to ~13 GiB at 6800x7200. Here every convolutional unit sees only a tile
plus a halo that covers the unit's receptive field, so its output on the tile's core is the
whole-image output up to float reassociation. Only the HRNet branch outputs (W..8W channels at
strides 4..32), the margin, the prediction and the requested maps are ever whole-scene; the keys
and queries maps not even those when streamed to sinks (``maps_to``).

Phases (:func:`forward_halo_tiles`):

1. backbone: stem + layer1 + transition1, then each HighResolutionModule and each transition,
   on tiles of the scene zero-padded to a multiple of 32 (as :class:`HRNetBackbone` pads it),
   with halos derived from the modules' kernels, strides and dilations
   (:func:`elegantviz.models.receptive.reach`; geometry in :mod:`.tile_grid`);
2. margin: branch resize + concat + aux head per feature tile -> the whole-scene margin -> the
   hard region with the model's own :func:`select_hard` over the whole grid;
3. context: concat + context module per tile; the keys' softmax over all positions is streamed
   (:class:`.streamed_keys.StreamedKeys`), giving ECR's d x d context; the hard queries' mean
   is summed on the way;
4. heads: concat + context module again, keys with the final statistics, every pixel's query,
   the ECR update of the hard pixels (local once the context is known), head, upsampling and
   argmax. The context module is recomputed rather than kept: its whole-scene float32 output
   (d x h x w) would be the largest tensor of the run (3.1 GB for W18 at 6800x7200).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from elegantviz.errors import InputError
from elegantviz.inference.prediction import Prediction
from elegantviz.inference.streamed_keys import StreamedKeys
from elegantviz.inference.tile_grid import ALIGN, TileGrid, core_of, group_depth, group_name, tile_groups
from elegantviz.inference.tiled_output import TiledOutput, write_core
from elegantviz.models.ecr import logit_margin, select_hard
from elegantviz.models.elegantseg import ElegantSeg
from elegantviz.models.receptive import reach

__all__ = ["HaloTiles", "TiledOutput", "forward_halo_tiles", "predict_halo_tiles", "backbone_halos"]

Maps = Callable[[str, tuple[int, int, int]], Any]  # where streamed keys and queries go, by name and shape


def backbone_halos(model: ElegantSeg) -> dict[str, int]:
    """Receptive-field radius (scene px) of each backbone unit as tiled, e.g. for W18 stem 24,
    stage 2 64, stage 3 128, stage 4 256 (full fields 2 r + cell: 136 / 272 / 544 px)."""
    return {group_name(g): group_depth(g) for g in tile_groups(model.backbone.units())}


# --- the passes ------------------------------------------------------------------------------


@contextmanager
def _eval(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _margin_pass(run: TileGrid, branches, return_logits: bool, out: dict) -> None:
    """Aux head per tile -> whole-scene margin (and aux logits at input size if asked)."""
    model = run.model
    r = reach(model.aux_head).depth + (1 if return_logits else 0)
    margin = torch.empty(run.h, run.w, dtype=run.dtype)
    for core in run.feature_cores(r):
        reg = run.region(core, r)
        aux = model.aux_head(run.concat(branches, reg))
        margin[core[0]: core[1], core[2]: core[3]] = logit_margin(core_of(aux, reg, core))[0].cpu()
        if return_logits:
            up, (ys, xs) = run.upsample(aux, reg, core)
            out["aux_logits"][..., ys, xs] = up.cpu()
        run.step()
    out["margin"] = margin


def _context_pass(run: TileGrid, branches, hard: torch.Tensor, keys: StreamedKeys) -> torch.Tensor:
    """Context module per tile -> streamed keys statistics and context; returns the mean hard query."""
    model = run.model
    r = reach(model.context).depth
    qsum = torch.zeros(keys.max.shape[0], dtype=torch.float64, device=run.dev)
    for core in run.feature_cores(r):
        reg = run.region(core, r)
        f = core_of(model.context(run.concat(branches, reg)), reg, core)[0].flatten(1).contiguous()
        keys.add(f)
        sel = hard[core[0]: core[1], core[2]: core[3]].flatten().to(run.dev)
        qsum += model.ecr.queries(f[:, sel], keys.n).sum(dim=1, dtype=torch.float64)
        run.step()
    return (qsum / max(1, int(hard.sum()))).to(run.dtype)


def keys_dtype(maps_dtype: torch.dtype) -> torch.dtype:
    """Keys x N reach N: never below float32 (see inference.prediction.STORED_DTYPES)."""
    return torch.promote_types(maps_dtype, torch.float32)


def _head_pass(run: TileGrid, branches, hard: torch.Tensor, keys: StreamedKeys | None, mean_q, maps_dtype,
               return_logits: bool, out: dict) -> None:
    """Context module again, keys/queries/attention, ECR update of hard pixels, head, argmax."""
    model = run.model
    r = reach(model.context).depth + reach(model.head).depth + 1
    ctx = keys.context() if keys is not None else None
    for core in run.feature_cores(r):
        reg = run.region(core, r)
        x = run.concat(branches, reg)
        f = model.context(x)
        if keys is not None:
            fc = core_of(f, reg, core)[0].flatten(1)
            k = keys.keys(fc) * keys.n
            shape = (-1, core[1] - core[0], core[3] - core[2])
            sl = (slice(None), slice(core[0], core[1]), slice(core[2], core[3]))
            write_core(out["keys"], sl, k.view(shape).to(keys_dtype(maps_dtype)))
            write_core(out["queries"], sl, model.ecr.queries(fc, keys.n).view(shape).to(maps_dtype))
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
def forward_halo_tiles(
    model: ElegantSeg,
    image: torch.Tensor,
    tile: int = 1024,
    progress: bool = False,
    *,
    maps_dtype: torch.dtype = torch.float16,
    return_logits: bool = False,
    feature_tile: int | None = None,
    maps_to: Maps | None = None,
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
    if not hasattr(model, "segments"):  # the tiles walk ElegantSeg's units
        raise InputError(f"--tile runs ElegantSeg unit by unit; {type(model).__name__} predicts the whole scene in "
                         "one pass: predict it without --tile")
    path = getattr(model, "global_path", "none")
    if path != "none":  # it reads across the whole feature map: no halo of a tile bounds it
        raise InputError(f"--tile: this model has a global path (global_path: {path}), which reads across the whole "
                         "feature map; predict it without --tile")
    from tqdm.auto import tqdm

    with _eval(model):
        run = TileGrid(model, image, tile, feature_tile, None)
        total = run.count_tiles()
        with tqdm(total=total, desc="tiled predict", unit="tile", disable=not progress, leave=False) as bar:
            run.bar = bar
            return _run(run, image, maps_dtype, return_logits, maps_to)


def _run(run: TileGrid, image: torch.Tensor, maps_dtype: torch.dtype, return_logits: bool,
         maps_to: Maps | None) -> TiledOutput:
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
        keys = StreamedKeys(d, n, model.ecr.norm, run.dev, run.dtype)
        for key in ("keys", "queries"):
            dtype = keys_dtype(maps_dtype) if key == "keys" else maps_dtype
            out[key] = torch.empty(d, run.h, run.w, dtype=dtype) if maps_to is None else \
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


def predict_halo_tiles(model: ElegantSeg, image: np.ndarray, device: torch.device | None = None, tile: int = 1024,
                       progress: bool = False, maps_to: Maps | None = None) -> Prediction:
    """The holistic :class:`Prediction` of a (c, H, W) normalised image, computed in halo tiles:
    what :func:`elegantviz.inference.whole.predict_whole` gives, with a bounded peak.

    ``device`` is unused (tiles run where the model is); it keeps the strategies' signature.
    With ``maps_to`` (see :func:`forward_halo_tiles`) ``keys`` and ``queries`` are the sinks.
    """
    out = forward_halo_tiles(model, torch.from_numpy(image)[None], tile, progress, maps_to=maps_to)
    pred = Prediction(labels=out.pred.to(torch.uint8).numpy(), stride=out.output_stride, margin=out.margin.numpy(),
                      hard=out.hard_mask().to(torch.uint8).numpy())
    if out.keys is not None:
        for key in ("keys", "queries"):
            m = getattr(out, key)
            dtype = torch.float32 if key == "keys" else torch.float16  # STORED_DTYPES
            setattr(pred, key, m.to(dtype).numpy() if isinstance(m, torch.Tensor) else m)
        pred.attention = out.attention.numpy()
    return pred


@dataclass(frozen=True)
class HaloTiles:
    """Strategy: the whole-scene result, unit by unit on halo tiles of ``tile`` px."""

    tile: int = 1024
    name: str = "holistic"

    def __post_init__(self):
        if not isinstance(self.tile, int) or self.tile < 2 * ALIGN:
            raise InputError(f"--tile: tile must be a whole number of pixels >= {2 * ALIGN} (tiles are multiples "
                             f"of {ALIGN} px), got {self.tile!r}")

    def job(self) -> dict:
        return {"mode": "holistic", "tile": self.tile}

    def __call__(self, model, image: np.ndarray, device: torch.device, progress: bool = False,
                 scratch: Maps | None = None) -> Prediction:
        return predict_halo_tiles(model, image, device, self.tile, progress, maps_to=scratch)
