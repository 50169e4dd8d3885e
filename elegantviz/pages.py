"""Give back the pages of a spilled tensor that has been read (RSS, not correctness).

A tensor that :class:`elegantviz.offload.disk.DiskOffload` brings back for backward is a private
mapping of its spill file, and every page read stays resident until the whole tensor dies. Code
that reads such a tensor slice by slice (ECR's key context, the banded segments of
:mod:`elegantviz.offload`) drops each slice once done, so a 3 GB saved map costs one slice of
RSS, not 3 GB. It sits in the bottom layer because both the models and offload need it.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

__all__ = ["file_backed", "spill_mapping", "drop_file_pages"]


SPILL_PREFIX = "elegantviz-spill-"  # DiskOffload's folders


def _file_mapping(addr: int) -> tuple[int, int] | None:
    """The (start, end) of the mapping that holds ``addr`` if it is a private mapping of a spill
    file (nothing else: dropping pages of anonymous or shared memory would lose data)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                if lo <= addr < hi:
                    path = fields[5].strip() if len(fields) == 6 else ""
                    ok = fields[1].endswith("p") and f"/{SPILL_PREFIX}" in path and not path.endswith("(deleted)")
                    return (lo, hi) if ok else None
    except OSError:
        return None
    return None


def spill_mapping(t: torch.Tensor) -> tuple[int, int] | None:
    """The address range of the spill-file mapping ``t`` lives in (a tensor read back by
    :class:`.hooks.DiskOffload`), else None. Look it up once per tensor: it reads /proc/self/maps."""
    if t.device.type != "cpu" or t.numel() == 0:
        return None
    return _file_mapping(t.data_ptr())


def file_backed(t: torch.Tensor) -> bool:
    """Whether ``t`` is a spilled tensor read back by :class:`.hooks.DiskOffload`."""
    return spill_mapping(t) is not None


def drop_file_pages(t: torch.Tensor, first: int, last: int, dim: int = -2,
                    mapping: tuple[int, int] | None = None) -> bool:
    """Unmap the pages of ``[first, last)`` along ``dim`` (rows by default) of a spilled tensor
    read back from disk.

    A tensor that :class:`DiskOffload` brings back is a private mapping of its spill file: every
    page read stays in this process's RSS until the whole tensor dies, so reading a 3 GB saved map
    band by band ends with all of it resident. ``MADV_DONTNEED`` gives those pages back (the page
    cache keeps them while memory allows; a later read maps them again). Only for a file mapping
    (on anonymous memory it would zero the data, and it would undo writes to a private mapping:
    saved tensors are only read, and only spill files qualify) whose slices along ``dim`` are
    contiguous (rows of a channels_last map, positions of its flattened (n, d, N) view); False
    when nothing was dropped.
    ``mapping``: :func:`spill_mapping` of ``t``, when the caller drops many slices.
    """
    if t.device.type != "cpu" or t.ndim < 2 or t.numel() == 0 or not hasattr(os, "sysconf"):
        return False
    dim = dim % t.ndim
    row = t.stride(dim)
    expect = 1  # the other dimensions must tile one slice along dim densely
    for st, n in sorted((t.stride(d), t.shape[d]) for d in range(t.ndim) if d != dim and t.shape[d] > 1):
        if st != expect:
            return False
        expect *= n
    if expect != row:
        return False
    esize = t.element_size()
    start = t.data_ptr() + first * row * esize
    end = t.data_ptr() + last * row * esize
    mapping = mapping or spill_mapping(t)
    if mapping is None:
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    start = max(-(-start // page) * page, mapping[0])
    end = min(end // page * page, mapping[1])
    if end <= start:
        return False
    return _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0


_MADV_DONTNEED = 4


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
