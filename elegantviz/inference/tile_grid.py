"""The geometry of one halo-tiled run: core tiles, halos, crops, and HRNet run unit by unit on them.

The scene is zero-padded to a multiple of 32 (HRNet's coarsest stride, as
:class:`~elegantviz.models.backbone.HRNetBackbone` pads it); tiles and halos are multiples of it.
A unit (or group of units) runs on every core tile plus a halo that covers its receptive field
(:func:`elegantviz.models.receptive.reach`), and only the cores of its outputs are kept, so the
whole-scene outputs equal those of one pass up to float reassociation.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from elegantviz.models.elegantseg import ElegantSeg
from elegantviz.models.hrnet import HRNetUnit, hrnet_units, run_hrnet, run_units
from elegantviz.models.receptive import reach, round_up

__all__ = ["ALIGN", "TileGrid", "tile_halo", "core_tiles", "core_of", "tile_groups", "group_depth", "group_name"]

ALIGN = 32  # HRNet's coarsest stride: the backbone pads to it, tiles and halos are multiples of it

Core = tuple[int, int, int, int]  # y0, y1, x0, x1
Group = tuple[HRNetUnit, ...]


def tile_halo(depth: int) -> int:
    """Halo in scene px for a unit whose receptive-field radius is ``depth`` (tests patch it)."""
    return round_up(depth, ALIGN)


def core_tiles(h: int, w: int, tile: int, halo: int = 0) -> Iterator[Core]:
    """Core tiles; a dimension that one window (tile + 2 halo) spans anyway is not split (the
    same bound on a window's size, less recomputation)."""
    th = h if h <= tile + 2 * halo else tile
    tw = w if w <= tile + 2 * halo else tile
    for y in range(0, h, th):
        for x in range(0, w, tw):
            yield y, min(y + th, h), x, min(x + tw, w)


def core_of(t: torch.Tensor, reg: Core, core: Core) -> torch.Tensor:
    """The core's part of a (n, c, region) tensor."""
    return t[..., core[0] - reg[0]: core[1] - reg[0], core[2] - reg[2]: core[3] - reg[2]]


def tile_groups(units: Sequence[HRNetUnit]) -> list[Group]:
    """The units as tiled: stem, layer1 and ``transition1`` as one (their maps are the largest,
    and kept whole only at its end), then every stage module and transition on its own."""
    k = next(i for i, u in enumerate(units) if u.kind == "transition")
    return [tuple(units[:k + 1]), *((u,) for u in units[k + 1:])]


def group_depth(group: Group) -> int:
    """Receptive-field radius (scene px) of what a group computes on tiles (a transition: only
    its new branches, the others pass through whole)."""
    if group[0].kind == "transition":
        return max(reach(t, 0, group[0].in_strides[-1]).depth for t in group[0].modules
                   if not isinstance(t, nn.Identity))
    return reach(group).depth


def group_name(group: Group) -> str:
    """A tile group's name: ``stem`` for the first, else its unit's."""
    return "stem" if len(group) > 1 else group[0].name


class TileGrid:
    """Shared state of one tiled run: geometry, device, memory format, progress bar."""

    def __init__(self, model: ElegantSeg, image: torch.Tensor, tile: int, feature_tile: int | None, bar: Any):
        self.model = model
        self.dev = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.fmt = torch.channels_last if model.channels_last else torch.contiguous_format
        self.H, self.W = image.shape[-2:]
        self.Hp, self.Wp = round_up(self.H, ALIGN), round_up(self.W, ALIGN)
        self.tile = max(ALIGN, round_up(tile, ALIGN))
        self.s = model.output_stride
        self.h, self.w = -(-self.H // self.s), -(-self.W // self.s)
        self.feature_tile = max(1, feature_tile or self.tile // self.s)
        self.bar = bar
        self.groups = tile_groups(hrnet_units(model.backbone.body))
        self.branch_strides = self.groups[-1][-1].out_strides  # of the final branches

    def to_dev(self, t: torch.Tensor) -> torch.Tensor:
        """A private copy on the model's device (modules may write into their input)."""
        return t.to(self.dev, dtype=self.dtype, copy=True, memory_format=self.fmt)

    def alloc(self, c: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(1, c, h, w, dtype=self.dtype, memory_format=self.fmt)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    # --- the backbone, unit by unit --------------------------------------------------------

    def count_tiles(self) -> int:
        """Tiles of the whole run, for the progress bar."""
        model = self.model
        n = sum(len(list(core_tiles(self.Hp, self.Wp, self.tile, tile_halo(group_depth(g)))))
                for g in self.groups)
        rc = reach(model.context).depth
        n += len(self.feature_cores(reach(model.aux_head).depth + 1))
        n += len(self.feature_cores(rc + reach(model.head).depth + 1))
        return n + (len(self.feature_cores(rc)) if model.ecr is not None else 0)

    def backbone(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The four final-stage HRNet branches of the padded scene (strides 4, 8, 16, 32)."""
        return run_hrnet(self.model.backbone.body, image, self.groups, self.run_group)

    def run_group(self, group: Group, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if group[0].kind == "transition":
            return self._transition(group[0], xs)
        return self.run_tiles(lambda ts: run_units(group, ts), xs, group[0].in_strides, group_depth(group))

    def _transition(self, unit: HRNetUnit, yl: list[torch.Tensor]) -> list[torch.Tensor]:
        """As timm: identity branches pass through, every other one is applied to the last branch."""
        todo = [i for i, t in enumerate(unit.modules) if not isinstance(t, nn.Identity)]
        new = self.run_tiles(lambda xs: [unit.modules[i](xs[0]) for i in todo], [yl[-1]], unit.in_strides[-1:],
                             group_depth((unit,)))
        made = dict(zip(todo, new))
        return [made[i] if i in made else yl[i] for i in range(len(unit.modules))]

    def run_tiles(self, fn, inputs: list[torch.Tensor], strides: Sequence[int], depth: int) -> list[torch.Tensor]:
        """``fn`` on every core tile of the padded scene plus its halo; only cores are kept.

        ``inputs`` are whole-scene maps at ``strides``; a map smaller than the padded scene
        (the image) is zero-padded, as the backbone pads the whole scene.
        """
        halo = tile_halo(depth)
        outs: list[torch.Tensor] | None = None
        for y0, y1, x0, x1 in core_tiles(self.Hp, self.Wp, self.tile, halo):
            wy0, wy1 = max(0, y0 - halo), min(self.Hp, y1 + halo)
            wx0, wx1 = max(0, x0 - halo), min(self.Wp, x1 + halo)
            xs = [self._crop(t, s, wy0, wy1, wx0, wx1) for t, s in zip(inputs, strides)]
            ys = fn(xs)
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

    # --- feature resolution ----------------------------------------------------------------

    def feature_cores(self, r: int) -> list[Core]:
        return list(core_tiles(self.h, self.w, self.feature_tile, r))

    def region(self, core: Core, r: int) -> Core:
        a0, a1, b0, b1 = core
        return max(0, a0 - r), min(self.h, a1 + r), max(0, b0 - r), min(self.w, b1 + r)

    def concat(self, branches: list[torch.Tensor], reg: Core) -> torch.Tensor:
        """HRNetBackbone's resize + concat on a feature region, exact: the branches are cropped to
        a 32-aligned window one coarsest cell wider than the region, so the bilinear resize sees
        what it sees on the whole scene."""
        a0, a1, b0, b1 = reg
        s = self.s
        wy0, wy1 = max(0, a0 * s // ALIGN * ALIGN - ALIGN), min(self.Hp, round_up(a1 * s, ALIGN) + ALIGN)
        wx0, wx1 = max(0, b0 * s // ALIGN * ALIGN - ALIGN), min(self.Wp, round_up(b1 * s, ALIGN) + ALIGN)
        size = ((wy1 - wy0) // s, (wx1 - wx0) // s)
        feats = []
        for t, sj in zip(branches, self.branch_strides):
            f = self.to_dev(t[..., wy0 // sj: wy1 // sj, wx0 // sj: wx1 // sj])
            feats.append(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear",
                                                                      align_corners=False))
        x = torch.cat(feats, dim=1)
        return x[..., a0 - wy0 // s: a1 - wy0 // s, b0 - wx0 // s: b1 - wx0 // s].contiguous(memory_format=self.fmt)

    def upsample(self, logits: torch.Tensor, reg: Core, core: Core) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """ElegantSeg's upsampling on a region, cropped to the core's input pixels (and the scene)."""
        s = self.s
        up = F.interpolate(logits, size=(logits.shape[-2] * s, logits.shape[-1] * s), mode="bilinear",
                           align_corners=False)
        y0, y1 = core[0] * s, min(core[1] * s, self.H)
        x0, x1 = core[2] * s, min(core[3] * s, self.W)
        crop = up[..., y0 - reg[0] * s: y1 - reg[0] * s, x0 - reg[2] * s: x1 - reg[2] * s]
        return crop, (slice(y0, y1), slice(x0, x1))
