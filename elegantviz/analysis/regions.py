"""Connected regions of a boolean mask of any size, found block by block, and the regions file
evaluation writes and the napari error navigator reads.

Each block is labelled on its own (8-connectivity); regions that touch across block edges
and corners are joined with a union-find over the edge pixels only, so memory is a block
plus the statistics, never the whole label image. Region statistics (area, bounding box, and
the mean of any value maps) are merged as regions join.

Regions file (JSON, UTF-8, ``regions_path``: ``NAME.errors.json`` beside ``NAME.zarr``): a
list of objects, largest first::

    [{"pair": "river->pond", "bbox": [y0, x0, y1, x1], "area": 5321, "means": {"margin": 0.2}}, ...]

``pair`` is "<true class>-><predicted class>" by class name; ``bbox`` is in level-0 pixels,
half-open; ``area`` is the region's pixel count (> 0); other keys (``means``, ``label``) are
optional and ignored. ``load_regions`` also reads an evaluation ``report.json`` (its
``pairs``, each with its ``regions``), and ``regions_in_store`` the ``pairs`` evaluation keeps
in the attributes of ``labels/error``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
from scipy import ndimage

from elegantviz.errors import ElegantvizError, InputError
from elegantviz.io.blocks import block_starts, map_blocks_collect
from elegantviz.io.schema import ERROR, LABELS, MIN_REGION_AREA, PRED

EIGHT = np.ones((3, 3), bool)
PAIR_ARROW = "->"


@dataclass
class Region:
    """One connected region; ``pair`` names the confusion it belongs to ("" for a plain mask)."""

    area: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive), level-0 pixels
    means: dict[str, float] = field(default_factory=dict)
    pair: str = ""

    @property
    def truth(self) -> str:
        return self.pair.split(PAIR_ARROW)[0]

    @property
    def predicted(self) -> str:
        return self.pair.split(PAIR_ARROW)[1]

    @property
    def centre(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.bbox
        return (y0 + y1) / 2, (x0 + x1) / 2

    def to_dict(self) -> dict:
        """The region as an evaluation report lists it."""
        return {"pair": self.pair, "area": int(self.area), "bbox": [int(v) for v in self.bbox],
                "means": dict(self.means)}


def _block_stats(idx, origin, mask, *values):
    lab, n = ndimage.label(mask, structure=EIGHT)
    if n == 0:
        return idx, 0, None, None, None, (lab[0], lab[-1], lab[:, 0], lab[:, -1])
    ids = np.arange(1, n + 1)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in ndimage.find_objects(lab)])
    boxes += [origin[0], origin[1], origin[0], origin[1]]
    sums = np.stack([ndimage.sum_labels(v.astype(np.float64), lab, ids) for v in values], 1) if values else None
    return idx, n, area, boxes, sums, (lab[0], lab[-1], lab[:, 0], lab[:, -1])


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _edge_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label pairs across an edge: a[i] touches b[i-1], b[i], b[i+1] (8-connectivity)."""
    pairs = []
    for shift in (-1, 0, 1):
        if shift < 0:
            x, y = a[1:], b[:-1]
        elif shift > 0:
            x, y = a[:-1], b[1:]
        else:
            x, y = a, b
        hit = (x > 0) & (y > 0)
        pairs.append(np.stack([x[hit], y[hit]], 1))
    return np.unique(np.concatenate(pairs), axis=0)


