"""Pixel share of every class, in the scene and in the current view.

The scene share is counted on the finest pyramid level with at most ``SCENE_COUNT_PIXELS``
pixels (exact for scenes up to 4096^2, mode-pooled and so very close above), chunk by chunk so
a worker can report progress and stop when cancelled. The view share counts the labels napari
is showing: the visible window of the level on screen.
"""

from __future__ import annotations

from typing import Iterator

import dask.array as da
import numpy as np

SCENE_COUNT_PIXELS = 4096 * 4096


def counting_level(levels: list[da.Array]) -> int:
    for k, lvl in enumerate(levels):
        if lvl.shape[-2] * lvl.shape[-1] <= SCENE_COUNT_PIXELS:
            return k
    return len(levels) - 1


def count_blocks(level: da.Array) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (blocks done, blocks total, running counts[256]) one chunk at a time."""
    counts = np.zeros(256, np.int64)
    blocks = list(np.ndindex(*level.numblocks))
    for k, idx in enumerate(blocks, 1):
        block = np.asarray(level.blocks[idx].compute(scheduler="sync"))
        counts += np.bincount(block.ravel(), minlength=256)[:256]
        yield k, len(blocks), counts.copy()


def view_window(corner_pixels: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """napari's ``corner_pixels`` (data-level indices, inclusive) as clipped slices."""
    (y0, x0), (y1, x1) = np.asarray(corner_pixels, np.int64)[:, -2:]
    y0, x0 = max(int(y0), 0), max(int(x0), 0)
    y1, x1 = min(int(y1) + 1, shape[0]), min(int(x1) + 1, shape[1])
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))


def count_window(level: da.Array, window: tuple[slice, slice]) -> np.ndarray:
    block = np.asarray(level[window].compute(scheduler="threads"))
    return np.bincount(block.ravel(), minlength=256)[:256].astype(np.int64)


def shares(counts: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Fractions of labelled pixels (ignore excluded), zeros when nothing is labelled."""
    c = counts.astype(np.float64).copy()
    c[ignore] = 0
    total = c.sum()
    return c / total if total else c
