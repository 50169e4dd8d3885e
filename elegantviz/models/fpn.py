"""GLNet's branches: a timm ResNet and the official code's linear FPN, plus the two ways features
cross between the branches (baselines.md 2.1).

The FPN has no norm and no activation, its convolutions initialised N(0, 0.01) with bias 0:
1x1 laterals bring c2..c5 to ``width`` channels (top-down: bilinear upsample and add) -> ps0;
four 3x3 ``smooth1`` convs (width -> width) -> ps1; four 3x3 ``smooth2`` convs (width -> width / 2)
-> ps2; the four ps2 maps upsampled bilinearly to p2's size and concatenated (p5 first) -> ps3
(2 x width channels), then the 3x3 ``classify`` conv at 1/4. A *shared* FPN (``fold=2``: the
local branch, and the global branch's ``_ext`` layers) concatenates, at every one of these
stages, a second map of the same stage (c2..c5, ps0, ps1, ps2) to its own, so each conv takes twice
the channels, and makes ps3 with one more 3x3 conv (``fuse``, the official ``smooth``: 4 x width
-> 2 x width). The local branch's second maps are the global maps cropped at the patch footprint
(:func:`crop_pyramid`); the global branch's are the local maps of all patches pasted into
global-size canvases and averaged over the overlaps (:func:`add_to_canvases`, :func:`average_canvases`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .patch_grid import crop_footprints, footprint

__all__ = ["Pyramid", "FPNLayers", "GlobalFPN", "LocalFPN", "Branch", "crop_pyramid", "add_to_canvases",
           "average_canvases", "zero_canvases", "init_normal"]


class Pyramid(NamedTuple):
    """A branch's shared maps, each a list in stride order (c2..c5, p2..p5)."""

    c: list[torch.Tensor]
    ps0: list[torch.Tensor]
    ps1: list[torch.Tensor]
    ps2: list[torch.Tensor]

    def maps(self) -> list[torch.Tensor]:
        return [*self.c, *self.ps0, *self.ps1, *self.ps2]

    @classmethod
    def of(cls, maps: Sequence[torch.Tensor]) -> "Pyramid":
        m = list(maps)
        return cls(m[0:4], m[4:8], m[8:12], m[12:16])


def init_normal(module: nn.Module, std: float = 0.01) -> None:
    """The official FPN init: every conv N(0, std), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _cat(own: list[torch.Tensor], other: list[torch.Tensor] | None) -> list[torch.Tensor]:
    return own if other is None else [torch.cat([a, b], dim=1) for a, b in zip(own, other, strict=True)]


class FPNLayers(nn.Module):
    """Laterals, smooth-1, smooth-2 (and ``fuse`` when ``fold`` = 2) of the linear FPN;
    ``forward(c, shared)`` -> (Pyramid(c, ps0, ps1, ps2), ps3)."""

    def __init__(self, in_channels: Sequence[int], width: int = 256, fold: int = 1):
        super().__init__()
        if fold not in (1, 2):
            raise ValueError(f"fold is 1 (a plain FPN) or 2 (a shared one), got {fold}")
        self.fold = fold
        half = width // 2
        self.lateral = nn.ModuleList(nn.Conv2d(c * fold, width, 1) for c in in_channels)
        self.smooth1 = nn.ModuleList(nn.Conv2d(width * fold, width, 3, padding=1) for _ in in_channels)
        self.smooth2 = nn.ModuleList(nn.Conv2d(width * fold, half, 3, padding=1) for _ in in_channels)
        self.fuse = nn.Conv2d(len(in_channels) * half * 2, len(in_channels) * half, 3, padding=1) if fold == 2 else None
        init_normal(self)

    def forward(self, c: list[torch.Tensor], shared: Pyramid | None = None) -> tuple[Pyramid, torch.Tensor]:
        if (shared is None) != (self.fold == 1):
            raise ValueError("a shared FPN needs the other branch's maps, a plain one takes none")
        other = shared if shared is not None else Pyramid(None, None, None, None)
        lat = [conv(x) for conv, x in zip(self.lateral, _cat(c, other.c))]
        ps0 = [lat[-1]]
        for x in reversed(lat[:-1]):  # top-down: p5, then p4 = up(p5) + lateral(c4), ...
            ps0.insert(0, _up(ps0[0], x) + x)
        ps1 = [conv(x) for conv, x in zip(self.smooth1, _cat(ps0, other.ps0))]
        ps2 = [conv(x) for conv, x in zip(self.smooth2, _cat(ps1, other.ps1))]
        top = _cat(ps2, other.ps2)
        ps3 = torch.cat([_up(x, top[0]) for x in reversed(top)], dim=1)  # p5 first, as the official concat
        if self.fuse is not None:
            ps3 = self.fuse(ps3)
        return Pyramid(list(c), ps0, ps1, ps2), ps3


class GlobalFPN(nn.Module):
    """The global branch's FPN: the plain path (stages 1 and 2), and with ``with_ext`` the ``_ext``
    layers that take the local canvases (stage 3); ``classify`` is shared by both paths."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int = 256, with_ext: bool = False):
        super().__init__()
        self.plain = FPNLayers(in_channels, width, fold=1)
        self.ext = FPNLayers(in_channels, width, fold=2) if with_ext else None
        self.classify = nn.Conv2d(2 * width, num_classes, 3, padding=1)
        init_normal(self.classify)

    def forward(self, c: list[torch.Tensor], canvases: Pyramid | None = None
                ) -> tuple[torch.Tensor, Pyramid, torch.Tensor]:
        if canvases is None:
            pyr, ps3 = self.plain(c)
        elif self.ext is None:
            raise ValueError("this global FPN has no _ext layers (built for stage 1 or 2)")
        else:
            pyr, ps3 = self.ext(c, canvases)
        return self.classify(ps3), pyr, ps3


