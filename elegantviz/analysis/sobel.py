"""Sobel boundaries of label images of any size, block by block with a halo.

``sobel_map`` is the magnitude BAE weighs its loss with (elegantviz.losses.label_sobel);
``boundary_levels`` is the 0/1 class boundary of every level of a labels pyramid, lazily, as
the viewer draws it.
"""

from __future__ import annotations

import dask.array as da
import numpy as np


def _sobel_block(block: np.ndarray, ksize: int) -> np.ndarray:
    import torch

    from elegantviz.losses import label_sobel

    t = torch.from_numpy(block.astype(np.int64))
    return label_sobel(t, ksize, ignore_index=None).numpy().astype(np.float32)


def sobel_map(labels: da.Array, ksize: int = 5) -> da.Array:
    """Sobel magnitude of a label map, block by block with a halo (exactly as on the whole map)."""
    depth = ksize // 2
    # no padding at the scene edges: the Sobel pads those itself, as on the whole map
    return labels.map_overlap(_sobel_block, depth=depth, boundary="none", dtype=np.float32, ksize=ksize)


def sobel_edges(block: np.ndarray) -> np.ndarray:
    """uint8 0/1: where the 3x3 Sobel response of a class-id block is non-zero, i.e. where the
    class changes within a pixel's neighbourhood (edges padded by replication)."""
    a = np.pad(block.astype(np.int16), 1, mode="edge")
    gx = (a[:-2, 2:] + 2 * a[1:-1, 2:] + a[2:, 2:]) - (a[:-2, :-2] + 2 * a[1:-1, :-2] + a[2:, :-2])
    gy = (a[2:, :-2] + 2 * a[2:, 1:-1] + a[2:, 2:]) - (a[:-2, :-2] + 2 * a[:-2, 1:-1] + a[:-2, 2:])
    return ((gx != 0) | (gy != 0)).astype(np.uint8)


def boundary_levels(levels: list[da.Array]) -> list[da.Array]:
    """Lazy class boundaries of every level of a labels pyramid: each level gets its own, so a
    line stays one or two screen pixels wide at every zoom. Chunks overlap by one pixel
    (trimmed after), so seams are exact."""
    return [lvl.map_overlap(sobel_edges, depth=1, boundary="nearest", dtype=np.uint8) for lvl in levels]
