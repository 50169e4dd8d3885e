"""Confusion-pair errors: which pixels are "river predicted as pond", and where they cluster.

Error codes per pixel: 0 correct, k (1..K) the k-th confusion pair (true class a predicted as
b), K + 1 any other error, 255 ignore (no ground truth). Regions of each pair are found block
by block (elegantviz.analysis.regions) with their area, bounding box and the mean of any
evidence maps (margin, hard-region share), largest first.
"""

from __future__ import annotations

from dataclasses import replace

import dask.array as da
import numpy as np

from elegantviz.analysis.regions import find_regions, fold_small
from elegantviz.classes import ClassTable
from elegantviz.errors import InputError
from elegantviz.io.schema import MIN_REGION_AREA

IGNORE = 255


def parse_pairs(specs: list[str] | None, table: ClassTable) -> list[tuple[int, int]]:
    """'river:pond' -> (id of river, id of pond); default: the table's own pairs."""
    if not specs:
        return [(table.id_of(a), table.id_of(b)) for a, b in table.default_pairs]
    pairs = []
    for spec in specs:
        if ":" not in spec:
            raise InputError(f"--pair {spec!r}: expected TRUE:PREDICTED class names, e.g. river:pond")
        a, b = spec.split(":", 1)
        pairs.append((table.id_of(a.strip()), table.id_of(b.strip())))
    return pairs


def pair_name(pair: tuple[int, int], table: ClassTable) -> str:
    return f"{table.names[pair[0]]}->{table.names[pair[1]]}"


def error_codes(gt: np.ndarray, pred: np.ndarray, pairs: list[tuple[int, int]], ignore_index: int = IGNORE) -> np.ndarray:
    """Per-pixel error codes of one block (see module docstring)."""
    if len(pairs) + 1 >= ignore_index:
        raise InputError(f"at most {ignore_index - 2} confusion pairs fit in an error map")
    out = np.where(gt == pred, 0, len(pairs) + 1).astype(np.uint8)
    for k, (a, b) in enumerate(pairs, start=1):
        out[(gt == a) & (pred == b)] = k
    out[gt == ignore_index] = ignore_index
    return out


def error_map(gt: da.Array, pred: da.Array, pairs: list[tuple[int, int]]) -> da.Array:
    return da.map_blocks(error_codes, gt, pred.rechunk(gt.chunks), pairs=pairs, dtype=np.uint8)


def pair_regions(gt: da.Array, pred: da.Array, pairs: list[tuple[int, int]], table: ClassTable,
                 values: dict[str, da.Array] | None = None, max_regions: int = 1000,
                 min_area: int = MIN_REGION_AREA, progress: bool = True) -> list[dict]:
    """For each pair: its pixel count and its regions of at least ``min_area`` pixels, largest
    first (at most ``max_regions``), and how many smaller ones were folded away."""
    codes = error_map(gt, pred, pairs)
    out = []
    for k, pair in enumerate(pairs, start=1):
        name = pair_name(pair, table)
        regions = find_regions(codes == k, values, progress=progress, desc=f"regions {name}")
        kept, folded = fold_small(regions, min_area)
        out.append({
            "pair": name,
            "true": table.names[pair[0]],
            "predicted": table.names[pair[1]],
            "pixels": int(sum(r.area for r in regions)),
            "regions": [replace(r, pair=name).to_dict() for r in kept[:max_regions]],
            "regions_total": len(kept),
            "min_area": int(min_area),
            "regions_folded": folded,
            "folded_pixels": int(sum(r.area for r in regions[len(kept):])),
        })
    return out
