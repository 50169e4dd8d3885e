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
