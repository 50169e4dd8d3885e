"""A scene store as napari layer-data tuples: image, every labels/* and every maps/*.

Everything stays lazy: each layer is a list of dask arrays (one per pyramid level) and napari
fetches only the chunks on screen. Nothing here imports Qt; napari is imported only for the
label colormap, i.e. only when napari itself calls the reader.

Every layer's ``metadata['elegantviz']`` names its scene and part (``image``, ``labels/gt``,
``maps/margin``) so docks and the writer find their way back to the store. Bands, contrast
windows and the hard table come from the library (``Scene.band_indices``,
``Scene.display_windows``, ``io.schema``), so notebooks show what napari shows.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from elegantviz.analysis.attention import attention_levels, display_range, levels_display_range, query_vector
from elegantviz.classes import IGNORE_INDEX, ClassTable
from elegantviz.io.bands import NATURAL
from elegantviz.io.schema import (ATTENTION, BOUNDARY, ERROR, GT, HARD, HARD_NAMES, KEY, KEYS, LABELS, MAPS,
                                  MARGIN, PRED, part_path)
from elegantviz.io.store import Scene

from .palette import HARD_COLOUR, fallback_table, hard_table, label_colormap, label_features

# colormap and blending of the evidence maps prediction writes
MAP_STYLES: dict[str, tuple[str, str]] = {
    MARGIN: ("viridis", "translucent"),
    ATTENTION: ("inferno", "additive"),
    BOUNDARY: ("yellow", "additive"),
}
DEFAULT_MAP_STYLE = ("viridis", "translucent")
# maps with many channels are inputs for computations (maps/keys feeds the attention probe),
# not pictures; a channel slider would turn the 2D viewer into a stack browser
SKIP_MULTICHANNEL_MAPS = True
LABELS_OPACITY = 0.6
MERGE_BANDS_UP_TO = 4
# labels whose 0 means "nothing here" (not selected, correct): 0 is drawn transparent
OVERLAY_LABELS = (HARD, ERROR)
PROBE_PART = "probe/attention"  # the attention probe's layer: not a stored part
PROBE_NAME = "attention probe"


def meta(scene: Scene, part: str, **extra: Any) -> dict:
    return {KEY: {"scene": scene.url, "part": part, **extra}}


def as_layer_data(levels: list[da.Array], kwargs: dict, layer_type: str) -> tuple:
    """A layer-data tuple; a pyramid of one level (a scene smaller than a tile) as a plain array,
    since napari 0.9 fails on a one-level multiscale Labels layer."""
    if len(levels) == 1:
        return levels[0], {**kwargs, "multiscale": False}, layer_type
    return levels, kwargs, layer_type


# --- image -----------------------------------------------------------------------------------
def _stretch_to_uint8(level: da.Array, windows: list[tuple[float, float]], nodata: float | None) -> da.Array:
    """Lazy per-band linear stretch to 0..255 (for uint16 and float data); nodata and NaN -> 0."""
    lo = np.array([w[0] for w in windows], np.float32)[:, None, None]
    span = np.array([max(w[1] - w[0], 1e-12) for w in windows], np.float32)[:, None, None]
    x = level.astype(np.float32)
    out = (x - lo) / span * 255.0
    bad = da.isnan(x)
    if nodata is not None and not math.isnan(nodata):
        bad = bad | (x == np.float32(nodata))
    out = da.where(bad, 0.0, out)
    return da.clip(out, 0, 255).astype(np.uint8)


def image_levels(scene: Scene) -> list[da.Array]:
    """The pyramid as napari reads it best: all bands of a tile in one task (``tile_levels``;
    pans measured twice as fast, 26 vs 50 ms, on a 4-band store), unless reading every band to
    show three costs more."""
    return scene.levels if len(scene.bands) > MERGE_BANDS_UP_TO else scene.tile_levels()


def _band_taker(picks: list[int]):
    """Consecutive bands as a slice (a cheaper dask graph than fancy indexing), others by list."""
    if picks == list(range(picks[0], picks[0] + len(picks))):
        return lambda lvl: lvl[picks[0] : picks[-1] + 1]
    return lambda lvl: lvl[picks]


def image_layer(scene: Scene, composite: str = NATURAL) -> tuple:
    """The image pyramid as one RGB layer (three bands) or one grey layer (one band)."""
    picks = scene.band_indices(composite)
    windows = [scene.display_windows()[i] for i in picks]
    names = [scene.bands[i] for i in picks]
    kwargs: dict[str, Any] = {
        "name": "image" if composite == NATURAL else "image (NIR false colour)",
        "multiscale": True,  # unless one level: see as_layer_data
        "metadata": meta(scene, "image", bands=names, composite=composite),
    }
    if len(picks) == 1:
        levels = [lvl[picks[0]] for lvl in scene.levels]  # one band: its own chunks are the right ones
        lo, hi = windows[0]
        kwargs.update(rgb=False, colormap="gray", contrast_limits=[lo, max(hi, lo + 1e-6)])
        return as_layer_data(levels, kwargs, "image")
    take = _band_taker(picks)
    if scene.dtype == np.uint8:
        levels = [take(lvl).transpose(1, 2, 0) for lvl in image_levels(scene)]
        lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
        limits = [lo, max(hi, lo + 1)]
    else:
        levels = [_stretch_to_uint8(take(lvl), windows, scene.nodata).transpose(1, 2, 0) for lvl in image_levels(scene)]
        limits = [0, 255]
    kwargs.update(rgb=True, contrast_limits=limits)
    return as_layer_data(levels, kwargs, "image")


# --- labels ----------------------------------------------------------------------------------
def table_for_labels(scene: Scene, name: str, levels: list[da.Array]) -> ClassTable:
    """The labels' own class table, the scene's, or numbered classes for a bare mask."""
    table = scene.label_classes(name) or (scene.classes if name in (GT, PRED) else None)
    if table is not None:
        return table
    top = levels[-1]  # one small chunk: the coarsest level says how many values there are
    present = np.asarray(top.compute())
    present = present[present != IGNORE_INDEX]
    return fallback_table(name, int(present.max()) + 1 if present.size else 2)


def _stored_hard_names(scene: Scene) -> tuple[str, str]:
    """The two names stored with the hard region; a bare 0/1 mask gets the schema's."""
    table = scene.label_classes(HARD)
    return (table.names[0], table.names[1]) if table is not None and table.num_classes == 2 else HARD_NAMES


