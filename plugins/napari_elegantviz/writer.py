"""The npe2 writer: a Labels layer saved as an NGFF labels group with colours and class names.

Into an existing scene store it becomes ``labels/<layer name>``: a part of that name is replaced
at once (written beside it and swapped in, under the store's writer lock), except the ground
truth, which is never replaced by a save (a layer painted on by accident would take its place);
a new path becomes a scene store whose image is one blank band (zeros compress to nothing) so
the labels have the parent image NGFF requires.
napari-ome-zarr has no writer; this one's output opens there too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from elegantviz.classes import IGNORE_INDEX, ClassTable
from elegantviz.errors import InputError
from elegantviz.io.lock import writer_lock
from elegantviz.io.schema import GT, KEY

from .palette import table_from_layer

BLANK_BAND = "blank"
FULL_SCAN_PIXELS = 64_000_000


def part_name(layer_name: str) -> str:
    """A store-safe labels name from a layer name ("pred [1]" -> "pred_1")."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer_name).strip("_.") or "labels"
    return name


def _as_uint8(data: Any) -> da.Array:
    level0 = data[0] if isinstance(data, (list, tuple)) else data
    arr = level0 if isinstance(level0, da.Array) else da.asarray(np.asarray(level0))
    if arr.ndim != 2:
        raise InputError(f"only 2D labels can be saved to a scene store, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, got {arr.dtype}")
    lo, hi = da.compute(arr.min(), arr.max())
    if lo < 0 or hi > IGNORE_INDEX:
        raise InputError(f"labels must fit in uint8 class ids 0..255, got values {lo}..{hi}")
    return arr.astype(np.uint8)


def layer_table(attributes: dict, arr: da.Array, name: str) -> ClassTable:
    """The class table the layer came with, else one rebuilt from its features and colours."""
    from_store = attributes.get("metadata", {}).get(KEY, {}).get("classes")
    if from_store:
        return ClassTable.from_dict(from_store)
    step = max(1, int(np.ceil(np.sqrt(arr.size / FULL_SCAN_PIXELS))))  # huge layers: a sample
    values = np.unique(np.asarray(arr[::step, ::step]))
    return table_from_layer(attributes.get("features"), attributes.get("colormap"), values, name=name)


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers; returns the paths written."""
    from elegantviz.io.store import create_scene, open_scene

    name = part_name(attributes.get("name", "labels"))
    arr = _as_uint8(data)
    classes = layer_table(attributes, arr, name)
    with writer_lock(path, "napari save"):
        if Path(path).exists():
            scene = open_scene(path, mode="r+")
            if name == GT and GT in scene.labels:
                raise InputError(f"{path}: labels/{GT} is the ground truth and a save does not replace it; rename "
                                 f"the layer (e.g. {GT}_edited) to save it beside")
        else:
            blank = da.zeros((1, *arr.shape), dtype=np.uint8, chunks=(1, 512, 512))
            scene = create_scene(path, blank, bands=[BLANK_BAND], classes=classes, source=f"napari labels {name}",
                                 progress=False, finalize=False)
        scene.replace_labels(name, arr, classes=classes, progress=False)
        if not scene.complete:
            scene.finalize()
    return [str(path)]
