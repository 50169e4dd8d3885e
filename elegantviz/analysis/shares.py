"""Pixel share of every class of a labels pyramid, in the whole scene and in a window of it.

The scene share is counted on the finest pyramid level with at most ``SCENE_COUNT_PIXELS``
pixels (exact for scenes up to 4096^2, mode-pooled and so very close above), chunk by chunk so
a caller can report progress and stop early. A window's share (what a viewer shows) is counted
on the finest level where that window has at most ``VIEW_COUNT_PIXELS`` pixels.
"""

from __future__ import annotations

from typing import Iterator

import dask.array as da
import numpy as np

SCENE_COUNT_PIXELS = 4096 * 4096
VIEW_COUNT_PIXELS = 2048 * 2048


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


def view_window(levels: list, box: np.ndarray) -> tuple[int, tuple[slice, slice]]:
    """The finest level where the window ``box`` ([[y0, x0], [y1, x1]] in level-0 pixels, may
    reach outside the scene) has at most ``VIEW_COUNT_PIXELS`` pixels, and the window there."""
    h0, w0 = levels[0].shape[-2:]
    for k, lvl in enumerate(levels):
        h, w = lvl.shape[-2:]
        fy, fx = h0 / h, w0 / w
        y0, y1 = int(np.floor(max(box[0, 0] + 0.5, 0) / fy)), int(np.ceil(min(box[1, 0] + 0.5, h0) / fy))
        x0, x1 = int(np.floor(max(box[0, 1] + 0.5, 0) / fx)), int(np.ceil(min(box[1, 1] + 0.5, w0) / fx))
        y1, x1 = max(min(y1, h), y0), max(min(x1, w), x0)
        if (y1 - y0) * (x1 - x0) <= VIEW_COUNT_PIXELS or k == len(levels) - 1:
            return k, (slice(y0, y1), slice(x0, x1))
    raise AssertionError("unreachable")


def count_window(level: da.Array, window: tuple[slice, slice]) -> np.ndarray:
    block = np.asarray(level[window].compute(scheduler="threads"))
    return np.bincount(block.ravel(), minlength=256)[:256].astype(np.int64)


def shares(counts: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Fractions of labelled pixels (ignore excluded), zeros when nothing is labelled."""
    c = counts.astype(np.float64).copy()
    c[ignore] = 0
    total = c.sum()
    return c / total if total else c
