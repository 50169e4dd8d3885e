"""Convert rasters (and an optional class mask) into a scene store, window by window.

GeoTIFF/COG and anything GDAL reads go through rasterio windowed reads, so peak memory does
not grow with the raster; PNG and JPEG (which cannot be read by window) are decoded once with
Pillow. Mask values are mapped through a class table; values outside it and nodata become
the ignore value 255 and are counted. Every check on the inputs and the output path runs
before anything is written, except the damage only a window's read reveals (bit rot).
"""

from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np

from elegantviz.classes import IGNORE_INDEX, ClassTable, get_class_table, table_from_values
from elegantviz.errors import InputError
from elegantviz.io.blocks import map_blocks_collect
from elegantviz.io.geo import (BandRef, RasterMeta, RasterSource, common_nodata, describe, dtype_range,
                               grid_difference, small_gdal_cache, stored_nodata)
from elegantviz.io.schema import KEY
from elegantviz.io.store import DEFAULT_TILE, Scene, create_scene

MIN_TILE, MAX_TILE = 16, 8192  # a chunk is read and written whole: 8192² x 4 float32 bands is 1 GiB


@dataclass
class MaskReport:
    """What happened to the mask's pixels on conversion."""

    path: str
    unknown_pixels: int = 0  # values not in the class table, mapped to ignore
    nodata_pixels: int = 0  # nodata (or the table's ignored values), mapped to ignore
    unknown_values: list[int] = field(default_factory=list)


@dataclass
class ImageReport:
    """Non-finite pixels of a float image, all stored as nodata (counted as their windows are
    read: a resumed conversion counts only the windows it had left)."""

    nodata: float | None  # the scene's nodata: NaN for float images that declare none
    nan_pixels: int = 0  # NaN pixels (nodata as they are)
    infinite_pixels: int = 0  # +-inf pixels, stored as the nodata value


@dataclass
class ConvertResult:
    scene: Scene
    mask: MaskReport | None
    image: ImageReport | None = None


def parse_band_list(spec: str | Sequence[int] | None) -> list[int] | None:
    """'3,2,1,4' -> [3, 2, 1, 4] (1-based, as GDAL counts bands)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            idx = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError:
            raise InputError(f"--bands {spec!r}: expected comma-separated band numbers like 3,2,1,4") from None
    else:
        idx = [int(i) for i in spec]
    if not idx:
        raise InputError("--bands: no band given")
    return idx


def check_tile(tile: object) -> int:
    """The chunk side: an even whole number from 16 (the pyramid halves chunks of 2 x 2 tiles)
    to 8192 (each chunk is read whole)."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)):
        raise InputError(f"--chunk {tile!r}: expected a whole number of pixels")
    if not MIN_TILE <= tile <= MAX_TILE or tile % 2:
        raise InputError(f"--chunk {tile}: the chunk side must be an even number of pixels from {MIN_TILE} "
                         f"to {MAX_TILE} (default {DEFAULT_TILE})")
    return int(tile)


def _is_scene_group(meta_file: Path) -> bool:
    try:
        doc = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attrs, dict) and doc.get("node_type") == "group" and isinstance(attrs.get(KEY), dict)


