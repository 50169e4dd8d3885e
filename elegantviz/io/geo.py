"""Lazy window readers over rasters: GeoTIFF/COG and friends through rasterio, PNG/JPEG through Pillow.

A ``RasterSource`` looks like a read-only (c, y, x) numpy array to ``dask.array.from_array``
and reads only the window asked for, so converting a raster never holds it in memory. Each
thread opens its own rasterio handles (GDAL datasets are not thread-safe). Damage is reported
as an ``InputError`` naming the file: a GeoTIFF whose blocks run past the end of the file
(truncated) by ``describe``, a block that does not decode (bit rot) when its window is read.
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


def _pixel_type(path: Path, name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "buif":
        raise InputError(f"{path}: pixel type {name} is not supported (whole or real numbers only)")
    return dtype


def _first_line(e: BaseException) -> str:
    """The innermost cause's message, on one line (GDAL chains three exceptions per read error)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return " ".join(str(e).split()) or type(e).__name__


def _check_tiff_extent(path: Path, ds) -> None:
    """Refuse a GeoTIFF whose pixel blocks run past the end of the file (an interrupted copy):
    GDAL opens it happily and fails only on the first missing window, maybe hours in."""
    if ds.driver != "GTiff":
        return
    size, end = path.stat().st_size, 0
    try:
        count = 1 if ds.interleaving is not None and ds.interleaving.name == "pixel" else ds.count
        for b, (h, w) in zip(range(1, count + 1), ds.block_shapes):
            for j in range(math.ceil(ds.height / h)):
                for i in range(math.ceil(ds.width / w)):
                    off = ds.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=b)
                    n = ds.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=b)
                    if off and n:  # sparse files leave blocks unwritten
                        end = max(end, int(off) + int(n))
    except Exception:  # a layout this check does not know: the window reads still catch damage
        return
    if end > size:
        raise InputError(f"{path}: truncated or corrupt: its pixel blocks run to byte {end:,} "
                         f"but the file has {size:,} bytes (an interrupted download or copy?)")


def describe(path: str | Path) -> RasterMeta:
    """Size, georeferencing and bands of one raster file, without reading its pixels.

    Refuses (``InputError``, naming the file) what no window could be read from: no file, a
    directory, not a raster, a zero-size raster, complex pixels, a non-finite geotransform,
    and a GeoTIFF truncated short of its pixel blocks.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a raster")
    if path.suffix.lower() in PILLOW_SUFFIXES:
        with _pillow_image(path) as im:
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
            if t is not None and not all(math.isfinite(v) for v in t):
                raise InputError(f"{path}: its geotransform {t} is not finite")
            nd = ds.nodatavals
            bands = tuple(
                BandRef(path, i + 1, ds.descriptions[i] or (path.stem if ds.count == 1 else f"band {i + 1}"),
                        _pixel_type(path, ds.dtypes[i]), None if nd[i] is None else float(nd[i]))
                for i in range(ds.count)
            )
            meta = RasterMeta(ds.height, ds.width, crs, t, bands)
            if meta.height and meta.width and bands:
                _check_tiff_extent(path, ds)
    if meta.height == 0 or meta.width == 0 or not meta.bands:
        raise InputError(f"{path}: zero-size raster ({meta.height} x {meta.width}, {len(meta.bands)} bands)")
    return meta


# --- the grid and the nodata value ------------------------------------------------------------
def crs_label(wkt: str | None) -> str:
    """'EPSG:32614', else the CRS's name, else 'no CRS'."""
    if not wkt:
        return "no CRS"
    from rasterio.crs import CRS

    epsg = CRS.from_wkt(wkt).to_epsg()
    return f"EPSG:{epsg}" if epsg else (wkt.split('"')[1] if '"' in wkt else "a custom CRS")


def transform_text(t: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in t) + ")"


def grid_difference(a: RasterMeta, b: RasterMeta) -> tuple[str, str, str] | None:
    """How ``b``'s grid differs from ``a``'s, as (what, b's, a's): ('CRS', 'EPSG:4326',
    'EPSG:32614'), ('size', ...) or ('geotransform', ...); None when they match.

    Only what both files declare is compared: a file without georeferencing (a PNG) fits any
    grid of its size. Origins may differ by 1/1000 of a pixel and pixel sizes by 1 part in
    a million (rounding in the files' doubles), no more.
    """
    if (a.height, a.width) != (b.height, b.width):
        return "size", f"{b.height} x {b.width}", f"{a.height} x {a.width}"
    if a.crs and b.crs:
        from rasterio.crs import CRS

        if CRS.from_wkt(a.crs) != CRS.from_wkt(b.crs):
            return "CRS", crs_label(b.crs), crs_label(a.crs)
    if a.transform and b.transform:
        ta, tb = np.asarray(a.transform, np.float64), np.asarray(b.transform, np.float64)
        pixel = max(abs(ta[0]), abs(ta[1]), abs(ta[3]), abs(ta[4]), 1e-300)
        scale_ok = np.all(np.abs(ta[[0, 1, 3, 4]] - tb[[0, 1, 3, 4]]) <= 1e-6 * pixel)
        origin_ok = np.all(np.abs(ta[[2, 5]] - tb[[2, 5]]) <= 1e-3 * pixel)
        if not (scale_ok and origin_ok):
            return "geotransform", transform_text(b.transform), transform_text(a.transform)
    return None


