"""`elegantviz export SCENE`: labels and error regions out of the store, into GIS formats.

- ``.tif``: the labels as a Cloud-Optimised GeoTIFF (:mod:`elegantviz.io.cog`);
- ``.gpkg`` / ``.geojson``: one polygon per connected region, with class name, id and area
  (:mod:`elegantviz.io.polygons`), optionally only some classes;
- ``--regions``: the confusion regions of an evaluation (the regions file, or those kept in
  ``labels/error``), one polygon each, with their pair, area, mean margin and hard share.

Everything is in the scene's CRS; a scene without one exports in pixel coordinates (x right,
y down) and the returned note says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.errors
import shapely
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from elegantviz.analysis.regions import EIGHT, Region, load_regions, regions_in_store, regions_path
from elegantviz.errors import InputError, writing
from elegantviz.io.cog import write_cog
from elegantviz.io.polygons import DRIVERS, Layer, label_polygons, write_layer
from elegantviz.io.schema import LABELS, PRED, error_name
from elegantviz.io.store import open_scene

RASTER_SUFFIXES = (".tif", ".tiff")


def export_scene(source: str, out: str | None, labels: str = PRED, regions: bool = False, pred: str = PRED,
                 classes: str | None = None, simplify: float = 0.0, overwrite: bool = False,
                 progress: bool = True) -> tuple[Path, str]:
    """`elegantviz export SCENE`: labels (``classes``: comma-separated names) or, with
    ``regions``, an evaluation's confusion regions, into ``out``; (path, note)."""
    if not out:
        raise InputError(f"{source}: give the file to write with --out (.tif, .gpkg or .geojson)")
    names = None if classes is None else [c for c in classes.split(",") if c.strip()]
    if regions and names is not None:
        raise InputError("--classes is for --labels; --regions writes every confusion pair")
    if names == []:
        raise InputError(f"--classes {classes!r} names no class; e.g. --classes river,pond")
    with writing(out, also=(pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError)):
        if regions:
            return export_regions(source, pred, out, simplify, overwrite, progress)
        return export_labels(source, labels, out, names, simplify, overwrite, progress)


def georeference_note(scene) -> str:
    if scene.crs and scene.transform:
        return ""
    return "the scene is not georeferenced: coordinates are pixels (x right, y down)"


def export_labels(scene_path: str | Path, labels: str, out: str | Path, classes: list[str] | None = None,
                  simplify: float = 0.0, overwrite: bool = False, progress: bool = True) -> tuple[Path, str]:
    """``labels/<labels>`` as a COG or as polygons, by the suffix of ``out``; (path, note)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in RASTER_SUFFIXES and suffix not in DRIVERS:
        raise InputError(f"{out}: unknown format; use .tif (COG), .gpkg or .geojson")
    scene = open_scene(scene_path)
    if labels not in scene.labels:
        raise InputError(f"{scene_path}: has no {LABELS}/{labels} (has: {', '.join(scene.labels) or 'none'})")
    table = scene.label_classes(labels) or scene.classes
    data = scene.label(labels)
    if suffix in RASTER_SUFFIXES:
        if classes:
            raise InputError("--classes applies to polygons (.gpkg, .geojson); a GeoTIFF holds every class")
        if simplify:
            raise InputError("--simplify applies to polygons (.gpkg, .geojson); a GeoTIFF keeps every pixel")
        return write_cog(out, data, table, scene.crs, scene.transform, overwrite, progress), georeference_note(scene)
    if table is None:
        raise InputError(f"{scene_path}: {LABELS}/{labels} has no class table to name the polygons")
    ids = [table.id_of(c.strip()) for c in classes] if classes else list(range(table.num_classes))
    polys = label_polygons(data, ids, progress, desc=f"polygons {labels}")
    layer = Layer([p for _, p in polys], {"class_id": [v for v, _ in polys],
                                          "class_name": [table.names[v] for v, _ in polys]})
    path = write_layer(out, layer, scene.crs, scene.transform, simplify, name=labels, overwrite=overwrite)
    return path, georeference_note(scene)


def scene_regions(scene_path: str | Path, pred: str) -> list[Region]:
    """The regions of the last evaluation: the regions file beside the store, else ``labels/error``'s."""
    path = regions_path(scene_path, pred)
    if path.is_file():
        return load_regions(path)
    regions = regions_in_store(str(scene_path), error_name(pred))
    if regions is None:
        raise InputError(f"{scene_path}: no error regions; run `elegantviz evaluate {scene_path}"
                         f"{'' if pred == PRED else ' --pred ' + pred}` first")
    return regions


def region_polygon(codes: np.ndarray, code: int, region: Region) -> shapely.Geometry:
    """The polygon (pixel coordinates) of one region, from the error codes of its bbox window."""
    y0, x0 = region.bbox[:2]
    lab, n = ndimage.label(codes == code, structure=EIGHT)
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    full = (0, 0, codes.shape[0], codes.shape[1])
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if areas[k] == region.area and (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop) == full:
            mask = lab == k
            parts = [shape(g) for g, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=8)]
            return shapely.affinity.translate(shapely.union_all(parts), x0, y0)
    raise InputError(f"region {region.pair} at bbox {list(region.bbox)} ({region.area} px) is not in "
                     f"the error labels; the regions file is older than them: evaluate again")


def export_regions(scene_path: str | Path, pred: str, out: str | Path, simplify: float = 0.0,
                   overwrite: bool = False, progress: bool = True) -> tuple[Path, str]:
    """The confusion regions of an evaluation as polygons with pair, area, margin and hard share."""
    scene = open_scene(scene_path)
    err = error_name(pred)
    if err not in scene.labels:
        raise InputError(f"{scene_path}: has no {LABELS}/{err}; run `elegantviz evaluate` first")
    regions = scene_regions(scene_path, pred)
    table = scene.label_classes(err)
    codes = {name: k for k, name in enumerate(table.names)} if table else {}
    error = scene.label(err)
    geoms, columns = [], {"pair": [], "true_class": [], "predicted_class": [], "margin": [], "hard_share": []}
    for r in regions:
        if r.pair not in codes:
            raise InputError(f"{scene_path}: region pair {r.pair!r} is not in {LABELS}/{err} "
                             f"(has: {', '.join(codes)}); evaluate again")
        y0, x0, y1, x1 = r.bbox
        geoms.append(region_polygon(np.asarray(error[y0:y1, x0:x1]), codes[r.pair], r))
        columns["pair"].append(r.pair)
        columns["true_class"].append(r.truth)
        columns["predicted_class"].append(r.predicted)
        columns["margin"].append(float(r.means.get("margin", np.nan)))
        columns["hard_share"].append(float(r.means.get("hard", np.nan)))
    path = write_layer(out, Layer(geoms, columns), scene.crs, scene.transform, simplify, name=f"{err}_regions",
                       overwrite=overwrite)
    return path, georeference_note(scene)