def check_output(out: str | Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output whose (re)creation would delete anything but a scene store of ours.

    ``out`` may be a new path, an empty folder, or a scene store (finished or not) that holds
    nothing else; a plain file, a folder of other files (``.`` included), a zarr group of
    someone else's, or a store that holds an input raster is refused, ``overwrite`` or not.
    Remote URLs are left to the store layer.
    """
    text = str(out)
    if not text.strip():
        raise InputError("empty output path: name the scene store to write, e.g. scene.zarr")
    if "://" in text:
        return
    path = Path(text)
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"{out}: is a broken symbolic link; remove it or choose another output")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise InputError(f"{out}: cannot be created: {parent} is a file, not a folder")
        return
    if path.resolve() == Path.cwd().resolve() or path.resolve() in Path.cwd().resolve().parents:
        raise InputError(f"{out}: is the current folder (or holds it); name a new path for the store, e.g. scene.zarr")
    if not path.is_dir():
        raise InputError(f"{out}: exists and is a file, not a scene store; convert writes only a new path "
                         "or replaces a scene store (--overwrite or not): choose another output")
    entries = sorted(p.name for p in path.iterdir())
    if entries and not _is_scene_group(path / "zarr.json"):
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        raise InputError(f"{out}: exists and is not a scene store (it holds {entries[0]!r}{more}); convert writes "
                         "only a new path or replaces a scene store (--overwrite or not): choose another output")
    foreign = [e for e in entries if e != "zarr.json" and not (path / e / "zarr.json").is_file()]
    if foreign:
        raise InputError(f"{out}: a scene store that also holds {', '.join(map(repr, foreign[:3]))}, which is not "
                         "part of it; move that out before converting into it")
    inside = [p for p in inputs if path.resolve() in p.resolve().parents]
    if inside:
        raise InputError(f"{inside[0]}: lies inside the output {out}, which the conversion would overwrite; "
                         "move it out or choose another output")


def _gather_bands(sources: Sequence[Path], bands: list[int] | None) -> tuple[RasterMeta, list[BandRef]]:
    metas = [describe(p) for p in sources]
    first = metas[0]
    for p, m in zip(sources[1:], metas[1:]):
        diff = grid_difference(first, m)
        if diff is not None:
            what, mine, theirs = diff
            if what == "size":
                raise InputError(f"{p}: is {mine} but {sources[0]} is {theirs}; stacked bands must share one grid")
            raise InputError(f"{p}: its {what} is {mine} but {sources[0]}'s is {theirs}; "
                             "stacked bands must share one grid")
    if len(sources) > 1:  # --band FILE stacks single bands: a 4-band file would add four unnamed ones
        for p, m in zip(sources, metas):
            if len(m.bands) != 1:
                raise InputError(f"{p}: has {len(m.bands)} bands; stacked files (--band FILE) must have one band "
                                 "each (pick bands of one file with SRC --bands 3,2,1)")
    stacked = [b for m in metas for b in m.bands]
    if bands is not None:
        for i in bands:
            if not 1 <= i <= len(stacked):
                what = str(sources[0]) if len(sources) == 1 else f"the {len(sources)} stacked files"
                raise InputError(f"band {i} is out of range: {what} has {len(stacked)} band(s), numbered from 1")
        stacked = [stacked[i - 1] for i in bands]
    return first, stacked


def _image_nodata(paths: Sequence[Path], refs: Sequence[BandRef], dtype: np.dtype, nodata: float | None):
    """The scene's nodata: ``nodata`` (refused when the pixels cannot hold it), else what the
    files declare, else NaN for float pixels (NaN is nodata to every reader of a store)."""
    if nodata is not None:
        value = stored_nodata(nodata, dtype)
        if value is None:
            raise InputError(f"--nodata {nodata_text(nodata)}: {paths[0]} has {dtype} pixels, which hold "
                             f"{dtype_range(dtype)}; give a nodata value in that range")
        return value
    value = stored_nodata(common_nodata(refs, dtype), dtype)
    return math.nan if value is None and np.issubdtype(dtype, np.floating) else value


def _mask_counts(block: np.ndarray, table: ClassTable, nodata: float | None, rgb: bool):
    if rgb:
        ids, unknown, skipped = table.map_colors(block)
        values = np.empty(0)
    else:
        ids, unknown, skipped = table.map_values(block[0], nodata)
        raw = block[0][ids == IGNORE_INDEX]
        values = np.unique(raw[~np.isnan(raw.astype(np.float64))]) if unknown else np.empty(0)
    return unknown, skipped, values[:16]


def _mask_values(block: np.ndarray, nodata: float | None) -> np.ndarray:
    flat = block.astype(np.float64).ravel()
    flat = flat[np.isfinite(flat)]  # +-inf is no class: it is mapped to ignore and counted as unknown
    if nodata is not None:
        flat = flat[flat != nodata]
    return np.unique(flat)


def convert_raster(
    sources: str | Path | Sequence[str | Path],
    out: str | Path,
    bands: str | Sequence[int] | None = None,
    band_names: Sequence[str] | None = None,
    mask: str | Path | None = None,
    classes: str | ClassTable | None = None,
    strict: bool = False,
    nodata: float | None = None,
    tile: int = DEFAULT_TILE,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertResult:
    """Convert one raster, or several stacked single-band rasters, into a scene store.

    ``bands`` picks and reorders the stacked bands (1-based). With ``mask``, ``labels/gt`` is
    written through ``classes`` (a built-in name or a JSON path; without one, each distinct
    finite mask value becomes a class). ``strict`` refuses masks with values outside the table.
    The mask must be the image's size; when both declare a CRS or a geotransform, those must
    match the image's too (a mask without georeferencing, e.g. a PNG, is taken as it is).
    ``nodata`` overrides what the files declare (Landsat 8 L1 uses 0 as fill without saying
    so); it must be a value the pixels can hold. Float images keep NaN as nodata when they
    declare none, and their +-inf pixels are stored as nodata; ``result.image`` counts both.
    ``out`` must be a new path, an empty folder or a scene store (replaced only with
    ``overwrite``): see :func:`check_output`. ``tile`` is the chunk side, even, 16 to 8192.
    Damaged inputs are refused with the file named: truncated GeoTIFFs before anything is
    written, undecodable windows with the window. Running the same conversion again after an
    interruption resumes it.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    if not paths:
        raise InputError("no input raster given")
    tile = check_tile(tile)
    if nodata is not None:
        try:
            nodata = float(nodata)
        except (TypeError, ValueError):
            raise InputError(f"--nodata {nodata!r}: expected a number (or nan)") from None
    check_output(out, paths + ([Path(mask)] if mask is not None else []))
    with small_gdal_cache():
        try:
            return _convert(paths, out, bands, band_names, mask, classes, strict, nodata, tile, overwrite, progress)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR):
                raise
            raise InputError(f"{out}: cannot write the scene store ({e.strerror or e})") from None


