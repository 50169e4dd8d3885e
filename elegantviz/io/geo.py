"""Lazy window readers over rasters: GeoTIFF/COG and friends through rasterio, PNG/JPEG through Pillow.

A ``RasterSource`` looks like a read-only (c, y, x) numpy array to ``dask.array.from_array``
and reads only the window asked for, so converting a raster never holds it in memory. Each
thread opens its own rasterio handles (GDAL datasets are not thread-safe).
"""

from __future__ import annotations

import math
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from elegantviz.errors import InputError

PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class BandRef:
    path: Path
    index: int  # 1-based, as rasterio and GDAL count bands
    name: str
    dtype: np.dtype
    nodata: float | None


@dataclass(frozen=True)
class RasterMeta:
    height: int
    width: int
    crs: str | None  # WKT
    transform: tuple[float, ...] | None  # affine a, b, c, d, e, f
    bands: tuple[BandRef, ...]


def _open_rasterio(path: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        raise InputError(f"{path}: not a raster that rasterio/GDAL can read ({e})") from None


def _pillow_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own readers decide what is too large, not Pillow
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not an image Pillow can read ({e})") from None


_PIL_DTYPES = {"1": np.bool_, "L": np.uint8, "P": np.uint8, "RGB": np.uint8, "RGBA": np.uint8,
               "LA": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}


def describe(path: str | Path) -> RasterMeta:
    """Size, georeferencing and bands of one raster file, without reading its pixels."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a raster")
    if path.suffix.lower() in PILLOW_SUFFIXES:
        im = _pillow_image(path)
        if im.mode not in _PIL_DTYPES:
            raise InputError(f"{path}: unsupported image mode {im.mode}")
        n = len(im.getbands())
        names = list(im.getbands()) if n > 1 else ["gray"]
        dtype = np.dtype(_PIL_DTYPES[im.mode])
        meta = RasterMeta(im.height, im.width, None, None,
                          tuple(BandRef(path, i + 1, names[i], dtype, None) for i in range(n)))
    else:
        with _open_rasterio(path) as ds:
            crs = ds.crs.to_wkt() if ds.crs else None
            t = tuple(ds.transform)[:6] if ds.transform and not ds.transform.is_identity else None
            nd = ds.nodatavals
            bands = tuple(
                BandRef(path, i + 1, ds.descriptions[i] or (path.stem if ds.count == 1 else f"band {i + 1}"),
                        np.dtype(ds.dtypes[i]), None if nd[i] is None else float(nd[i]))
                for i in range(ds.count)
            )
            meta = RasterMeta(ds.height, ds.width, crs, t, bands)
    if meta.height == 0 or meta.width == 0 or not meta.bands:
        raise InputError(f"{path}: zero-size raster ({meta.height} x {meta.width}, {len(meta.bands)} bands)")
    return meta


class RasterSource:
    """A (c, y, x) lazy array over bands of one or more rasters with the same grid."""

    def __init__(self, bands: Sequence[BandRef], height: int, width: int, nodata: float | None):
        self.bands = tuple(bands)
        self.dtype = np.result_type(*[b.dtype for b in self.bands])
        self.shape = (len(self.bands), height, width)
        self.ndim = 3
        self.nodata = nodata
        self._local = threading.local()
        self._pil_cache: dict[Path, np.ndarray] = {}
        self._pil_lock = threading.Lock()

    def _dataset(self, path: Path):
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if path not in handles:
            handles[path] = _open_rasterio(path)
        return handles[path]

    def _pillow(self, path: Path) -> np.ndarray:
        # PNG and JPEG cannot be read by window: decode once, keep it (documented in convert).
        with self._pil_lock:
            if path not in self._pil_cache:
                a = np.asarray(_pillow_image(path))
                self._pil_cache[path] = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
            return self._pil_cache[path]

    def _read_band(self, band: BandRef, ys: slice, xs: slice) -> np.ndarray:
        if band.path.suffix.lower() in PILLOW_SUFFIXES:
            return self._pillow(band.path)[band.index - 1, ys, xs]
        from rasterio.windows import Window

        win = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        return self._dataset(band.path).read(band.index, window=win)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        cs, ys, xs = (k.indices(n) for k, n in zip(key, self.shape))
        ys_s, xs_s = slice(ys[0], ys[1]), slice(xs[0], xs[1])
        out = np.empty((len(range(*cs)), ys[1] - ys[0], xs[1] - xs[0]), self.dtype)
        for o, c in enumerate(range(*cs)):
            band = self.bands[c]
            data = self._read_band(band, ys_s, xs_s).astype(self.dtype, copy=False)
            if band.nodata is not None and self.nodata is not None and band.nodata != self.nodata:
                data = np.where(data == band.dtype.type(band.nodata), self.dtype.type(self.nodata), data)
            out[o] = data
        return out


@contextmanager
def small_gdal_cache(nbytes: int = 64 * 2**20):
    """Cap GDAL's block cache while converting: each tile is read once, so the cache (5 % of
    RAM by default, process-wide) only grows RSS with the raster (1.3 GB for 20k x 20k)."""
    from rasterio.env import get_gdal_config, set_gdal_config

    before = get_gdal_config("GDAL_CACHEMAX")
    set_gdal_config("GDAL_CACHEMAX", nbytes)
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)


def common_nodata(bands: Sequence[BandRef], dtype: np.dtype) -> float | None:
    """One nodata value for bands that may each declare their own (NC Landsat: -99999, -32768)."""
    values = {b.nodata for b in bands if b.nodata is not None}
    if not values:
        return None
    if len(values) == 1:
        return values.pop()
    if np.issubdtype(dtype, np.floating):
        return math.nan
    return min(values)  # integer stacks: the most negative sentinel of the inputs
