"""What a region gallery shows: crops of one error region from every layer of a scene store.

A region is one entry of ``pair_regions`` / an evaluation report (``pair``, ``bbox``, ``area``),
the same list the napari error navigator shows. Its panels are read lazily from the store, a
window around the bounding box, plus the attention the region's own pixels pay to the whole
scene (from the stored keys and queries: holistic context is the point, so not cropped).
"""

from __future__ import annotations

import numpy as np

from elegantviz.io.bands import NATURAL
from elegantviz.io.schema import GT, HARD, KEYS, PRED, QUERIES
from elegantviz.io.store import Scene


def display_rgb(image: np.ndarray, bands: list[int], windows: list[tuple[float, float]] | None = None) -> np.ndarray:
    """(h, w, 3) float in [0, 1] from a (c, h, w) image, stretched by ``windows`` (or min/max)."""
    out = np.empty(image.shape[1:] + (3,), np.float32)
    for k, b in enumerate(bands):
        band = np.asarray(image[b], np.float32)
        lo, hi = windows[b] if windows else (float(np.nanmin(band)), float(np.nanmax(band)))
        out[..., k] = (band - lo) / max(hi - lo, 1e-6)
    return np.clip(np.nan_to_num(out), 0.0, 1.0)


def scene_rgb(scene: Scene, level: int = 0, window: tuple[slice, slice] | None = None,
              composite: str = NATURAL) -> np.ndarray:
    """The scene (or a window of it) at a pyramid level as display RGB, with the bands and
    contrast windows the napari plugin shows (a one-band scene as grey)."""
    img = scene.image(level)
    if window is not None:
        img = img[(slice(None), *window)]
    bands = scene.band_indices(composite)
    return display_rgb(np.asarray(img.compute()), bands * 3 if len(bands) == 1 else bands, scene.display_windows())


def crop_box(bbox, shape: tuple[int, int], pad: int = 16, min_size: int = 48) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1): the bbox grown by ``pad`` and to at least ``min_size``, inside the image."""
    out = []
    for lo, hi, n in ((bbox[0], bbox[2], shape[0]), (bbox[1], bbox[3], shape[1])):
        lo, hi = lo - pad, hi + pad
        grow = max(0, min(min_size, n) - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        shift = max(0, -lo) - max(0, hi - n)
        out.append((max(0, lo + shift), min(n, hi + shift)))
    (y0, y1), (x0, x1) = out
    return y0, x0, y1, x1


def region_mask(g: np.ndarray, p: np.ndarray, pair: str, table) -> np.ndarray:
    """Pixels of confusion ``pair`` ("true->predicted") in crops of gt ``g`` and prediction ``p``."""
    true_name, pred_name = pair.split("->")
    return (g == table.id_of(true_name)) & (p == table.id_of(pred_name))


def feature_mask(mask: np.ndarray, origin: tuple[int, int], stride: int, grid: tuple[int, int]) -> np.ndarray:
    """A level-0 mask placed at ``origin``, as a (h, w) mask on the feature grid (any pixel counts)."""
    out = np.zeros(grid, bool)
    ys, xs = np.nonzero(mask)
    out[np.minimum((ys + origin[0]) // stride, grid[0] - 1), np.minimum((xs + origin[1]) // stride, grid[1] - 1)] = True
    return out


def region_panels(scene: Scene, region: dict, pred: str = PRED, gt: str = GT, pad: int = 16,
                  min_size: int = 48) -> dict:
    """Everything one gallery row shows: crops of image, gt, pred, hard and the region mask,
    the region's attention over the whole scene (feature resolution; None without keys), and
    where the crop lies."""
    from elegantviz.analysis.attention import region_attention

    h, w = scene.shape[1:]
    box = crop_box(region["bbox"], (h, w), pad, min_size)
    y0, x0, y1, x1 = box
    win = (slice(y0, y1), slice(x0, x1))
    g, p = np.asarray(scene.label(gt)[win]), np.asarray(scene.label(pred)[win])  # each crop read once
    mask = region_mask(g, p, region["pair"], scene.label_classes(gt) or scene.classes)
    panels = {
        "pair": region["pair"], "area": int(region["area"]), "bbox": tuple(region["bbox"]), "box": box,
        "image": scene_rgb(scene, 0, win),
        "gt": g,
        "pred": p,
        "hard": np.asarray(scene.label(HARD)[win]) if HARD in scene.labels else None,
        "mask": mask,
        "attention": None,
        "stride": None,
    }
    if {KEYS, QUERIES} <= set(scene.maps) and mask.any():
        stride = int(scene.map_attrs(KEYS).get("stride", 1))
        grid = tuple(scene.map(KEYS).shape[1:])
        panels["attention"] = region_attention(scene, feature_mask(mask, (y0, x0), stride, grid))
        panels["stride"] = stride
    return panels
