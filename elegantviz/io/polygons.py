"""Labels as polygons, one per connected region, for GeoPackage and GeoJSON.

The labels are polygonised block by block (rasterio.features.shapes, 4-connected, so every
polygon is valid); the pieces that touch an inner block edge are joined with their neighbours
(a union per class in pixel coordinates, where pixel edges meet exactly) and split again into
connected polygons. Only then are they put into map coordinates with the scene's transform.
Memory is a block plus the polygons, never the whole label image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pyogrio.raw
import shapely
from rasterio.features import shapes
from shapely.geometry import shape
from tqdm.auto import tqdm

from elegantviz.errors import InputError
from elegantviz.io.blocks import block_starts
from elegantviz.io.cog import check_output_file

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


@dataclass
class Layer:
    """Polygons (pixel coordinates) and their attribute columns, ready to write."""

    geometries: list[shapely.Geometry]
    columns: dict[str, list]


def label_polygons(labels: da.Array, ids: list[int], progress: bool = True, desc: str = "polygons"
                   ) -> list[tuple[int, shapely.Polygon]]:
    """(class id, polygon in pixel coordinates) of every 4-connected region of the classes ``ids``."""
    ids_set = set(int(i) for i in ids)
    starts = block_starts(labels.chunks)
    h, w = labels.shape
    done: list[tuple[int, shapely.Polygon]] = []
    open_pieces: dict[int, list[shapely.Polygon]] = {}
    blocks = [(i, j) for i in range(len(starts[0])) for j in range(len(starts[1]))]
    for i, j in tqdm(blocks, desc=desc, unit="block", disable=not progress):
        block = np.asarray(labels.blocks[i, j].compute())
        y0, x0 = starts[0][i], starts[1][j]
        wanted = np.isin(block, list(ids_set))
        if not wanted.any():
            continue
        for geom, value in shapes(block, mask=wanted, connectivity=4):
            poly = shapely.affinity.translate(shape(geom), x0, y0)
            minx, miny, maxx, maxy = poly.bounds
            inner_edge = (minx == x0 > 0) or (miny == y0 > 0) or (maxx == x0 + block.shape[1] < w) \
                or (maxy == y0 + block.shape[0] < h)
            (open_pieces.setdefault(int(value), []) if inner_edge else done).append(
                poly if inner_edge else (int(value), poly))
    for value, pieces in open_pieces.items():
        joined = shapely.union_all(pieces)
        done.extend((value, p) for p in getattr(joined, "geoms", [joined]))
    done.sort(key=lambda vp: (-vp[1].area, vp[0], vp[1].bounds))
    return done


def to_map(geom: shapely.Geometry, transform: list[float] | None) -> shapely.Geometry:
    """Pixel (x right, y down) to map coordinates with an affine (a, b, c, d, e, f)."""
    if not transform:
        return geom
    a, b, c, d, e, f = transform[:6]
    return shapely.affinity.affine_transform(geom, [a, b, d, e, c, f])


def write_layer(out: str | Path, layer: Layer, crs: str | None, transform: list[float] | None,
                simplify: float = 0.0, name: str = "labels", overwrite: bool = False) -> Path:
    """Write polygons (pixel coordinates in ``layer``) in map coordinates, atomically.

    ``simplify`` is a tolerance in map units (pixels when not georeferenced); each polygon is
    simplified on its own, keeping its topology valid. Columns ``area`` (map units squared) and
    ``area_px`` are added.
    """
    out = Path(out)
    driver = DRIVERS.get(out.suffix.lower())
    if driver is None:
        raise InputError(f"{out}: unknown vector format; use .gpkg or .geojson")
    check_output_file(out, overwrite)
    if simplify < 0:
        raise InputError(f"--simplify {simplify}: must be >= 0")
    geoms = [to_map(g, transform) for g in layer.geometries]
    if simplify:
        geoms = [g.simplify(simplify, preserve_topology=True) for g in geoms]
    columns = {**layer.columns, "area": [float(g.area) for g in geoms],
               "area_px": [int(round(g.area)) for g in layer.geometries]}
    multi = [g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g]) for g in geoms]
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    tmp.unlink(missing_ok=True)
    fields = list(columns)
    data = [np.asarray(columns[f], dtype=object if isinstance(columns[f][0] if columns[f] else 0, str) else None)
            for f in fields]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # the caller says so
            pyogrio.raw.write(tmp, geometry=np.asarray(shapely.to_wkb(multi), dtype=object), field_data=data,
                              fields=fields, layer=name, driver=driver, geometry_type="MultiPolygon", crs=crs)
        tmp.replace(out)
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
