"""Matplotlib figures for reports and notebooks. Each returns the Figure; nothing is shown.

Figures are bare ``matplotlib.figure.Figure`` objects, never pyplot's: no GUI backend and no
global state, so reports and notebook widgets can draw them from any thread.
"""

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


# --- pictures of scenes -----------------------------------------------------------------------
HARD_RGB = (1.0, 0.0, 1.0)


def colorize(labels: np.ndarray, table) -> np.ndarray:
    """(h, w, 3) uint8 colours of class ids from a ClassTable's palette (ignore = black)."""
    return table.palette()[np.asarray(labels, np.uint8)]


def overlay(rgb: np.ndarray, mask: np.ndarray, colour=HARD_RGB, alpha: float = 0.6) -> np.ndarray:
    """``rgb`` (float in [0, 1] or uint8) with ``mask`` painted in ``colour`` at ``alpha``."""
    base = np.asarray(rgb, np.float32) / (255.0 if np.asarray(rgb).dtype == np.uint8 else 1.0)
    out = base.copy()
    out[mask] = (1 - alpha) * base[mask] + alpha * np.asarray(colour, np.float32)
    return out


def _panel(ax, image, title: str = "", extent=None, **kw):
    im = ax.imshow(image, extent=extent, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def panels_figure(panels: dict, ncols: int | None = None, title: str = "", size: float = 3.0, colorbar: bool = False):
    """Images side by side, one per entry: ``{title: image}`` or ``{title: (image, imshow kwargs)}``.

    Arrays of different resolutions covering the same ground share the extent of the first, so
    a feature-resolution map lines up with the image.
    """
    items = [(k, v if isinstance(v, tuple) else (v, {})) for k, v in panels.items()]
    ncols = ncols or len(items)
    nrows = -(-len(items) // ncols)
    first = np.asarray(items[0][1][0])
    extent = (0, first.shape[1], first.shape[0], 0)
    fig = _figure(figsize=(size * ncols, size * nrows * first.shape[0] / first.shape[1] + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(items):]:
        ax.set_axis_off()
    for ax, (name, (image, kw)) in zip(axes.ravel(), items):
        im = _panel(ax, image, name, extent=extent, **kw)
        if colorbar and np.asarray(image).ndim == 2:
            fig.colorbar(im, ax=ax, shrink=0.7)
    if title:
        fig.suptitle(title)
    return fig


# --- ECR: margins and the hard region ---------------------------------------------------------
def _margin_hist(ax, margin: np.ndarray, cut: float, wrong: np.ndarray | None, bins: int,
                 legend_size: float | None = None) -> None:
    """Margins (wrong pixels stacked apart when given) with the cut and the hard side shaded."""
    m = np.asarray(margin, np.float64).ravel()
    edges = np.histogram_bin_edges(m, bins=bins)
    if wrong is None:
        ax.hist(m, bins=edges, color="#3b75af")
    else:
        w = np.asarray(wrong, bool).ravel()
        ax.hist([m[~w], m[w]], bins=edges, stacked=True, color=["#3b75af", "#d62728"], label=["correct", "wrong"])
        ax.legend(loc="upper right", fontsize=legend_size)
    ax.axvline(cut, color="magenta", lw=2)
    ax.axvspan(edges[0], cut, color="magenta", alpha=0.12)


def margin_histogram_figure(margin: np.ndarray, cut: float, ratio: float, wrong: np.ndarray | None = None,
                            bins: int = 60, title: str = ""):
    """Histogram of margins with the hard-region cut; with ``wrong``, wrong pixels stacked apart
    (they pile up left of the cut: that is why ECR looks there)."""
    fig = _figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    _margin_hist(ax, margin, cut, wrong, bins)
    ax.text(cut, ax.get_ylim()[1] * 0.95, f"  hard: a = {100 * ratio:.0f} %", color="magenta", va="top")
    ax.set_xlabel("margin (top-1 minus top-2 auxiliary logit)")
    ax.set_ylabel("pixels")
    ax.set_title(title or "margins and the hard-region cut")
    return fig


def hard_region_figure(rgb: np.ndarray, margin: np.ndarray, hard: np.ndarray, cut: float, ratio: float,
                       wrong: np.ndarray | None = None, bins: int = 60, title: str = ""):
    """Where ECR looks at one ``a``: the margin histogram with the cut, the margin map, and
    the hard region over the image (maps at feature resolution line up with the image)."""
    fig = _figure(figsize=(13, 3.6), layout="constrained")
    ax_h, ax_m, ax_i = fig.subplots(1, 3, width_ratios=[1.4, 1, 1])
    _margin_hist(ax_h, margin, cut, wrong if np.shape(wrong) == np.shape(margin) else None, bins, legend_size=8)
    ax_h.set_xlabel("margin")
    ax_h.set_ylabel("pixels")
    ax_h.set_title(f"cut at margin {cut:.2f} (a = {100 * ratio:.0f} %)", fontsize=9)
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    im = _panel(ax_m, margin, "margin (low = unsure)", extent=extent, cmap="viridis")
    fig.colorbar(im, ax=ax_m, shrink=0.8)
    up = np.kron(np.asarray(hard, np.uint8), np.ones((-(-rgb.shape[0] // hard.shape[0]),
                                                       -(-rgb.shape[1] // hard.shape[1])), np.uint8))
    _panel(ax_i, overlay(rgb, up[: rgb.shape[0], : rgb.shape[1]].astype(bool)), "hard region (magenta)",
           extent=extent)
    if title:
        fig.suptitle(title)
    return fig


def errors_caught_figure(curve: dict, ratio: float | None = None, title: str = ""):
    """Recall and precision of wrong pixels in the hard region against ``a`` (from ``errors_caught``)."""
    fig = _figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    r = 100 * np.asarray(curve["ratio"])
    ax.plot(r, 100 * np.asarray(curve["recall"]), label="wrong pixels caught (recall)", color="#d62728")
    ax.plot(r, 100 * np.asarray(curve["precision"]), label="hard pixels that are wrong (precision)", color="#3b75af")
    ax.plot(r, r, ls=":", color="grey", label="a random cut")
    if ratio is not None:
        ax.axvline(100 * ratio, color="magenta")
    ax.set_xlabel("a: hard share of pixels (%)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title or "what the hard region catches")
    return fig


def attention_limits(attention: np.ndarray) -> dict:
    """imshow ``vmin``/``vmax`` of an attention map (see ``analysis.attention.display_range``)."""
    from elegantviz.analysis.attention import display_range

    lo, hi = display_range(attention)
    return {"vmin": lo, "vmax": hi}


def attention_figure(rgb: np.ndarray, attention: np.ndarray, point: tuple[float, float] | None = None,
                     box: tuple[int, int, int, int] | None = None, title: str = ""):
    """The image and, beside it, an attention map over the same ground (1 = the average pixel),
    with the query pixel or region marked on both."""
    fig = _figure(figsize=(8, 4 * rgb.shape[0] / rgb.shape[1] + 0.6), layout="constrained")
    axes = fig.subplots(1, 2)
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    _panel(axes[0], rgb, "image", extent=extent)
    im = _panel(axes[1], attention, "attention (x uniform)", extent=extent, cmap="inferno",
                **attention_limits(attention))
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    for ax in axes:
        if point is not None:
            ax.plot(point[1], point[0], marker="+", ms=14, mew=2, color="cyan")
        if box is not None:
            y0, x0, y1, x1 = box
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="cyan", lw=1.5)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
    if title:
        fig.suptitle(title)
    return fig


# --- BAE --------------------------------------------------------------------------------------
def loss_sweep_figure(ksizes, w_bds, values: np.ndarray, current: tuple[int, float] | None = None,
                      ylabel: str = "BAE loss", title: str = ""):
    """One line per Sobel kernel size: the loss of a fixed prediction as w_bd grows."""
    fig = _figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for k, row in zip(ksizes, np.asarray(values)):
        ax.plot(w_bds, row, marker="o", ms=3, label=f"ksize {k}")
    if current is not None:
        k, w = current
        if k in list(ksizes):
            ax.plot([w], [np.interp(w, w_bds, np.asarray(values)[list(ksizes).index(k)])], marker="o", ms=10,
                    mfc="none", mec="magenta", mew=2)
    ax.set_xlabel("w_bd (extra weight of boundary pixels)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title or "the same prediction under other BAE settings")
    return fig


# --- error analysis ---------------------------------------------------------------------------
GALLERY_COLUMNS = ("image", "ground truth", "prediction", "hard region", "region's attention")


def region_gallery_figure(rows: list[dict], table, scene_rgb: np.ndarray | None = None, title: str = ""):
    """One row per region (from ``analysis.gallery.region_panels``): image crop, gt, pred, hard
    region (region outlined), and the attention the region pays to the whole scene."""
    n = max(len(rows), 1)
    fig = _figure(figsize=(2.4 * len(GALLERY_COLUMNS), 2.5 * n + 0.4), layout="constrained")
    axes = fig.subplots(n, len(GALLERY_COLUMNS), squeeze=False)
    if not rows:
        for ax in axes.ravel():
            ax.set_axis_off()
        axes[0, 0].text(0, 0.5, "no regions", fontsize=12)
    for r, row in enumerate(rows):
        ax = axes[r]
        y0, x0, y1, x1 = row["box"]
        _panel(ax[0], row["image"], f"{row['pair']}  {row['area']:,d} px\ny {y0}..{y1}, x {x0}..{x1}")
        _panel(ax[1], colorize(row["gt"], table), GALLERY_COLUMNS[1])
        _panel(ax[2], colorize(row["pred"], table), GALLERY_COLUMNS[2])
        hard = row["hard"] if row["hard"] is not None else np.zeros_like(row["mask"])
        _panel(ax[3], overlay(row["image"], hard.astype(bool)), GALLERY_COLUMNS[3])
        for a in ax[:4]:
            a.contour(row["mask"], levels=[0.5], colors="red", linewidths=1)
        if row["attention"] is None:
            ax[4].set_axis_off()
            ax[4].text(0.5, 0.5, "no stored keys\n(predict holistically)", ha="center", va="center",
                       transform=ax[4].transAxes, fontsize=8)
        else:
            att = row["attention"]
            s = row["stride"]
            extent = (0, att.shape[1] * s, att.shape[0] * s, 0)
            _panel(ax[4], att, GALLERY_COLUMNS[4], extent=extent, cmap="inferno", **attention_limits(att))
            ax[4].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="cyan", lw=1)
    if title:
        fig.suptitle(title)
    return fig


def lookalikes_figure(rgb: np.ndarray, windows: dict[str, tuple[int, int] | None], size: int, title: str = ""):
    """Each window's crop (what a sliced model sees), then the whole scene with the windows outlined."""
    found = {name: w for name, w in windows.items() if w is not None}
    colours = ["red", "cyan", "yellow", "magenta"]
    fig = _figure(figsize=(3.0 * (len(found) + 1.6), 3.4), layout="constrained")
    axes = fig.subplots(1, len(found) + 1, width_ratios=[1] * len(found) + [1.6], squeeze=False)[0]
    for ax, (name, (y, x)), colour in zip(axes, found.items(), colours):
        _panel(ax, rgb[y: y + size, x: x + size], f"{name}? ({size} x {size} crop)")
        for side in ax.spines.values():
            side.set_edgecolor(colour)
            side.set_linewidth(3)
    _panel(axes[-1], rgb, "the whole scene")
    for (name, (y, x)), colour in zip(found.items(), colours):
        axes[-1].plot([x, x + size, x + size, x, x], [y, y, y + size, y + size, y], color=colour, lw=2)
        axes[-1].text(x, y - 4, name, color=colour, fontsize=9, weight="bold",
                      bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0, "pad": 1})
    if title:
        fig.suptitle(title)
    return fig


# --- memory -----------------------------------------------------------------------------------
def offload_figure(records: list[dict], title: str = ""):
    """Peak memory and time per step for each offload policy.

    ``records``: one dict per policy with ``policy``, ``seconds``, and either ``peak_live_bytes``
    (peak bytes of live tensors, :class:`elegantviz.offload.LiveTensorBytes`: what the step itself
    holds, at any scene size) or ``peak_rss_bytes`` and optionally ``start_rss_bytes`` (the
    process's memory, which earlier steps blur); ``spilled_disk_bytes`` and ``move_seconds`` (the
    MemoryMeter's StepStats fields) when present.
    """
    names = [r["policy"] for r in records]
    x = np.arange(len(records))
    mib = 1024.0**2
    live = all("peak_live_bytes" in r for r in records)
    step = np.array([(r["peak_live_bytes"] if live else r["peak_rss_bytes"] - r.get("start_rss_bytes", 0)) / mib
                     for r in records])
    spilled = np.array([r.get("spilled_disk_bytes", 0) / mib for r in records])
    secs = np.array([r["seconds"] for r in records])
    moving = np.array([r.get("move_seconds", 0.0) for r in records])
    fig = _figure(figsize=(9, 3.4), layout="constrained")
    ax_m, ax_t = fig.subplots(1, 2)
    ax_m.bar(x - 0.2, step, 0.4, label="tensors in RAM (peak)" if live else "RAM the step added (peak)",
             color="#3b75af")
    ax_m.bar(x + 0.2, spilled, 0.4, label="spilled to disk", color="#ff7f0e")
    ax_m.set_ylabel("MiB")
    ax_m.set_title("memory per step")
    ax_t.bar(x, secs - moving, color="#2ca02c", label="compute")
    ax_t.bar(x, moving, bottom=secs - moving, color="#ff7f0e", label="moving to/from disk")
    ax_t.set_ylabel("seconds")
    ax_t.set_title("time per step")
    for ax in (ax_m, ax_t):
        ax.set_xticks(x, names, rotation=20)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def training_curves_figure(curves: dict[str, tuple], ylabel: str = "training loss", title: str = ""):
    """One line per run: ``{name: (iterations, values)}``."""
    fig = _figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for name, (its, values) in curves.items():
        ax.plot(its, values, marker="o", ms=3, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title or ylabel)
    return fig
