"""Autocast off around arithmetic that low precision would break (integer sums, softmax over millions)."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half-precision tensors, else their own dtype (float32, float64)."""
    return torch.promote_types(t.dtype, torch.float32)


def no_autocast(t: torch.Tensor):
    """Autocast off on ``t``'s device; a no-op elsewhere (meta tensors, used for counting FLOPs, have none)."""
    return torch.autocast(t.device.type, enabled=False) if t.device.type in ("cpu", "cuda") else nullcontext()
