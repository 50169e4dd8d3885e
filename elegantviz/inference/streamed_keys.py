"""ECR's keys and context over a whole scene, streamed tile by tile (as flash attention does)."""

from __future__ import annotations

import math

import torch

__all__ = ["StreamedKeys"]


class StreamedKeys:
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
