"""Which confusions matter most: the largest off-diagonal cells of a confusion matrix."""

from __future__ import annotations

import numpy as np


def top_confusions(cm: np.ndarray, class_names: list[str], k: int = 3) -> list[dict]:
    """The ``k`` largest (true, predicted) confusions, largest first, as ``{pair, true,
    predicted, pixels, share}`` (share = of the true class's pixels); zero cells left out.
    ``pair`` is spelled ``"true:predicted"``, as ``evaluate_scene(pairs=...)`` takes it."""
    cm = np.asarray(cm)
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] == 0:
            break
        total = cm[i].sum()
        rows.append({"pair": f"{class_names[i]}:{class_names[j]}", "true": class_names[i],
                     "predicted": class_names[j], "pixels": int(off[i, j]),
                     "share": float(off[i, j] / total) if total else 0.0})
    return rows


def lookalike_windows(labels: np.ndarray, first: int, second: int, size: int,
                      step: int | None = None) -> dict[int, tuple[int, int] | None]:
    """For each of two classes, the ``size`` x ``size`` window (top-left ``(y, x)`` on a grid of
    ``step``) where that class covers the most pixels and the other none: what a crop-and-stitch
    model sees of a river and of a pond. None where no window holds the class without the other.

    Summed-area tables make every window O(1), so a whole label map is cheap.
    """
    lab = np.asarray(labels)
    step = step or max(1, size // 4)
    h, w = lab.shape
    if size > min(h, w):
        raise ValueError(f"window {size} px is larger than the {h} x {w} labels")

    def window_sums(mask: np.ndarray) -> np.ndarray:
        s = np.zeros((h + 1, w + 1), np.int64)
        s[1:, 1:] = mask.cumsum(0).cumsum(1)
        ys, xs = np.arange(0, h - size + 1, step), np.arange(0, w - size + 1, step)
        y0, x0 = ys[:, None], xs[None, :]
        return s[y0 + size, x0 + size] - s[y0, x0 + size] - s[y0 + size, x0] + s[y0, x0]

    sums = {c: window_sums(lab == c) for c in (first, second)}
    out: dict[int, tuple[int, int] | None] = {}
    for c, other in ((first, second), (second, first)):
        score = np.where(sums[other] == 0, sums[c], 0)
        if score.max() == 0:
            out[c] = None
            continue
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        out[c] = (int(i * step), int(j * step))
    return out
