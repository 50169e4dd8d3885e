"""Segmentation metrics from a confusion matrix accumulated block by block.

Conventions differ between benchmarks and change the headline number, so they are named:
``all`` (mean IoU over every class that occurs in gt or prediction), ``deepglobe`` (mean over
classes 1..6, leaving out "unknown"), ``inria`` (IoU of the building class).
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from elegantviz.errors import InputError
from elegantviz.io.blocks import map_blocks_collect

CONVENTIONS = ("all", "deepglobe", "inria")


def confusion_matrix(gt: da.Array, pred: da.Array, num_classes: int, ignore_index: int = 255,
                     progress: bool = True) -> np.ndarray:
    """(K, K) counts, rows = ground truth, columns = prediction; ignore pixels left out.

    Predictions outside 0..K-1 are counted in an extra last column so they are not lost.
    """
    k = num_classes
    pred = pred.rechunk(gt.chunks)

    def block(g, p):
        g = g.ravel().astype(np.int64)
        p = p.ravel().astype(np.int64)
        keep = (g != ignore_index) & (g < k)
        p = np.where((p >= 0) & (p < k), p, k)
        return np.bincount(g[keep] * (k + 1) + p[keep], minlength=k * (k + 1)).reshape(k, k + 1)

    parts = map_blocks_collect([gt, pred], block, "confusion matrix", progress)
    full = np.sum(parts, axis=0)
    if full[:, k].any():
        raise ValueError(f"{int(full[:, k].sum())} predicted pixels have class ids outside 0..{k - 1}")
    return full[:, :k]


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both gt and prediction."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def check_convention(convention: str, class_names: list[str] | None) -> None:
    """A named convention scores its own dataset's classes: Inria's building IoU needs a
    'building' class, DeepGlobe's mean over classes 1..6 needs DeepGlobe's table. (Inria on a
    riverworld scene used to report forest IoU as the score.)"""
    from elegantviz.classes import get_class_table

    names = list(class_names or [])
    ok = "building" in names if convention == "inria" else names == get_class_table("deepglobe").names
    if not ok:
        raise InputError(f"--convention {convention} scores {convention} classes; these labels have "
                         f"{', '.join(names[:8]) or 'no class names'}{' ...' if len(names) > 8 else ''} "
                         "(use --convention all)")


def mean_iou(iou: np.ndarray, convention: str = "all", class_names: list[str] | None = None) -> float:
    """The headline mIoU under a named convention."""
    if convention == "all":
        return float(np.nanmean(iou))
    if convention in ("deepglobe", "inria") and class_names is not None:
        check_convention(convention, class_names)
    if convention == "deepglobe":
        return float(np.nanmean(iou[1:7]))
    if convention == "inria":
        return float(iou[class_names.index("building") if class_names else 1])
    raise ValueError(f"unknown convention {convention!r}; choose from {CONVENTIONS}")


def summarize(cm: np.ndarray, class_names: list[str], convention: str = "all") -> dict:
    iou, f1 = per_class_iou(cm), per_class_f1(cm)
    total = cm.sum()
    return {
        "convention": convention,
        "miou": mean_iou(iou, convention, class_names),
        "overall_accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "mean_f1": float(np.nanmean(f1)),
        "per_class": {
            name: {"iou": _num(iou[i]), "f1": _num(f1[i]), "gt_pixels": int(cm[i].sum()), "pred_pixels": int(cm[:, i].sum())}
            for i, name in enumerate(class_names)
        },
        "pixels": int(total),
    }


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)
