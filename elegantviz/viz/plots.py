"""Matplotlib figures for reports and notebooks. Each returns the Figure; nothing is shown."""

from __future__ import annotations

import numpy as np


def _figure(**kw):
    # a bare Figure needs no GUI backend and never touches pyplot's global state
    from matplotlib.figure import Figure

    return Figure(**kw)


def confusion_matrix_figure(cm: np.ndarray, class_names: list[str], normalize: bool = True, title: str = ""):
    """Rows = ground truth, columns = prediction; row-normalised so each row shows where a class went."""
    k = len(class_names)
    fig = _figure(figsize=(2 + 0.55 * k, 1.6 + 0.5 * k), layout="constrained")
    ax = fig.add_subplot()
    data = cm.astype(np.float64)
    if normalize:
        rows = data.sum(1, keepdims=True)
        data = np.divide(data, rows, out=np.zeros_like(data), where=rows > 0)
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, f"{data[i, j]:.2f}" if normalize else f"{cm[i, j]:,d}", ha="center", va="center",
                        fontsize=7, color="white" if data[i, j] > 0.6 * data.max() else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row" if normalize else "pixels")
    ax.set_title(title or "confusion matrix")
    return fig


def iou_bars_figure(per_class: dict, title: str = ""):
    names = [n for n, v in per_class.items() if v["iou"] is not None]
    values = [100 * per_class[n]["iou"] for n in names]
    fig = _figure(figsize=(2 + 0.45 * len(names), 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), values, color="#3b75af")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "per-class IoU")
    return fig
