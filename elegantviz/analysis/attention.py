"""Attention maps from what prediction stored, without the model.

Efficient attention weights pixel p for query q by ``queries[:, q] . keys[:, p]`` (keys
normalised over positions, queries over channels). Prediction stores both at feature
resolution in ``maps/keys`` (scaled by the number of positions, so 1.0 means "as much as the
average pixel") and ``maps/queries``; a click anywhere in the scene gives that pixel's map over
the whole scene with one pass over the keys.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from elegantviz.errors import InputError
from elegantviz.io.schema import KEYS, QUERIES
from elegantviz.io.store import Scene

CONTRAST_MAX_PIXELS = 512 * 512  # levels_display_range reads the first level at most this large


def _stride(scene: Scene) -> int:
    if KEYS not in scene.maps or QUERIES not in scene.maps:
        raise InputError(f"{scene.url}: no maps/keys and maps/queries; run `elegantviz predict` (holistic) first")
    return int(scene.map_attrs(KEYS).get("stride", 1))


def query_vector(scene: Scene, y: int, x: int) -> np.ndarray:
    """The normalised query of the feature pixel under image pixel (y, x)."""
    s = _stride(scene)
    q = scene.map(QUERIES)
    fy, fx = min(y // s, q.shape[1] - 1), min(x // s, q.shape[2] - 1)
    return np.asarray(q[:, fy, fx].compute(), np.float32)


def attention_from_query(scene: Scene, query: np.ndarray) -> da.Array:
    """(h, w) lazy map, at feature resolution, of the attention ``query`` pays to every pixel."""
    keys = scene.map(KEYS).astype(np.float32)
    return da.tensordot(query.astype(np.float32), keys, axes=(0, 0))


def attention_levels(scene: Scene, query: np.ndarray) -> list[da.Array]:
    """(h, w) lazy attention maps of ``query``, one per stored level of ``maps/keys``.

    The attention is linear in the keys and the keys' pyramid is mean-pooled, so the same
    product with a coarser key level is exactly the mean attention over each block: a pyramid
    for free, and a viewer reads only what the screen needs.
    """
    q = query.astype(np.float32)
    return [attention_from_query(scene, query)] + [
        da.tensordot(q, keys.astype(np.float32), axes=(0, 0)) for keys in scene.map_levels(KEYS)[1:]]


def pixel_attention(scene: Scene, y: int, x: int) -> np.ndarray:
    """Attention pixel (y, x) pays to every pixel (feature resolution, relative to uniform)."""
    return np.asarray(attention_from_query(scene, query_vector(scene, y, x)).compute())


def region_attention(scene: Scene, mask: np.ndarray) -> np.ndarray:
    """Attention a set of pixels (a (h, w) boolean mask at feature resolution) pays on average."""
    q = scene.map(QUERIES)
    _stride(scene)
    if mask.shape != q.shape[1:]:
        raise InputError(f"mask shape {mask.shape} != feature grid {q.shape[1:]}")
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError("empty region: no pixel selected")
    # read only the region's bounding box of the queries, not the whole map
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    qs = np.asarray(q[(slice(None), *box)].compute(), np.float32)[:, mask[box]]
    return np.asarray(attention_from_query(scene, qs.mean(1)).compute())


def display_range(values: np.ndarray, percent: float = 99.5) -> tuple[float, float]:
    """Colour range of an attention map: its 100 - ``percent`` and ``percent`` percentiles.

    Softmax keys can put much of a map's mass on a few pixels; a linear scale up to those shows
    one dot on black. (0, 1) for a map without finite values.
    """
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [100 - percent, percent])
    return float(lo), float(max(hi, lo + 1e-6))


def levels_display_range(levels: list[da.Array], max_pixels: int = CONTRAST_MAX_PIXELS,
                         percent: float = 99.5) -> tuple[float, float]:
    """``display_range`` of the finest level small enough to read whole (exact on small scenes)."""
    level = next((lvl for lvl in levels if lvl.size <= max_pixels), levels[-1])
    return display_range(level.compute(), percent)
