"""Connected regions of a boolean mask of any size, found block by block.

Each block is labelled on its own (8-connectivity); regions that touch across block edges
and corners are joined with a union-find over the edge pixels only, so memory is a block
plus the statistics, never the whole label image. Region statistics (area, bounding box, and
the mean of any value maps) are merged as regions join.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import dask.array as da
import numpy as np
from scipy import ndimage

from elegantviz.io.blocks import map_blocks_collect

EIGHT = np.ones((3, 3), bool)


@dataclass
class Region:
    area: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive), level-0 pixels
    means: dict[str, float] = field(default_factory=dict)

    @property
    def centroid_hint(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.bbox
        return (y0 + y1) / 2, (x0 + x1) / 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        return d


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
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in mask.chunks]

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
