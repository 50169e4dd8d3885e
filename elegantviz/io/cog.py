"""Labels of a scene store as a Cloud-Optimised GeoTIFF, for QGIS and any GDAL tool.

GDAL's COG driver only copies an existing dataset, so the labels are first written window by
window (one store chunk at a time; memory does not grow with the scene) into a tiled GeoTIFF
beside the output, which the COG driver then copies block by block, adding overviews (mode
resampling, right for classes). The result carries the scene's CRS and transform, a colour
table from the class palette and nodata = the ignore value; it appears under its final name
only when complete.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window
from tqdm.auto import tqdm

from elegantviz.classes import ClassTable
from elegantviz.errors import InputError
from elegantviz.io.blocks import block_starts

BLOCK = 512  # COG tile side
CACHE_MB = 64  # GDAL's block cache (by default 5 % of RAM, so it grew with the scene)


def colour_table(table: ClassTable | None) -> dict[int, tuple[int, int, int, int]]:
    """Class id -> RGBA for the GeoTIFF colour table; the ignore value is transparent."""
    colours = {c.id: (*c.color, 255) for c in table.classes} if table else {}
    colours[table.ignore_index if table else 255] = (0, 0, 0, 0)
    return colours


def check_output_file(out: Path, overwrite: bool) -> None:
    """An existing output is replaced only when asked; its folder must exist."""
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")


def write_cog(out: str | Path, labels: da.Array, table: ClassTable | None, crs: str | None,
              transform: list[float] | None, overwrite: bool = False, progress: bool = True) -> Path:
    """Write (y, x) uint8 ``labels`` as a COG at ``out``; returns the path."""
    out = Path(out)
    check_output_file(out, overwrite)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise InputError(f"{out}: expected (y, x) uint8 labels, got {labels.shape} {labels.dtype}")
    part = out.with_name(f".{out.name}.part.tif")
    tmp = out.with_name(f".{out.name}.tmp")
    nodata = table.ignore_index if table else 255
    profile = dict(driver="GTiff", height=labels.shape[0], width=labels.shape[1], count=1, dtype="uint8",
                   nodata=nodata, tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                   BIGTIFF="IF_SAFER")
    if crs:
        profile["crs"] = crs
    if transform:
        profile["transform"] = Affine(*transform[:6])
    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=CACHE_MB):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(part, "w", **profile) as dst:
                _write_blocks(dst, labels, progress, out.name)
                dst.write_colormap(1, colour_table(table))
                if table:
                    dst.update_tags(1, **{f"class_{c.id}": c.name for c in table.classes})
            rasterio.shutil.copy(part, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(BLOCK),
                                 OVERVIEW_RESAMPLING="MODE", BIGTIFF="IF_SAFER")
        tmp.replace(out)
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e})") from None
    finally:
        for p in (part, tmp):
            p.unlink(missing_ok=True)
    return out


def _write_blocks(dst, labels: da.Array, progress: bool, desc: str) -> None:
    starts = block_starts(labels.chunks)
    blocks = [(i, j) for i in range(len(starts[0])) for j in range(len(starts[1]))]
    for i, j in tqdm(blocks, desc=f"export {desc}", unit="block", disable=not progress):
        block = np.asarray(labels.blocks[i, j].compute())
        dst.write(block, 1, window=Window(starts[1][j], starts[0][i], block.shape[1], block.shape[0]))
