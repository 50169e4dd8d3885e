"""Convert rasters (and an optional class mask) into a scene store, window by window.

GeoTIFF/COG and anything GDAL reads go through rasterio windowed reads, so peak memory does
not grow with the raster; PNG and JPEG (which cannot be read by window) are decoded once with
Pillow. Mask values are mapped through a class table; values outside it and nodata become
the ignore value 255 and are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np

from elegantviz.classes import IGNORE_INDEX, ClassTable, get_class_table, table_from_values
from elegantviz.errors import InputError
from elegantviz.io.blocks import map_blocks_collect
from elegantviz.io.geo import BandRef, RasterMeta, RasterSource, common_nodata, describe, small_gdal_cache
from elegantviz.io.store import DEFAULT_TILE, Scene, create_scene


@dataclass
class MaskReport:
    """What happened to the mask's pixels on conversion."""

    path: str
    unknown_pixels: int = 0  # values not in the class table, mapped to ignore
    nodata_pixels: int = 0  # nodata (or the table's ignored values), mapped to ignore
    unknown_values: list[int] = field(default_factory=list)


@dataclass
class ConvertResult:
    scene: Scene
    mask: MaskReport | None


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


def _gather_bands(sources: Sequence[Path], bands: list[int] | None) -> tuple[RasterMeta, list[BandRef]]:
    metas = [describe(p) for p in sources]
    first = metas[0]
    for p, m in zip(sources[1:], metas[1:]):
        if (m.height, m.width) != (first.height, first.width):
            raise InputError(
                f"{p}: is {m.height} x {m.width} but {sources[0]} is {first.height} x {first.width}; "
                "stacked bands must share one grid"
            )
        if first.transform and m.transform and not np.allclose(m.transform, first.transform):
            raise InputError(f"{p}: its geotransform differs from {sources[0]}'s; stacked bands must share one grid")
    stacked = [b for m in metas for b in m.bands]
    if bands is not None:
        for i in bands:
            if not 1 <= i <= len(stacked):
                what = str(sources[0]) if len(sources) == 1 else f"the {len(sources)} stacked files"
                raise InputError(f"band {i} is out of range: {what} has {len(stacked)} band(s), numbered from 1")
        stacked = [stacked[i - 1] for i in bands]
    return first, stacked


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
    flat = flat[~np.isnan(flat)]
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
    mask value becomes a class). ``strict`` refuses masks with values outside the table.
    ``nodata`` overrides what the files declare (Landsat 8 L1 uses 0 as fill without saying
    so). Running the same conversion again after an interruption resumes it.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    if not paths:
        raise InputError("no input raster given")
    with small_gdal_cache():
        return _convert(paths, out, bands, band_names, mask, classes, strict, nodata, tile, overwrite, progress)


def _convert(paths, out, bands, band_names, mask, classes, strict, nodata, tile, overwrite, progress) -> ConvertResult:
    first, refs = _gather_bands(paths, parse_band_list(bands))
    source = RasterSource(refs, first.height, first.width, nodata=None)
    source.nodata = nodata if nodata is not None else common_nodata(refs, source.dtype)
    if band_names:
        if len(band_names) != len(refs):
            raise InputError(f"{len(band_names)} band names given for {len(refs)} bands")
        names = list(band_names)
    else:
        names = [b.name for b in refs]
    table = get_class_table(classes) if classes is not None else None

    mask_arr, mask_report, mask_nodata, rgb = None, None, None, False
    if mask is not None:
        mpath = Path(mask)
        mmeta = describe(mpath)
        if (mmeta.height, mmeta.width) != (first.height, first.width):
            raise InputError(
                f"{mpath}: mask is {mmeta.height} x {mmeta.width} but the image is {first.height} x {first.width}"
            )
        rgb = len(mmeta.bands) == 3
        if len(mmeta.bands) not in (1, 3):
            raise InputError(f"{mpath}: a mask needs 1 band (class values) or 3 (RGB colours), it has {len(mmeta.bands)}")
        if rgb and table is None:
            raise InputError(f"{mpath}: an RGB mask needs --classes to know which colour is which class")
        mask_nodata = mmeta.bands[0].nodata
        msrc = RasterSource(mmeta.bands, mmeta.height, mmeta.width, nodata=mask_nodata)
        mask_arr = da.from_array(msrc, chunks=(len(mmeta.bands), tile, tile), asarray=False, lock=False,
                                 meta=np.empty((0, 0, 0), msrc.dtype))
        if table is None:
            parts = map_blocks_collect(mask_arr, lambda b: _mask_values(b, mask_nodata), "mask values", progress)
            values = np.unique(np.concatenate(parts)) if parts else np.empty(0)
            if len(values) > 255 or (len(values) and not np.all(values == np.round(values))):
                raise InputError(f"{mpath}: {len(values)} distinct mask values; give --classes to map them")
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
        "nodata": nodata,
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
    return ConvertResult(scene, mask_report)


def nodata_text(v: float | None) -> str:
    return "none" if v is None else ("NaN" if math.isnan(v) else f"{v:g}")