def find_regions(mask: da.Array, values: dict[str, da.Array] | None = None, progress: bool = True,
                 desc: str = "regions") -> list[Region]:
    """All 8-connected regions of a (y, x) boolean mask, largest first.

    ``values`` maps names to (y, x) arrays of the mask's shape (e.g. the margin map); each
    region gets the mean of each over its pixels.
    """
    values = values or {}
    mask = mask.astype(bool)
    arrays = [mask] + [v.rechunk(mask.chunks) for v in values.values()]
    starts = block_starts(mask.chunks)

    def fn(idx, m, *vals):
        return _block_stats(idx, (starts[0][idx[0]], starts[1][idx[1]]), m, *vals)

    results = map_blocks_collect(arrays, fn, desc, progress, with_index=True)
    grid = mask.numblocks
    offset = np.zeros(grid, np.int64)
    total = 0
    for idx, n, *_ in results:
        offset[idx] = total
        total += n
    if total == 0:
        return []
    area = np.zeros(total, np.int64)
    boxes = np.zeros((total, 4), np.int64)
    sums = np.zeros((total, len(values)))
    edges = {}
    for idx, n, a, b, s, edge in results:
        o = offset[idx]
        if n:
            area[o : o + n], boxes[o : o + n] = a, b
            if s is not None:
                sums[o : o + n] = s
        # local labels -> global ids (0 stays background)
        edges[idx] = tuple(np.where(e > 0, e + o, 0) for e in edge)

    uf = _UnionFind(total + 1)
    for (i, j), (top, bottom, left, right) in edges.items():
        neighbours = []
        if j + 1 < grid[1]:
            neighbours.append(_edge_pairs(right, edges[(i, j + 1)][2]))
        if i + 1 < grid[0]:
            neighbours.append(_edge_pairs(bottom, edges[(i + 1, j)][0]))
        if i + 1 < grid[0] and j + 1 < grid[1]:  # diagonal corners
            c1, c2 = bottom[-1], edges[(i + 1, j + 1)][0][0]
            if c1 and c2:
                neighbours.append(np.array([[c1, c2]]))
        if i + 1 < grid[0] and j > 0:
            c1, c2 = bottom[0], edges[(i + 1, j - 1)][0][-1]
            if c1 and c2:
                neighbours.append(np.array([[c1, c2]]))
        for pairs in neighbours:
            for a, b in pairs:
                uf.union(int(a), int(b))

    roots = np.array([uf.find(g) for g in range(1, total + 1)]) - 1
    uniq, inverse = np.unique(roots, return_inverse=True)
    m_area = np.bincount(inverse, weights=area).astype(np.int64)
    m_box = np.empty((len(uniq), 4), np.int64)
    m_box[:, :2] = np.iinfo(np.int64).max
    m_box[:, 2:] = np.iinfo(np.int64).min
    np.minimum.at(m_box[:, 0], inverse, boxes[:, 0])
    np.minimum.at(m_box[:, 1], inverse, boxes[:, 1])
    np.maximum.at(m_box[:, 2], inverse, boxes[:, 2])
    np.maximum.at(m_box[:, 3], inverse, boxes[:, 3])
    m_sums = np.stack([np.bincount(inverse, weights=sums[:, k], minlength=len(uniq)) for k in range(len(values))], 1) \
        if values else np.zeros((len(uniq), 0))
    names = list(values)
    regions = [
        Region(int(m_area[r]), tuple(int(v) for v in m_box[r]),  # type: ignore[arg-type]
               {names[k]: float(m_sums[r, k] / m_area[r]) for k in range(len(names))})
        for r in range(len(uniq))
    ]
    regions.sort(key=lambda r: (-r.area, r.bbox))
    return regions


def fold_small(regions: list[Region], min_area: int = MIN_REGION_AREA) -> tuple[list[Region], int]:
    """(regions of at least ``min_area`` pixels, how many smaller ones were folded away)."""
    kept = [r for r in regions if r.area >= min_area]
    return kept, len(regions) - len(kept)


# --- the regions file -------------------------------------------------------------------------
def regions_path(scene_path: str | Path, pred: str = PRED) -> Path:
    """``NAME.errors.json`` beside ``NAME.zarr`` (``NAME.<pred>.errors.json`` for other labels)."""
    p = Path(str(scene_path).rstrip("/"))
    stem = p.name[: -len(".zarr")] if p.name.endswith(".zarr") else p.name
    return p.with_name(f"{stem}.errors.json" if pred == PRED else f"{stem}.{pred}.errors.json")


def parse_regions(data: object, origin: str = "regions") -> list[Region]:
    """Validate and sort (largest first) the decoded JSON of a regions file."""
    if not isinstance(data, list):
        raise InputError(f"{origin}: expected a JSON list of regions, got {type(data).__name__}")
    regions = []
    for k, item in enumerate(data):
        try:
            pair = str(item["pair"])
            bbox = tuple(int(v) for v in item["bbox"])
            area = int(item["area"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{origin}: region {k} needs pair, bbox and area ({type(e).__name__}: {e})") from None
        if pair.count(PAIR_ARROW) != 1 or len(bbox) != 4 or area <= 0:
            raise InputError(f"{origin}: region {k} is malformed: {item!r}")
        y0, x0, y1, x1 = bbox
        if y1 <= y0 or x1 <= x0:
            raise InputError(f"{origin}: region {k} has an empty bbox {list(bbox)}")
        means = item.get("means") if isinstance(item.get("means"), dict) else {}
        regions.append(Region(area, bbox, dict(means), pair))  # type: ignore[arg-type]
    return sorted(regions, key=lambda r: -r.area)


def regions_of(data: object, origin: str = "regions") -> list[Region]:
    """Regions from a regions file's list or from an evaluation report's ``pairs``."""
    if isinstance(data, dict) and isinstance(data.get("pairs"), list):
        data = [r for entry in data["pairs"] if isinstance(entry, dict) for r in entry.get("regions", [])]
    return parse_regions(data, origin)


def load_regions(path: str | Path) -> list[Region]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read error regions ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    return regions_of(data, origin=str(path))


def save_regions(path: str | Path, regions: list[Region]) -> Path:
    """Write a regions file, largest first (atomically: the navigator never reads half a file)."""
    rows = []
    for r in sorted(regions, key=lambda r: -r.area):
        row = r.to_dict()
        if not row["means"]:
            del row["means"]
        rows.append(row)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def regions_in_store(scene_path: str, label: str = ERROR) -> list[Region] | None:
    """The regions evaluation kept in ``labels/<label>`` of a scene store, or None if it has none."""
    from elegantviz.io.store import open_scene

    try:
        scene = open_scene(scene_path)
    except (ElegantvizError, OSError):
        return None
    if label not in scene.labels:
        return None
    pairs = scene.part_meta(LABELS, label).get("pairs")
    if not pairs:
        return None
    return regions_of({"pairs": pairs}, origin=f"{scene_path} {LABELS}/{label}")
