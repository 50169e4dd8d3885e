"""Riverworld: procedural scenes where only the whole image tells a river from a pond.

Rivers run border to border; ponds are bounded (oxbow-like arcs and compact blobs). Both have
the same water texture and the same width range, so a crop of a few hundred pixels showing a
stretch of water cannot say which it is. Land covers (cropland, forest, built-up) fill the
rest. Every pixel is a pure function of (seed, y, x): scenes are rendered block by block,
identically whatever the block size, and a 20,000 x 20,000 scene never sits in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

from elegantviz.classes import RIVERWORLD
from elegantviz.errors import InputError, writing

CROPLAND, FOREST, BUILT, RIVER, POND = range(5)
BANDS = ("red", "green", "blue", "nir")
MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# --- deterministic noise ---------------------------------------------------------------------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good 64-bit hash, vectorised."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, salt: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) from integer coordinates; the same coordinates give the same value."""
    h = np.uint64((seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        acc = np.full(np.broadcast_shapes(*(np.shape(c) for c in coords)), h, np.uint64)
        for c in coords:
            acc = _mix(acc ^ (np.asarray(c).astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)))
    return (acc >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def value_noise(seed: int, salt: int, ys: np.ndarray, xs: np.ndarray, scale: float) -> np.ndarray:
    """Smooth noise in [0, 1) on a lattice of ``scale`` pixels (ys and xs broadcast)."""
    fy, fx = ys / scale, xs / scale
    iy, ix = np.floor(fy), np.floor(fx)
    ty, tx = fy - iy, fx - ix
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    v00, v01 = hash_uniform(seed, salt, iy, ix), hash_uniform(seed, salt, iy, ix + 1)
    v10, v11 = hash_uniform(seed, salt, iy + 1, ix), hash_uniform(seed, salt, iy + 1, ix + 1)
    return (v00 * (1 - tx) + v01 * tx) * (1 - ty) + (v10 * (1 - tx) + v11 * tx) * ty


# --- geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class River:
    vertical: bool  # runs top to bottom (centre x = f(y)), else left to right
    offset: float
    amps: tuple[float, float]
    periods: tuple[float, float]
    phases: tuple[float, float]
    width: float

    def centre(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre line position and slope at coordinate t along the river's axis."""
        c = self.offset + sum(a * np.sin(2 * np.pi * t / p + f) for a, p, f in zip(self.amps, self.periods, self.phases))
        dc = sum(a * 2 * np.pi / p * np.cos(2 * np.pi * t / p + f) for a, p, f in zip(self.amps, self.periods, self.phases))
        return c, dc

    def mask(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        along, across = (ys, xs) if self.vertical else (xs, ys)
        c, dc = self.centre(along)
        return np.abs(across - c) / np.sqrt(1 + dc * dc) < self.width / 2

    def extent(self) -> float:
        return sum(self.amps) + self.width


@dataclass(frozen=True)
class Pond:
    cy: float
    cx: float
    radius: float  # arc radius for an oxbow, mean radius for a blob
    width: float  # band width of an oxbow; unused for blobs
    start: float  # oxbow arc start angle
    span: float  # oxbow arc span; 0 for a blob
    aspect: float  # blob elongation
    angle: float  # blob orientation

    @property
    def reach(self) -> float:
        return self.radius * max(self.aspect, 1) + self.width + 2

    def mask(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        dy, dx = ys - self.cy, xs - self.cx
        if self.span:
            r = np.hypot(dy, dx)
            ang = (np.arctan2(dy, dx) - self.start) % (2 * np.pi)
            band = np.abs(r - self.radius) < self.width / 2
            # round ends, so an oxbow's ends look like a river bank, not a cut
            ends = []
            for a in (self.start, self.start + self.span):
                ey, ex = self.cy + self.radius * np.sin(a), self.cx + self.radius * np.cos(a)
                ends.append(np.hypot(ys - ey, xs - ex) < self.width / 2)
            return (band & (ang < self.span)) | ends[0] | ends[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = dx * c + dy * s, -dx * s + dy * c
        return (u / (self.radius * self.aspect)) ** 2 + (v / self.radius) ** 2 < 1


@dataclass(frozen=True)
class RiverworldSpec:
    """Everything a scene depends on; ``shapes()`` lays out its rivers and ponds."""

    height: int = 1024
    width: int = 1024
    seed: int = 0
    water_width: tuple[float, float] = (8.0, 16.0)
    rivers: int | None = None  # default: about one per 1,000 px of the longer side, at least 1
    ponds: int | None = None  # default: about 6 per megapixel, at least 3
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def shapes(self) -> tuple[list[River], list[Pond]]:
        if "shapes" not in self._cache:
            self._cache["shapes"] = _layout(self)
        return self._cache["shapes"]


# a cell of the pond grid spans the largest clearance two ponds need: twice the largest reach
# (oxbow: radius 90 + width 16 + 2) plus the margin (3 x the widest water, 16)
POND_CELL = 2 * (90 + 16 + 2) + 3 * 16


def _layout(spec: RiverworldSpec) -> tuple[list[River], list[Pond]]:
    rng = np.random.default_rng([spec.seed, 0x5CE4E])
    h, w = spec.height, spec.width
    lo, hi = spec.water_width
    n_rivers = spec.rivers if spec.rivers is not None else max(1, round(max(h, w) / 1000))
    rivers = []
    for i in range(n_rivers):
        vertical = bool(rng.random() < 0.5) if i else w >= h
        across, along = (w, h) if vertical else (h, w)
        amp = across * rng.uniform(0.03, 0.08)
        rivers.append(
            River(
                vertical=vertical,
                offset=rng.uniform(0.15, 0.85) * across,
                amps=(amp, amp * rng.uniform(0.2, 0.5)),
                periods=(along * rng.uniform(0.5, 1.2), rng.uniform(150, 400)),
                phases=(rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)),
                width=rng.uniform(lo, hi),
            )
        )
    n_ponds = spec.ponds if spec.ponds is not None else max(3, round(6 * h * w / 2**20))
    ponds: list[Pond] = []
    grid: dict[tuple[int, int], list[Pond]] = {}  # ponds by cell: only neighbouring cells can be too close
    for _ in range(n_ponds * 20):
        if len(ponds) == n_ponds:
            break
        oxbow = rng.random() < 0.6
        width = rng.uniform(lo, hi)
        radius = rng.uniform(30, 90) if oxbow else rng.uniform(1.0, 2.5) * width
        pond = Pond(
            cy=rng.uniform(0, h),
            cx=rng.uniform(0, w),
            radius=radius,
            width=width if oxbow else 0.0,
            start=rng.uniform(0, 2 * np.pi),
            span=rng.uniform(np.pi * 0.8, np.pi * 1.5) if oxbow else 0.0,
            aspect=1.0 if oxbow else rng.uniform(1.0, 2.0),
            angle=rng.uniform(0, np.pi),
        )
        # ponds stay inside the scene and clear of rivers and of each other
        margin = 3 * hi
        if not (pond.reach < pond.cy < h - pond.reach and pond.reach < pond.cx < w - pond.reach):
            continue
        if any(_river_distance(r, pond.cy, pond.cx) < pond.reach + r.width + margin
               for r in rivers if _may_reach(r, pond, margin)):
            continue
        cy, cx = int(pond.cy // POND_CELL), int(pond.cx // POND_CELL)
        near = [p for dy in (-1, 0, 1) for dx in (-1, 0, 1) for p in grid.get((cy + dy, cx + dx), ())]
        if any(math.hypot(p.cy - pond.cy, p.cx - pond.cx) < p.reach + pond.reach + margin for p in near):
            continue
        ponds.append(pond)
        grid.setdefault((cy, cx), []).append(pond)
    return rivers, ponds


def _may_reach(r: River, pond: Pond, margin: float) -> bool:
    """False when the pond lies farther across from the river's band (offset +- its amplitudes)
    than the clearance asked: the exact distance need not be computed (same answers, linear time)."""
    across = pond.cx if r.vertical else pond.cy
    return abs(across - r.offset) - sum(abs(a) for a in r.amps) < pond.reach + r.width + margin


def _river_distance(r: River, y: float, x: float) -> float:
    along, across = (y, x) if r.vertical else (x, y)
    t = np.linspace(along - 400, along + 400, 801)
    c, _ = r.centre(t)
    return float(np.min(np.hypot(t - along, c - across)))


# --- rendering --------------------------------------------------------------------------------
def render_labels(spec: RiverworldSpec, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Class ids of the window [y0:y1, x0:x1] (uint8)."""
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    s = spec.seed
    forest = value_noise(s, 1, ys, xs, 420) * 0.7 + value_noise(s, 2, ys, xs, 90) * 0.3
    built = value_noise(s, 3, ys, xs, 300) * 0.75 + value_noise(s, 4, ys, xs, 60) * 0.25
    out = np.full((y1 - y0, x1 - x0), CROPLAND, np.uint8)
    out[forest > 0.56] = FOREST
    out[(built > 0.64) & (forest <= 0.56)] = BUILT
    rivers, ponds = spec.shapes()
    for r in rivers:
        lo, hi = (x0, x1) if r.vertical else (y0, y1)
        c, _ = r.centre(np.arange(y0, y1) if r.vertical else np.arange(x0, x1))
        if c.max() + r.width < lo or c.min() - r.width > hi:
            continue
        out[r.mask(ys, xs)] = RIVER
    for p in ponds:
        if p.cy + p.reach < y0 or p.cy - p.reach > y1 or p.cx + p.reach < x0 or p.cx - p.reach > x1:
            continue
        out[p.mask(ys, xs)] = POND
    return out


# Mean (R, G, B, NIR) per class; rivers and ponds share the water colour and texture.
_COLOURS = np.array(
    [[150, 150, 95, 150], [55, 95, 55, 185], [165, 160, 155, 95], [45, 75, 105, 25], [45, 75, 105, 25]],
    np.float64,
)


def render_image(spec: RiverworldSpec, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(4, h, w) uint8 bands R, G, B, NIR of the window [y0:y1, x0:x1]."""
    labels = render_labels(spec, y0, y1, x0, x1)
    ys = np.arange(y0, y1)[:, None]
    xs = np.arange(x0, x1)[None, :]
    s = spec.seed
    img = _COLOURS[labels].transpose(2, 0, 1).copy()
    grain = hash_uniform(s, 10, ys, xs) - 0.5
    soft = value_noise(s, 11, ys, xs, 7) - 0.5
    # cropland: fields of 128 px with stripes in one of four directions each
    fy, fx = ys // 128, xs // 128
    direction = (hash_uniform(s, 12, fy, fx) * 4).astype(int)
    tone = hash_uniform(s, 13, fy, fx) - 0.5
    phase = np.select([direction == 0, direction == 1, direction == 2], [ys, xs, ys + xs], ys - xs)
    stripes = np.sin(phase * 0.9) * 8 + tone * 40
    crop = labels == CROPLAND
    # forest: blotchy canopy; built-up: blocks of roofs and streets
    canopy = (value_noise(s, 14, ys, xs, 4) - 0.5) * 50
    street = ((ys % 24) < 4) | ((xs % 24) < 4)
    roofs = np.where(street, -35.0, (hash_uniform(s, 15, ys // 24, xs // 24) - 0.5) * 60)
    ripple = (value_noise(s, 16, ys, xs, 3) - 0.5) * 14
    detail = np.select([crop, labels == FOREST, labels == BUILT], [stripes, canopy, roofs], ripple)
    img += detail[None] + grain[None] * 16 + soft[None] * 20
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def riverworld_arrays(spec: RiverworldSpec, tile: int = 512) -> tuple[da.Array, da.Array]:
    """Lazy (4, H, W) image and (H, W) labels; each block is rendered when it is computed."""
    if spec.height < 64 or spec.width < 64:
        raise InputError(f"riverworld scenes must be at least 64 x 64 pixels, got {spec.height} x {spec.width}")
    spec.shapes()  # lay out once, before the blocks run in threads
    chunks = (tuple(_splits(spec.height, tile)), tuple(_splits(spec.width, tile)))

    def labels_block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return render_labels(spec, y0, y1, x0, x1)

    def image_block(block_info=None):
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return render_image(spec, y0, y1, x0, x1)

    labels = da.map_blocks(labels_block, chunks=chunks, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    image = da.map_blocks(image_block, chunks=((4,),) + chunks, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
    return image, labels


def _splits(n: int, tile: int) -> list[int]:
    return [min(tile, n - i) for i in range(0, n, tile)]


def synthesize_riverworld(
    out: str | Path,
    height: int = 1024,
    width: int | None = None,
    seed: int = 0,
    tile: int = 512,
    overwrite: bool = False,
    progress: bool = True,
    **spec_kwargs,
):
    """Write a riverworld scene as a scene store (``.zarr``) or a GeoTIFF pair (``.tif``).

    A GeoTIFF gets its mask beside it as ``<stem>_mask.tif``; convert both with
    ``elegantviz convert X.tif X.zarr --mask X_mask.tif --classes riverworld``.
    Returns the Scene, or the (image, mask) paths for GeoTIFF.
    """
    from elegantviz.io.convert import check_output, check_tile

    out_s = str(out)
    tif = out_s.lower().endswith((".tif", ".tiff"))
    # the output first: a refused one costs no layout (minutes for a huge scene) and writes nothing
    if Path(out_s).suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"):
        raise InputError(f"{out_s}: synth writes a scene store (OUT.zarr) or a GeoTIFF pair (OUT.tif), not a {Path(out_s).suffix} file")
    if tif:
        for p in (Path(out_s), mask_path(Path(out_s))):
            if p.exists() and not overwrite:
                raise InputError(f"{p}: exists; pass --overwrite to replace it")
    elif "://" not in out_s:
        check_output(out_s)  # never into a plain folder: create_scene would empty it
    check_tile(tile)
    spec = RiverworldSpec(height=height, width=width or height, seed=seed, **spec_kwargs)
    image, labels = riverworld_arrays(spec, tile)
    if tif:
        from rasterio.errors import RasterioError

        with writing(out_s, also=(RasterioError,)):  # a read-only folder, a full disk: one line
            return write_geotiff_pair(Path(out_s), image, labels, tile, overwrite, progress)
    from elegantviz.io.store import create_scene

    job = {"synthetic": "riverworld", "seed": seed}
    with writing(out_s):
        scene = create_scene(out, image, bands=list(BANDS), classes=RIVERWORLD, source=f"riverworld seed={seed}",
                             tile=tile, overwrite=overwrite, progress=progress, job=job, finalize=False)
        if "gt" not in scene.labels:
            scene.add_labels("gt", labels, classes=RIVERWORLD, progress=progress)
        scene.finalize()
    return scene


def mask_path(path: Path) -> Path:
    """The mask beside a synthesized GeoTIFF: ``X_mask.tif``."""
    return path.with_name(path.stem + "_mask" + path.suffix)


def write_geotiff_pair(path: Path, image: da.Array, labels: da.Array, tile: int, overwrite: bool, progress: bool):
    """Tiled, compressed GeoTIFFs written window by window (1 m pixels in UTM 15N, made up)."""
    import rasterio
    from rasterio.transform import from_origin
    from tqdm.auto import tqdm

    masks = mask_path(path)
    for p in (path, masks):
        if p.exists() and not overwrite:
            raise InputError(f"{p}: exists; pass --overwrite to replace it")
    _, h, w = image.shape
    tile = max(16, tile // 16 * 16)  # GeoTIFF tiles are multiples of 16
    profile = dict(driver="GTiff", width=w, height=h, tiled=True, blockxsize=tile, blockysize=tile,
                   compress="deflate", crs="EPSG:32615", transform=from_origin(500000, 4500000, 1.0, 1.0))
    with rasterio.open(path, "w", count=4, dtype="uint8", **profile) as dst_img, \
            rasterio.open(masks, "w", count=1, dtype="uint8", **profile) as dst_mask:
        dst_img.descriptions = BANDS
        blocks = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
        from rasterio.windows import Window

        for y, x in tqdm(blocks, desc="riverworld GeoTIFF", unit="block", disable=not progress, leave=False):
            sl = np.s_[..., y : y + tile, x : x + tile]
            win = Window(x, y, min(tile, w - x), min(tile, h - y))
            dst_img.write(image[sl].compute(scheduler="sync"), window=win)
            dst_mask.write(labels[sl].compute(scheduler="sync"), 1, window=win)
    return path, masks
