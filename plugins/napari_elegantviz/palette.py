"""Class tables as napari sees them: a direct label colormap and a features table.

napari's Labels layer treats one value as background (transparent); scene stores use 0 for a
real class (cropland, background, ...) and 255 for ignore, so the colormap's background is the
ignore value. Hidden classes are simply transparent entries, which is how the legend toggles them.
napari is imported only inside the functions that need it.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from elegantviz.classes import IGNORE_INDEX, ClassInfo, ClassTable, auto_color
from elegantviz.io import schema

IGNORE_NAME = schema.IGNORE_NAME
HARD_COLOUR = "magenta"  # schema.HARD_COLOUR by the name the Overlays colour menu shows


def color_dict(table: ClassTable, hidden: Iterable[int] = (), alpha: float = 1.0) -> dict:
    """{class id: RGBA floats}; hidden classes and ignore transparent, unknown ids transparent."""
    hidden = set(hidden)
    colors: dict = {None: np.zeros(4, np.float32)}
    for c in table.classes:
        rgba = np.array([*(v / 255 for v in c.color), 0.0 if c.id in hidden else alpha], np.float32)
        colors[c.id] = rgba
    colors[table.ignore_index] = np.zeros(4, np.float32)
    return colors


def label_colormap(table: ClassTable, hidden: Iterable[int] = ()):
    """napari DirectLabelColormap for a class table (imports napari: call only inside napari)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=color_dict(table, hidden), background_value=table.ignore_index)


def label_features(table: ClassTable) -> dict[str, np.ndarray]:
    """Features with an ``index`` column so napari's status bar names the class under the cursor."""
    ids = [c.id for c in table.classes] + [table.ignore_index]
    names = table.names + [IGNORE_NAME]
    return {"index": np.asarray(ids, np.int64), "class": np.asarray(names, dtype=object)}


def fallback_table(name: str, n: int) -> ClassTable:
    """A table for labels that carry none (e.g. a 0/1 mask): "<name> 0", "<name> 1", ..."""
    n = max(1, min(int(n), 255))
    return ClassTable(name=name, classes=tuple(ClassInfo(i, f"{name} {i}", auto_color(i)) for i in range(n)))


def table_from_layer(features, colormap, values: np.ndarray | None = None, name: str = "labels") -> ClassTable:
    """Rebuild a class table from a Labels layer's features and colormap (for the writer).

    Ids must be 0..K-1 in a ClassTable, so gaps get "class i" with an automatic colour.
    """
    names: dict[int, str] = {}
    if features is not None and len(features) and "index" in features and "class" in features:
        for i, n in zip(np.asarray(features["index"]), np.asarray(features["class"])):
            if 0 <= int(i) < IGNORE_INDEX:
                names[int(i)] = str(n)
    top = max(names) if names else -1
    if values is not None and values.size:
        present = values[values != IGNORE_INDEX]
        if present.size:
            top = max(top, int(present.max()))
    classes = []
    for i in range(top + 1):
        rgba = _rgba_of(colormap, i)
        color = tuple(int(round(float(v) * 255)) for v in rgba[:3]) if rgba is not None else auto_color(i)
        classes.append(ClassInfo(i, names.get(i, f"class {i}"), color))  # type: ignore[arg-type]
    return ClassTable(name=name, classes=tuple(classes))


def _rgba_of(colormap, i: int) -> np.ndarray | None:
    """A class's colour even when the legend has hidden it (alpha 0); None when it has none."""
    direct = getattr(colormap, "color_dict", None)
    if direct is not None and i in direct:
        return np.asarray(direct[i], np.float64)
    if colormap is None:
        return None
    rgba = np.asarray(colormap.map(np.array([i], np.uint8)), np.float64).reshape(-1, 4)[0]
    return rgba if rgba[3] > 0 else None


def hard_table(colour: str = HARD_COLOUR, names: tuple[str, str] = schema.HARD_NAMES) -> ClassTable:
    """``schema.hard_table`` in an overlay colour given as napari takes it (a name or hex)."""
    from napari.utils.colormaps.standardize_color import transform_color

    rgb = tuple(int(round(v * 255)) for v in transform_color(colour)[0][:3])
    return schema.hard_table(rgb, names)  # type: ignore[arg-type]


def hard_colormap(colour: str = HARD_COLOUR, names: tuple[str, str] = schema.HARD_NAMES):
    """The hard region in one colour, the rest (0) transparent."""
    return label_colormap(hard_table(colour, names), hidden=[0])
