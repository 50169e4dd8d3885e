"""2x pooling for pyramids: area mean for images (nodata-aware), mode for labels.

Mode pooling breaks ties in favour of the class that is rarer in the block being pooled, so a
1-pixel-wide river (a 2-against-2 tie in every 2x2 window it crosses) survives where nearest
neighbour or a smallest-id tie rule would drop it.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np


def level_shapes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Shapes of every level: halve (rounding up) until the level fits in one tile."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _pad_even(a: np.ndarray, value) -> np.ndarray:
    ph, pw = a.shape[-2] % 2, a.shape[-1] % 2
    if not (ph or pw):
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, constant_values=value)


def _windows(a: np.ndarray) -> np.ndarray:
    """(..., 2h, 2w) -> (..., h, w, 4): the four pixels of each 2x2 window last."""
    *lead, h2, w2 = a.shape
    a = a.reshape(*lead, h2 // 2, 2, w2 // 2, 2)
    a = np.moveaxis(a, -3, -2)
    return a.reshape(*lead, h2 // 2, w2 // 2, 4)


def mean_pool(block: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Area mean over 2x2 windows of (..., h, w), ignoring nodata and NaN; odd edges allowed.

    A window with no valid pixel stays nodata (or NaN when there is none). Integer data is
    rounded (half up) back to its dtype.
    """
    h, w = block.shape[-2:]
    if nodata is None and np.issubdtype(block.dtype, np.integer) and not (h % 2 or w % 2):
        # the common case (whole blocks of imagery without nodata): integer sums, no masks
        sums = block.reshape(*block.shape[:-2], h // 2, 2, w // 2, 2).sum(axis=(-3, -1), dtype=np.int64)
        return ((sums + 2) // 4).astype(block.dtype)
    work = _pad_even(block.astype(np.float64), np.nan)
    valid = ~np.isnan(work)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= work != nodata
    win, ok = _windows(np.where(valid, work, 0.0)), _windows(valid)
    count = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = win.sum(-1) / count
    empty = count == 0
    fill = np.nan if nodata is None else nodata
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        mean = np.clip(np.floor(np.where(empty, 0, mean) + 0.5), info.min, info.max)
        out = mean.astype(block.dtype)
        if nodata is not None:
            out[empty] = nodata
        return out
    mean[empty] = fill
    return mean.astype(block.dtype)


def mode_pool(block: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Majority over 2x2 windows of (h, w) labels; ``ignore`` only wins an all-ignore window.

    Ties go to the class with fewer pixels in this block (thin structures are the rare ones);
    the pyramid pools blocks of 2 x 2 tiles, so the result depends on the tile size only there.
    """
    work = _pad_even(block, ignore)
    win = _windows(work).astype(np.int64)  # (h, w, 4)
    freq = np.bincount(work.ravel(), minlength=256).astype(np.int64)
    n = work.size + 1
    votes = (win[..., :, None] == win[..., None, :]).sum(-1)  # how often each candidate occurs
    score = votes * n + (n - 1 - freq[win])
    score[win == ignore] = -1
    pick = np.take_along_axis(win, score.argmax(-1)[..., None], -1)[..., 0]
    return pick.astype(block.dtype)


def downsample(arr: da.Array, kind: str, nodata: float | None = None, ignore: int = 255) -> da.Array:
    """One pyramid step of a lazy (..., y, x) array; output chunks are half the input's."""
    fn = {"mean": lambda b: mean_pool(b, nodata), "mode": lambda b: mode_pool(b, ignore)}[kind]
    # Every input chunk but the last in each axis has an even size, so halving chunk by chunk
    # gives exactly ceil(n / 2) in total.
    chunks = arr.chunks[:-2] + tuple(tuple(math.ceil(c / 2) for c in cs) for cs in arr.chunks[-2:])
    return arr.map_blocks(fn, chunks=chunks, dtype=arr.dtype)


def upsample_nearest(a, stride: int, shape: tuple[int, int], tile: int) -> da.Array:
    """A feature-resolution map at image resolution, lazily (each feature pixel covers stride^2 px)."""
    lazy = da.from_array(a, chunks=max(1, tile // stride))
    up = lazy.repeat(stride, axis=-2).repeat(stride, axis=-1)
    return up[..., : shape[0], : shape[1]]
