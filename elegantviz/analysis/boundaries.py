"""Class boundaries and the boundary F-score, block by block with a halo.

The F-score follows Csurka et al. (BMVC 2013): a predicted boundary pixel is correct when a
ground-truth boundary pixel lies within ``tolerance`` pixels (and vice versa for recall).
Boundaries here are the thin, one-sided ones (a pixel whose right or lower neighbour has
another class); the BAE loss's Sobel map is wider on purpose and lives in elegantviz.losses.
"""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
from scipy import ndimage

from elegantviz.io.blocks import run_threaded


def boundary_mask(labels: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Pixels whose right or lower neighbour has another class (ignore never makes a boundary)."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, bool)
    for axis in (0, 1):
        a = lab[:-1] if axis == 0 else lab[:, :-1]
        b = lab[1:] if axis == 0 else lab[:, 1:]
        edge = (a != b) & (a != ignore_index) & (b != ignore_index)
        if axis == 0:
            out[:-1] |= edge
        else:
            out[:, :-1] |= edge
    return out


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def boundary_counts(gt: np.ndarray, pred: np.ndarray, tolerance: int, inner: tuple[slice, slice],
                    ignore_index: int = 255) -> np.ndarray:
    """[matched pred, all pred, matched gt, all gt] boundary pixels inside ``inner``."""
    pred = np.where(gt == ignore_index, ignore_index, pred)
    bg, bp = boundary_mask(gt, ignore_index), boundary_mask(pred, ignore_index)
    near_g = ndimage.binary_dilation(bg, _disk(tolerance)) if tolerance else bg
    near_p = ndimage.binary_dilation(bp, _disk(tolerance)) if tolerance else bp
    bg, bp, near_g, near_p = (m[inner] for m in (bg, bp, near_g, near_p))
    return np.array([(bp & near_g).sum(), bp.sum(), (bg & near_p).sum(), bg.sum()], np.int64)


def fscore_from_counts(c: np.ndarray) -> dict:
    precision = c[0] / c[1] if c[1] else float("nan")
    recall = c[2] / c[3] if c[3] else float("nan")
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "fscore": float(f)}


def boundary_fscore(gt: da.Array, pred: da.Array, tolerance: int = 2, ignore_index: int = 255,
                    progress: bool = True) -> dict:
    """Boundary precision, recall and F-score over a whole scene, one haloed block at a time."""
    pred = pred.rechunk(gt.chunks)
    h, w = gt.shape
    halo = tolerance + 1
    ys = np.cumsum((0,) + gt.chunks[0])
    xs = np.cumsum((0,) + gt.chunks[1])

    def block(idx):
        i, j = idx
        y0, y1, x0, x1 = ys[i], ys[i + 1], xs[j], xs[j + 1]
        oy0, ox0 = max(0, y0 - halo), max(0, x0 - halo)
        oy1, ox1 = min(h, y1 + halo), min(w, x1 + halo)
        g = np.asarray(gt[oy0:oy1, ox0:ox1].compute(scheduler="sync"))
        p = np.asarray(pred[oy0:oy1, ox0:ox1].compute(scheduler="sync"))
        inner = (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0))
        return boundary_counts(g, p, tolerance, inner, ignore_index)

    index = list(itertools.product(range(len(gt.chunks[0])), range(len(gt.chunks[1]))))
    counts = np.sum(run_threaded(index, block, "boundary F-score", progress), axis=0)
    return {**fscore_from_counts(counts), "tolerance_px": tolerance}