def dtype_range(dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return f"whole numbers {info.min}..{info.max}"
    if dtype == np.bool_:
        return "0 and 1"
    info = np.finfo(dtype)
    return f"NaN and numbers from {float(info.min):.7g} to {float(info.max):.7g}"


def stored_nodata(value: float | None, dtype: np.dtype) -> float | None:
    """``value`` as pixels of ``dtype`` hold it (float32 has no -9999.1: it keeps -9999.0996),
    so comparisons in float64 find the nodata pixels; None when no pixel of ``dtype`` can hold it.
    For float pixels, an infinite nodata is NaN: every non-finite pixel is nodata."""
    if value is None:
        return None
    value = float(value)
    if np.issubdtype(dtype, np.floating):
        if not math.isfinite(value):
            return math.nan
        with np.errstate(over="ignore"):
            held = float(dtype.type(value))
        return held if math.isfinite(held) else None
    if not value.is_integer():  # NaN, infinities and fractions
        return None
    lo, hi = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype != np.bool_ else (0, 1)
    return value if lo <= value <= hi else None


# --- reading ----------------------------------------------------------------------------------
class RasterSource:
    """A (c, y, x) lazy array over bands of one or more rasters with the same grid.

    With ``finite`` (float pixels), infinite pixels are read as ``nodata`` (NaN when None) and
    ``nan_pixels`` / ``infinite_pixels`` count what was read (each window is counted when read).
    """

    def __init__(self, bands: Sequence[BandRef], height: int, width: int, nodata: float | None,
                 finite: bool = False):
        self.bands = tuple(bands)
        self.dtype = np.result_type(*[b.dtype for b in self.bands])
        self.shape = (len(self.bands), height, width)
        self.ndim = 3
        self.nodata = nodata
        self.finite = finite and np.issubdtype(self.dtype, np.floating)
        self.nan_pixels = self.infinite_pixels = 0
        self._local = threading.local()
        self._pil_cache: dict[Path, np.ndarray] = {}
        self._pil_lock = threading.Lock()
        self._count_lock = threading.Lock()

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
                try:
                    with _pillow_image(path) as im:
                        a = np.asarray(im)
                except (OSError, SyntaxError, ValueError, EOFError) as e:
                    raise InputError(f"{path}: unreadable or corrupt image data ({' '.join(str(e).split())})") from None
                self._pil_cache[path] = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
            return self._pil_cache[path]

    def _read_band(self, band: BandRef, ys: slice, xs: slice) -> np.ndarray:
        if band.path.suffix.lower() in PILLOW_SUFFIXES:
            return self._pillow(band.path)[band.index - 1, ys, xs]
        from rasterio.windows import Window

        win = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        try:
            return self._dataset(band.path).read(band.index, window=win)
        except Exception as e:
            if not type(e).__module__.startswith("rasterio"):  # GDAL's errors: RasterioIOError, CPLE_*
                raise
            raise InputError(
                f"{band.path}: unreadable or corrupt pixel data in band {band.index}, window rows "
                f"{ys.start}:{ys.stop}, columns {xs.start}:{xs.stop} ({_first_line(e)})"
            ) from None

    def _count_nonfinite(self, data: np.ndarray) -> np.ndarray:
        nan, inf = np.isnan(data), np.isinf(data)
        n_nan, n_inf = int(nan.sum()), int(inf.sum())
        with self._count_lock:
            self.nan_pixels += n_nan
            self.infinite_pixels += n_inf
        if n_inf:
            data = np.where(inf, np.nan if self.nodata is None else self.nodata, data).astype(self.dtype)
        return data

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        cs, ys, xs = (k.indices(n) for k, n in zip(key, self.shape))
        ys_s, xs_s = slice(ys[0], ys[1]), slice(xs[0], xs[1])
        out = np.empty((len(range(*cs)), ys[1] - ys[0], xs[1] - xs[0]), self.dtype)
        for o, c in enumerate(range(*cs)):
            band = self.bands[c]
            data = self._read_band(band, ys_s, xs_s).astype(self.dtype, copy=False)
            if self.finite:
                data = self._count_nonfinite(data)
            own = stored_nodata(band.nodata, band.dtype)  # None: no pixel of the band can be it
            if own is not None and self.nodata is not None and not math.isnan(own) and own != self.nodata:
                data = np.where(data == own, self.dtype.type(self.nodata), data)
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
    """One nodata value for bands that may each declare their own (NC Landsat: -99999, -32768).

    A band's value that its own pixels cannot hold (-1 on uint8) marks no pixel, and is dropped.
    """
    values = {stored_nodata(b.nodata, b.dtype) for b in bands} - {None}
    if any(math.isnan(v) for v in values):  # NaN != NaN: one NaN stands for them all
        values = {v for v in values if not math.isnan(v)} | {math.nan}
    if not values:
        return None
    if len(values) == 1:
        return values.pop()
    if np.issubdtype(dtype, np.floating):
        return math.nan
    return min(values)  # integer stacks: the most negative sentinel of the inputs