def _open_mask(mpath: Path, first: RasterMeta, image_path: Path, table: ClassTable | None):
    mmeta = describe(mpath)
    diff = grid_difference(first, mmeta)
    if diff is not None and diff[0] == "size":
        raise InputError(f"{mpath}: mask is {diff[1]} but the image is {diff[2]} ({image_path})")
    if diff is not None:
        what, mine, theirs = diff
        raise InputError(f"{mpath}: the mask's {what} is {mine} but the image {image_path}'s is {theirs}; "
                         "reproject the mask onto the image's grid")
    if len(mmeta.bands) not in (1, 3):
        raise InputError(f"{mpath}: a mask needs 1 band (class values) or 3 (RGB colours), it has {len(mmeta.bands)}")
    rgb = len(mmeta.bands) == 3
    if rgb and table is None:
        raise InputError(f"{mpath}: an RGB mask needs --classes to know which colour is which class")
    declared, mtype = mmeta.bands[0].nodata, mmeta.bands[0].dtype
    # as the pixels hold it; an infinite nodata stays so (the mask's inf pixels are its nodata)
    mask_nodata = declared if declared is not None and math.isinf(declared) else stored_nodata(declared, mtype)
    return RasterSource(mmeta.bands, mmeta.height, mmeta.width, nodata=mask_nodata), rgb


