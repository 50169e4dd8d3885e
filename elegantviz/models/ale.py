"""FCtL's Alternating Local Enhancement (ALE, the IJCV journal version, fctl.txt 3.4): the official
code has none; this follows the paper's text, Algorithm 1 and Fig. 5 / 13, and says where the
paper leaves a choice open.

**Aligned contexts** (:func:`align_context`): the centre of each context's pool5 that covers the
local patch, "cropped and upscaled" to the local pool5's size. Done here as one bilinear
resampling (``grid_sample``) through the exact geometry of :mod:`.lcf` (local cell f -> context
cell a f + beta): for a 2x context the local 23 x 23 cells read the central ~11.5 x 11.5 cells of
the context map, for the whole-scene (global) context the patch's footprint. Cells that fall off
the context map read 0.

**LFI** (:class:`LFI`, Eq. 6-7): the target and the two references are tokenised by 1 x 1 convs;
the references are concatenated and a grouped depthwise convolution with a distinct window per
channel group (``kernels``) gives the attention map E; out = T + E * T. Choices (the paper
leaves them open): the target token T is the one enhanced (Eq. 7 on the tokenised target); E
has the target's c channels, each output channel seeing the same channel of both references
(a depthwise conv over the interleaved references, groups = c); E goes through a sigmoid (an
attention map in (0, 1), so out = T (1 + E)); ``kernels`` = (3, 5, 7, 9) over 4 equal channel
groups (the paper's Fig. 7 shows "small" and "large" windows only); each LFI call has its own
weights (the paper says the block is "recurrently" used, but not whether weights are shared);
PyTorch's default init.

**ALE** (:class:`ALE`, Algorithm 1, structure (d) of Fig. 13 by default, ``order=2``): round 1
enhances X_I with references (X~_M, X~_L) and, from the same inputs, X~_M with (X_I, X~_L) and
X~_L with (X_I, X~_M); round 2 enhances the round-1 X_I with the round-1 X~_M, X~_L (4 LFI blocks).
``order=1`` is structure (c) (one LFI), ``order=3`` structure (e) (7). The output X^_I joins
the local features as the paper's X_I + X-_I + X^_I (Sec. 3.5), here through a learnable
scalar gate initialised to 0 (``gamma``, as the LCC's gamma): a model initialised from the
earlier stages starts as their local branch, and ALE fades in. The paper's plain sum would
double the local features' scale at the first step (X^_I is X_I enhanced, not a residual).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..autocast import compute_dtype

__all__ = ["ALE", "LFI", "align_context"]


def align_context(feat: torch.Tensor, fmap: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The part of context features ``feat`` (B or 1, C, h, w) under each local pool5 cell, at
    ``out_hw`` (B, C, *out_hw); ``fmap`` (B, 2, 2) maps local cell f to context cell a f + beta."""
    n = fmap.shape[0]
    h, w = feat.shape[-2:]
    fm = fmap.to(compute_dtype(feat))  # the geometry in float32 at least: bfloat16 misplaces cells by ~0.1
    (ay, by), (ax, bx) = fm[:, 0].unbind(-1), fm[:, 1].unbind(-1)
    # align_corners=False: normalised = 2 f / size - 1, f continuous (cell centres at c + 0.5)
    sx, sy = ax * out_hw[1] / w, ay * out_hw[0] / h
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, sx + 2 * bx / w - 1], -1),
                         torch.stack([zero, sy, sy + 2 * by / h - 1], -1)], 1)
    grid = F.affine_grid(theta, [n, feat.shape[1], *out_hw], align_corners=False).to(feat.dtype)
    return F.grid_sample(feat.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _groups(channels: int, parts: int) -> list[int]:
    base, extra = divmod(channels, parts)
    sizes = [base + (1 if i < extra else 0) for i in range(parts)]
    return [s for s in sizes if s > 0]


class LFI(nn.Module):
    """Local feature interaction f(target; ref1, ref2) -> T + sigmoid(E) * T (see the module doc)."""

    def __init__(self, channels: int, kernels: Sequence[int] = (3, 5, 7, 9)):
        super().__init__()
        self.tok_target = nn.Conv2d(channels, channels, 1)
        self.tok_refs = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(2))
        sizes = _groups(channels, len(kernels))
        self.sizes = sizes
        self.windows = nn.ModuleList(nn.Conv2d(2 * c, c, k, padding=k // 2, groups=c)
                                     for c, k in zip(sizes, kernels))

    def forward(self, target: torch.Tensor, ref1: torch.Tensor, ref2: torch.Tensor) -> torch.Tensor:
        t = self.tok_target(target)
        r1, r2 = self.tok_refs[0](ref1), self.tok_refs[1](ref2)
        refs = torch.stack([r1, r2], dim=2).flatten(1, 2)  # channel j of both references side by side
        e = torch.cat([conv(part) for conv, part in zip(self.windows, refs.split([2 * c for c in self.sizes], 1))], 1)
        return t + torch.sigmoid(e) * t


class ALE(nn.Module):
    """Alternating local enhancement: ``forward(x_i, x_m, x_l)`` -> gamma * X^_I, with x_m, x_l the
    aligned (cropped, upscaled) medium and large context features."""

    def __init__(self, channels: int, order: int = 2, kernels: Sequence[int] = (3, 5, 7, 9)):
        super().__init__()
        if order < 1:
            raise ValueError(f"ALE needs order >= 1, got {order}")
        self.order = order
        self.local = nn.ModuleList(LFI(channels, kernels) for _ in range(order))
        self.medium = nn.ModuleList(LFI(channels, kernels) for _ in range(order - 1))
        self.large = nn.ModuleList(LFI(channels, kernels) for _ in range(order - 1))
        self.gamma = nn.Parameter(torch.zeros(1))

    def enhance(self, x_i: torch.Tensor, x_m: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        """X^_I (ungated): every round enhances each feature from the previous round's three."""
        for r in range(self.order):
            new_i = self.local[r](x_i, x_m, x_l)
            if r < self.order - 1:
                x_m, x_l = self.medium[r](x_m, x_i, x_l), self.large[r](x_l, x_i, x_m)
            x_i = new_i
        return x_i

    def forward(self, x_i: torch.Tensor, x_m: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        return self.gamma.to(x_i.dtype) * self.enhance(x_i, x_m, x_l)
