"""A global spatial path: four gated linear recurrences that sweep the whole feature map.

Why: the holistic model's effective receptive field was measured at r90 = 132 px (README,
``benchmarks/confusion_by_reach.py``), so a whole-scene forward decided each pixel from about
what a 256 px crop holds, and it could not tell a river (water that runs to the scene border)
from a pond (water enclosed by land). ECR's attention is between classes, not places, so it
cannot carry "this water body reaches the border" either.

A sweep (the spatial propagation network of Liu et al., NeurIPS 2017, in the form ReNet and
ReSeg use for context) runs a recurrence row by row, top to bottom::

    h[t, i] = (1 - sum_k g_k[t, i]) * x[t, i] + sum_k g_k[t, i] * h[t - 1, i + k],  k in {-1, 0, 1}

with per-pixel, per-channel gates ``g`` predicted from the features and scaled so that
``sum_k |g_k| <= 1`` (so the recurrence is stable at any length). Where the gates open (water)
the state travels on, where they close (land) it restarts from the pixel's own features; the
state before the first row is a learned border vector. One sweep thus carries information
along a connected path across the whole scene in H steps, at any scene size, and four sweeps
(down, up, right, left) cover every direction. The result is projected back and added to the
features through a scale that starts at zero, so at initialisation the model is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GlobalSweep", "sweep_down"]


def sweep_down(x: torch.Tensor, gates: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """The recurrence above, top to bottom. ``x``: (n, c, H, W); ``gates``: (n, 3, c, H, W),
    already scaled; ``border``: (c,), the state above the first row."""
    n, c, h, w = x.shape
    state = border.view(1, c, 1).expand(n, c, w)
    rows = []
    for t in range(h):
        g = gates[:, :, :, t]  # (n, 3, c, W)
        padded = F.pad(state, (1, 1))
        carried = g[:, 0] * padded[..., :-2] + g[:, 1] * state + g[:, 2] * padded[..., 2:]
        state = (1 - g.sum(1)) * x[:, :, t] + carried
        rows.append(state)
    return torch.stack(rows, dim=2)


class GlobalSweep(nn.Module):
    """Four gated sweeps over ``dim``-channel features, added back as a zero-initialised residual."""

    DIRECTIONS = ("down", "up", "right", "left")

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.hidden = hidden
        self.norm = nn.BatchNorm2d(dim)
        self.values = nn.Conv2d(dim, 4 * hidden, 1)
        self.gates = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(dim, 4 * 3 * hidden, 1))
        self.border = nn.Parameter(torch.zeros(4, hidden))
        self.out = nn.Conv2d(4 * hidden, dim, 1)
        self.gamma = nn.Parameter(torch.zeros(dim))

    @staticmethod
    def _turn(t: torch.Tensor, direction: str) -> torch.Tensor:
        """View ``t`` (..., H, W) so that ``direction`` becomes top to bottom (its own inverse
        for down/up; right/left transpose)."""
        if direction == "up":
            return t.flip(-2)
        if direction == "right":
            return t.transpose(-1, -2)
        if direction == "left":
            return t.transpose(-1, -2).flip(-2)
        return t

    @staticmethod
    def _unturn(t: torch.Tensor, direction: str) -> torch.Tensor:
        if direction == "left":
            return t.flip(-2).transpose(-1, -2)
        return GlobalSweep._turn(t, direction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = self.norm(x)
        acc = torch.promote_types(x.dtype, torch.float32)  # the recurrences in at least float32 (AMP)
        values = self.values(y).to(acc).view(n, 4, self.hidden, h, w)
        raw = torch.tanh(self.gates(y).to(acc)).view(n, 4, 3, self.hidden, h, w)
        gates = raw / raw.abs().sum(2, keepdim=True).clamp(min=1.0)
        swept = []
        for d, direction in enumerate(self.DIRECTIONS):
            s = sweep_down(self._turn(values[:, d], direction), self._turn(gates[:, d], direction), self.border[d])
            swept.append(self._unturn(s, direction))
        out = self.out(torch.cat(swept, 1).to(x.dtype))
        return x + self.gamma.view(1, -1, 1, 1) * out