def labels_layer(scene: Scene, name: str, visible: bool = True) -> tuple:
    levels = scene.label_levels(name)
    table = hard_table(names=_stored_hard_names(scene)) if name == HARD else table_for_labels(scene, name, levels)
    extra = {"colour": HARD_COLOUR} if name == HARD else {}
    kwargs = {
        "name": name,
        "multiscale": True,  # unless one level: see as_layer_data
        "colormap": label_colormap(table, hidden=[0] if name in OVERLAY_LABELS else []),
        "features": label_features(table),
        "opacity": LABELS_OPACITY,
        "visible": visible,
        "metadata": meta(scene, part_path(LABELS, name), classes=table.to_dict(), **extra),
    }
    return as_layer_data(levels, kwargs, "labels")


# --- maps ------------------------------------------------------------------------------------
def map_contrast(scene: Scene, name: str, levels: list[da.Array]) -> list[float]:
    """The map's recorded range, else the range of its coarsest level (one small chunk)."""
    attrs = scene.map_attrs(name)
    for key in ("contrast_limits", "range"):
        if key in attrs and len(attrs[key]) == 2:
            lo, hi = (float(v) for v in attrs[key])
            return [lo, max(hi, lo + 1e-6)]
    # attention: percentiles (a few hot pixels would leave the rest black); other maps: min to max
    return list(display_range(levels[-1].compute(), 99.5 if attrs.get("kind") == ATTENTION else 100))


def map_stride(scene: Scene, name: str, level0: da.Array) -> float:
    """Image pixels per map pixel: the recorded stride, unless the map is stored at full size.

    Prediction records the model's stride on every map, also on margin and attention, which
    it writes upsampled to the image's size; scaling those would blow them up stride times.
    """
    if tuple(level0.shape[-2:]) == tuple(scene.shape[1:]):
        return 1.0
    return float(scene.map_attrs(name).get("stride", 1))


def map_layer(scene: Scene, name: str, visible: bool = False) -> tuple | None:
    levels = scene.map_levels(name)
    if levels[0].ndim == 3:
        if levels[0].shape[0] != 1 and SKIP_MULTICHANNEL_MAPS:
            return None
        levels = [lvl[0] for lvl in levels]
    stride = map_stride(scene, name, levels[0])
    colormap, blending = MAP_STYLES.get(name, DEFAULT_MAP_STYLE)
    kwargs = {
        "name": name,
        "multiscale": True,  # unless one level: see as_layer_data
        "colormap": colormap,
        "blending": blending,
        "contrast_limits": map_contrast(scene, name, levels),
        "scale": (stride, stride),
        "translate": ((stride - 1) / 2, (stride - 1) / 2),
        "visible": visible,
        "metadata": meta(scene, part_path(MAPS, name), stride=stride),
    }
    return as_layer_data(levels, kwargs, "image")


def part_layer(scene: Scene, part: str, visible: bool = False) -> tuple | None:
    """The layer of one stored part (``labels/pred``, ``maps/margin``), None if it is not shown."""
    kind, _, name = part.partition("/")
    if kind == LABELS:
        return labels_layer(scene, name, visible=visible)
    if kind == MAPS:
        return map_layer(scene, name, visible=visible)
    return None


# --- the whole scene -------------------------------------------------------------------------
def scene_layers(scene: Scene, composite: str = NATURAL) -> list[tuple]:
    """Image, labels (gt shown, the rest hidden until asked for) and maps (hidden), bottom to top.

    Hidden layers cost nothing: napari slices only visible layers.
    """
    out = [image_layer(scene, composite)]
    shown = GT if GT in scene.labels else (scene.labels[0] if scene.labels else None)
    for name in scene.labels:
        out.append(labels_layer(scene, name, visible=name == shown))
    for name in scene.maps:
        layer = map_layer(scene, name)
        if layer is not None:
            out.append(layer)
    return out


# --- the attention probe ---------------------------------------------------------------------
def probe_layer(scene: Scene, y: int, x: int) -> tuple:
    """Layer data of the attention pixel (y, x) pays to every pixel (relative to uniform: 1 =
    average), a pyramid over the stored keys' levels. Reads one query and the level used for the
    colour range: call it off the GUI thread."""
    stride = float(scene.map_attrs(KEYS).get("stride", 1))
    levels = attention_levels(scene, query_vector(scene, y, x))
    kwargs = {
        "name": PROBE_NAME,
        "multiscale": len(levels) > 1,
        "colormap": "inferno",
        "blending": "translucent",
        "opacity": 0.85,
        "contrast_limits": list(levels_display_range(levels)),
        # a feature pixel covers stride x stride image pixels; napari puts data pixel centres
        # at scale * i + translate, so translate (stride - 1) / 2 centres it on that block
        "scale": (stride, stride),
        "translate": ((stride - 1) / 2, (stride - 1) / 2),
        "metadata": meta(scene, PROBE_PART, pixel=[int(y), int(x)], stride=stride),
    }
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"
