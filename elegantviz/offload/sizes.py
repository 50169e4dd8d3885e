"""Byte sizes as people write them, and the machine's memory: free bytes, glibc's mmap threshold."""

from __future__ import annotations

import torch

from elegantviz.values import parse_size  # one parser for YAML, the command line and the planner

__all__ = ["parse_size", "format_size", "default_budget", "mmap_large_allocations"]


def format_size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def default_budget(device: torch.device | str = "cpu", margin: float = 0.8) -> int:
    """What the machine has free now, times ``margin`` (device memory on CUDA, else RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * margin)
    import psutil

    return int(psutil.virtual_memory().available * margin)


def mmap_large_allocations(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc serve allocations >= ``threshold_bytes`` with mmap; False where that fails.

    By default glibc raises its mmap threshold after each large free (up to 32 MiB) and keeps
    freed heap memory for reuse, so a step that spills or recomputes frees activations that
    the process still holds: peak RSS here was up to 2x the live tensor bytes (1.56 vs 0.88 GiB
    at 1024 px with disk spill). Process-wide and not undone; call once at start-up.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
