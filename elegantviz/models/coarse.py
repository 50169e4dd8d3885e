"""A global path of large kernels at a coarse stride: MLK on the features pooled ``pool`` x.

Why: the holistic model's effective receptive field was measured at r90 = 132 px (README,
``benchmarks/confusion_by_reach.py``): the stride-8 MLK's largest kernel (31) spans 248 px, so
each pixel was decided from about what a 256 px crop holds, and the model could not tell the
middle of a long river from a pond. What separates them in riverworld is extent: an oxbow pond
fits in a disc of radius ~110 px (arc radius <= 90 plus its width), a river runs on for the
whole scene. The same MLK unit on features average-pooled 4x (stride 32 here) has a 31-kernel
spanning ~990 px, at 1/16 of the stride-8 cost, and it stays linear in the scene's pixels (a
6800 x 7200 scene is a 213 x 225 map), unlike attention between places.

Unlike a recurrence (``global_path: sweep``, :mod:`.scan`), a convolution does not decay along
its path, so a long reach is not a product of many gates near 1. The output is upsampled
(each coarse pixel covers exactly ``pool`` x ``pool`` fine pixels) and added back through a
per-channel scale that starts at zero: at initialisation the model is unchanged, and a
checkpoint trained without the path loads into one with it (``model.init: {base: ...}``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .depthwise import DepthwiseImpl
from .mlk import MLK

__all__ = ["CoarseContext"]


class CoarseContext(nn.Module):
    """``x + gamma * up(MLK(avg_pool(x)))`` with ``gamma`` per channel, zero at initialisation."""

    def __init__(self, dim: int, pool: int = 4, hidden_dim: int | None = None, num_units: int = 2,
                 kernel_sizes: Sequence[int] = (7, 15, 31), depthwise_impl: DepthwiseImpl = "auto"):
        super().__init__()
        self.pool = pool
        self.mlk = MLK(dim, dim, hidden_dim or dim, num_units, kernel_sizes, depthwise_impl=depthwise_impl)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.pool
        coarse = F.avg_pool2d(x, p, ceil_mode=True)  # a partial last window averages what it holds
        y = self.mlk(coarse)
        y = F.interpolate(y, size=(y.shape[-2] * p, y.shape[-1] * p), mode="bilinear", align_corners=False)
        return x + self.gamma.view(1, -1, 1, 1) * y[..., :h, :w]