def _convert(paths, out, bands, band_names, mask, classes, strict, nodata, tile, overwrite, progress) -> ConvertResult:
    first, refs = _gather_bands(paths, parse_band_list(bands))
    source = RasterSource(refs, first.height, first.width, nodata=None, finite=True)
    source.nodata = _image_nodata(paths, refs, source.dtype, nodata)
    if band_names:
        if len(band_names) != len(refs):
            raise InputError(f"{len(band_names)} band names given for {len(refs)} bands")
        names = [str(n) for n in band_names]
        blank = [i + 1 for i, n in enumerate(names) if not n.strip()]
        if blank:
            raise InputError(f"--band-names: band {blank[0]} has an empty name (names: {','.join(names)!r})")
    else:
        names = [b.name for b in refs]
    table = get_class_table(classes) if classes is not None else None

    mask_arr, mask_report, mask_nodata, rgb = None, None, None, False
    if mask is not None:
        mpath = Path(mask)
        msrc, rgb = _open_mask(mpath, first, paths[0], table)
        mask_nodata = msrc.nodata
        mask_arr = da.from_array(msrc, chunks=(msrc.shape[0], tile, tile), asarray=False, lock=False,
                                 meta=np.empty((0, 0, 0), msrc.dtype))
        if table is None:
            parts = map_blocks_collect(mask_arr, lambda b: _mask_values(b, mask_nodata), "mask values", progress)
            values = np.unique(np.concatenate(parts)) if parts else np.empty(0)
            if len(values) > 255 or (len(values) and not np.all(values == np.round(values))):
                raise InputError(f"{mpath}: {len(values)} distinct mask values; give --classes to map them")
            if not len(values):
                raise InputError(f"{mpath}: the mask has no class value (every pixel is nodata or not finite); "
                                 "check the mask, or give --classes")
            table = table_from_values(values, name=mpath.stem)
        counts = map_blocks_collect(mask_arr, lambda b: _mask_counts(b, table, mask_nodata, rgb), "mask check",
                                    progress)
        unknown_values = np.unique(np.concatenate([c[2] for c in counts])) if counts else np.empty(0)
        mask_report = MaskReport(
            path=str(mpath),
            unknown_pixels=sum(c[0] for c in counts),
            nodata_pixels=sum(c[1] for c in counts),
            unknown_values=[int(v) if float(v).is_integer() else float(v) for v in unknown_values[:16]],
        )
        if strict and mask_report.unknown_pixels:
            raise InputError(
                f"{mpath}: {mask_report.unknown_pixels} pixels have values outside class table "
                f"{table.name!r} (e.g. {mask_report.unknown_values}); refused because of --strict"
            )

    image = da.from_array(source, chunks=(len(refs), tile, tile), asarray=False, lock=False,
                          meta=np.empty((0, 0, 0), source.dtype))
    job = {
        "sources": [str(p.resolve()) for p in paths],
        "bands": [f"{b.path.name}:{b.index}" for b in refs],
        "mask": str(Path(mask).resolve()) if mask else None,
        "classes": table.name if table else None,
        "nodata": nodata if nodata is None or math.isfinite(nodata) else nodata_text(nodata),
        # non-finite as text: zarr.json stays JSON, and "NaN" == "NaN" on resume
    }
    scene = create_scene(
        out,
        image,
        bands=names,
        classes=table,
        crs=first.crs,
        transform=first.transform,
        nodata=source.nodata,
        source=", ".join(str(p) for p in paths),
        tile=tile,
        overwrite=overwrite,
        progress=progress,
        job=job,
        finalize=False,
    )
    if mask_arr is not None and "gt" not in scene.labels:
        assert table is not None
        fn = (lambda b: table.map_colors(b)[0]) if rgb else (lambda b: table.map_values(b[0], mask_nodata)[0])
        ids = mask_arr.map_blocks(fn, drop_axis=0, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
        scene.add_labels("gt", ids, classes=table, progress=progress)
    scene.finalize()
    return ConvertResult(scene, mask_report, ImageReport(source.nodata, source.nan_pixels, source.infinite_pixels))


def nodata_text(v: float | None) -> str:
    return "none" if v is None else ("NaN" if math.isnan(v) else f"{v:g}")