class LocalFPN(nn.Module):
    """The local branch's FPN: every stage takes the global maps cropped at the patch (fold 2)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int = 256):
        super().__init__()
        self.layers = FPNLayers(in_channels, width, fold=2)
        self.classify = nn.Conv2d(2 * width, num_classes, 3, padding=1)
        init_normal(self.classify)

    def forward(self, c: list[torch.Tensor], crops: Pyramid) -> tuple[torch.Tensor, Pyramid, torch.Tensor]:
        pyr, ps3 = self.layers(c, crops)
        return self.classify(ps3), pyr, ps3


class Branch(nn.Module):
    """A timm ResNet (``features_only``, c2..c5) and its FPN."""

    def __init__(self, backbone: str, in_chans: int, pretrained: bool, fpn_factory: Callable[[list[int]], nn.Module],
                 backbone_kwargs: dict | None = None):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=pretrained, features_only=True,
                                          out_indices=(1, 2, 3, 4), in_chans=in_chans, **(backbone_kwargs or {}))
        self.fpn = fpn_factory(self.backbone.feature_info.channels())


def crop_pyramid(pyr: Pyramid, boxes: list[tuple[int, int]], patch: int, scene_hw: tuple[int, int],
                 sizes: Sequence[tuple[int, int]]) -> Pyramid:
    """Global->local: every map of a (1, ...) global pyramid cropped at each patch's footprint and
    resized bilinearly to the local map of the same level (``sizes``: c2..c5's)."""
    return Pyramid(*([crop_footprints(x, boxes, patch, scene_hw, tuple(s)) for x, s in zip(group, sizes, strict=True)]
                     for group in pyr))


def zero_canvases(like: Pyramid) -> Pyramid:
    """Empty local->global canvases, one per map of a global pyramid (same channels and size)."""
    return Pyramid.of([torch.zeros_like(x) for x in like.maps()])


@torch.no_grad()
def add_to_canvases(canvases: Pyramid, local: Pyramid, boxes: list[tuple[int, int]], patch: int,
                    scene_hw: tuple[int, int]) -> None:
    """Local->global: each patch's maps resized bilinearly to its footprint on the canvas of the
    same map and added there (in place). All footprints on one map have the same size: the
    sub-batch is resized in one call."""
    for canvas, x in zip(canvases.maps(), local.maps(), strict=True):
        feet = [footprint(box, patch, scene_hw, canvas.shape[-2:]) for box in boxes]
        resized = F.interpolate(x, size=feet[0][2:], mode="bilinear", align_corners=False)
        for (top, left, ph, pw), r in zip(feet, resized, strict=True):
            canvas[0, :, top : top + ph, left : left + pw] += r


@torch.no_grad()
def average_canvases(canvases: Pyramid, counts: torch.Tensor) -> Pyramid:
    """The canvases divided by the overlap count: ``counts`` (H, W) at full resolution (how many
    patches cover each pixel), resized bilinearly to each canvas, as the official template."""
    counts = counts.to(canvases.c[0])[None, None]
    return Pyramid.of([x / F.interpolate(counts, size=x.shape[-2:], mode="bilinear", align_corners=False)
                       for x in canvases.maps()])
