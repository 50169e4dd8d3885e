"""The Laplacian pyramid ISDNet feeds its shallow branch (isdnet.txt Sec. 3.2; official code).

Level k's residual is ``level_k - up(down(level_k))``: the detail a 2x coarser level cannot
hold. ``down`` blurs with the 5 x 5 binomial kernel (outer([1, 4, 6, 4, 1]) / 256, depthwise,
reflect padding 2) and keeps every second pixel; ``up`` inserts zeros between pixels and blurs
with 4 x the kernel (the zeros took 3 of every 4 pixels' weight), resizing (nearest) when an
odd side made it one pixel short. The kernel is a buffer, so it follows the model's device
(the official code builds it on ``cuda`` at construction).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LaplacianPyramid", "gaussian_kernel"]


def gaussian_kernel(channels: int) -> torch.Tensor:
    """(channels, 1, 5, 5) depthwise binomial blur, summing to 1 per channel."""
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = torch.outer(row, row) / 256.0
    return k.expand(channels, 1, 5, 5).contiguous()


class LaplacianPyramid(nn.Module):
    """``forward(x)`` -> the ``levels`` high-frequency residuals, finest first (level k at 1/2^k)."""

    def __init__(self, channels: int, levels: int = 2):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.channels, self.levels = channels, levels
        self.register_buffer("kernel", gaussian_kernel(channels), persistent=False)

    def blur(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        pad = "reflect" if min(x.shape[-2:]) > 2 else "replicate"  # reflect needs a side > padding
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode=pad), self.kernel.to(x.dtype) * gain, groups=self.channels)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x)[..., ::2, ::2]

    def up(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        n, c, h, w = x.shape
        z = x.new_zeros(n, c, 2 * h, 2 * w)
        z[..., ::2, ::2] = x
        out = self.blur(z, gain=4.0)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="nearest")
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        residuals = []
        level = x
        for _ in range(self.levels):
            coarse = self.down(level)
            residuals.append(level - self.up(coarse, level.shape[-2:]))
            level = coarse
        return residuals
