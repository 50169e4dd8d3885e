"""The attention probe's heat map: what one pixel attends to over the whole scene, lazily.

Level 0 is ``elegantviz.analysis.attention.attention_from_query`` for the pixel's stored query:
a dask array at feature resolution, so napari computes only the chunks on screen. The stored
keys have a mean-pooled pyramid, and the attention is linear in the keys, so the same product
with a coarser key level is exactly the mean attention over each block: a pyramid for free,
and a click on a 20k scene reads only what the screen needs.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from elegantviz.analysis.attention import display_range
from elegantviz.io.store import Scene

from ._layers import meta

PROBE_PART = "probe/attention"
PROBE_NAME = "attention probe"
CONTRAST_MAX_PIXELS = 512 * 512  # the level read in full for the colour range


def probe_levels(scene: Scene, query: np.ndarray) -> list[da.Array]:
    """(h, w) attention maps of ``query``, one per stored level of ``maps/keys``."""
    from elegantviz.analysis.attention import attention_from_query

    levels = [attention_from_query(scene, query)]
    q = query.astype(np.float32)
    for keys in scene.map_levels("keys")[1:]:  # same product as level 0, with mean-pooled keys
        levels.append(da.tensordot(q, keys.astype(np.float32), axes=(0, 0)))
    return levels


def probe_contrast(levels: list[da.Array]) -> list[float]:
    """Colour range from the finest level small enough to read whole (exact on small scenes)."""
    level = next((lvl for lvl in levels if lvl.size <= CONTRAST_MAX_PIXELS), levels[-1])
    return list(display_range(level.compute()))


def probe_layer(scene: Scene, y: int, x: int) -> tuple:
    """Layer data of the attention pixel (y, x) pays to every pixel (relative to uniform: 1 = average).

    Reads one query and the level used for the colour range; call it off the GUI thread.
    """
    from elegantviz.analysis.attention import query_vector

    stride = float(scene.map_attrs("keys").get("stride", 1))
    levels = probe_levels(scene, query_vector(scene, y, x))
    kwargs = {
        "name": PROBE_NAME,
        "multiscale": len(levels) > 1,
        "colormap": "inferno",
        "blending": "translucent",
        "opacity": 0.85,
        "contrast_limits": probe_contrast(levels),
        # a feature pixel covers stride x stride image pixels; napari puts data pixel centres
        # at scale * i + translate, so translate (stride - 1) / 2 centres it on that block
        "scale": (stride, stride),
        "translate": ((stride - 1) / 2, (stride - 1) / 2),
        "metadata": meta(scene, PROBE_PART, pixel=[int(y), int(x)], stride=stride),
    }
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"
