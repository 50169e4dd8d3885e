"""The patch grid GLNet and FCtL run over a scene, and the crop of a global map at a patch's footprint.

The grid is the official code's (``helper.get_patch_info``, baselines.md 1): with n = ceil(S / p)
patches a side, n grows until neighbours overlap by at least ``min_overlap`` px; patch i sits at
round(i * step) and the last is flush with the border. A 2448 px side with 508 px patches gives
6 patches, step 388, overlap 120; a 5000 px side 11 patches, step 449.2, overlap 58.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .elegantseg import SegOutput

__all__ = ["grid_starts", "PatchGrid", "footprint", "crop_footprints", "PatchOutput"]


def grid_starts(size: int, patch: int, min_overlap: int = 50) -> list[int]:
    """Starts of the patches along one side of ``size`` px (the last flush with the border)."""
    if patch > size:
        raise ValueError(f"a {patch} px patch does not fit a {size} px side; use a patch size of at most {size}")
    if patch == size:
        return [0]
    if min_overlap >= patch:
        raise ValueError(f"an overlap of {min_overlap} px needs patches larger than that, got {patch} px")
    n = max(2, math.ceil(size / patch))
    while patch - (size - patch) / (n - 1) < min_overlap:
        n += 1
    step = (size - patch) / (n - 1)
    return [int(round(i * step)) for i in range(n - 1)] + [size - patch]


@dataclass(frozen=True)
class PatchGrid:
    """The patches of ``patch`` px covering an ``h`` x ``w`` scene, row by row."""

    h: int
    w: int
    patch: int
    min_overlap: int = 50

    @property
    def ys(self) -> list[int]:
        return grid_starts(self.h, self.patch, self.min_overlap)

    @property
    def xs(self) -> list[int]:
        return grid_starts(self.w, self.patch, self.min_overlap)

    def boxes(self) -> list[tuple[int, int]]:
        """(top, left) of every patch, in scene pixels."""
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def counts(self) -> torch.Tensor:
        """(h, w) how many patches cover each pixel: the outer product of the two sides' counts."""
        def side(size: int, starts: list[int]) -> torch.Tensor:
            c = torch.zeros(size)
            for s in starts:
                c[s : s + self.patch] += 1
            return c

        return torch.outer(side(self.h, self.ys), side(self.w, self.xs))


def footprint(box: tuple[int, int], patch: int, scene_hw: tuple[int, int], map_hw: tuple[int, int]
              ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a patch's footprint on a map of ``map_hw`` covering the scene
    (GLNet: top = round(top / H * h), size = round(h * p / H), at least 1 cell, inside the map)."""
    (y, x), (H, W), (h, w) = box, scene_hw, map_hw
    ph, pw = max(1, round(h * patch / H)), max(1, round(w * patch / W))
    top, left = min(round(y / H * h), h - ph), min(round(x / W * w), w - pw)
    return top, left, ph, pw


def crop_footprints(feat: torch.Tensor, boxes: list[tuple[int, int]], patch: int, scene_hw: tuple[int, int],
                    out_hw: tuple[int, int]) -> torch.Tensor:
    """The crop of a global map (1, c, h, w) at each patch's footprint, resized bilinearly to
    ``out_hw``: (len(boxes), c, *out_hw). The local branch sees the global features of its own region."""
    # every footprint on one map has the same size: one resize for all of them
    crops = [feat[:, :, t : t + ph, left : left + pw] for t, left, ph, pw in
             (footprint(box, patch, scene_hw, feat.shape[-2:]) for box in boxes)]
    return F.interpolate(torch.cat(crops), size=out_hw, mode="bilinear", align_corners=False)


@dataclass
class PatchOutput(SegOutput):
    """A patch model's inference output: the aggregated logits (``logits``, summed over the patch
    overlaps at scene size) and, with ``return_evidence=True``, its other outputs as class ids
    (``views``: name -> (n, H, W) int, e.g. GLNet's ``global`` and ``local``), which predict writes
    as ``labels/<name>-<view>``."""

    views: dict[str, torch.Tensor] = field(default_factory=dict)
