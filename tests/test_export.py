"""`elegantviz export SCENE`: every output is read back (rasterio, pyogrio) and compared with the store."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import rasterize

from elegantviz.cli import main
from elegantviz.data.synthetic import POND, RIVER
from elegantviz.engine.evaluate import evaluate_scene
from elegantviz.io.polygons import label_polygons
from elegantviz.io.store import open_scene
from conftest import write_geotiff


@pytest.fixture
def georeferenced(tmp_path, riverworld_store):
    """A georeferenced copy of the riverworld scene (2 m pixels, EPSG:32614, chunks of 64) with a
    labels/pred that calls part of the river a pond, evaluated (labels/error, regions file)."""
    src = riverworld_store
    image, gt = np.asarray(src.image()), np.asarray(src.label("gt"))
    write_geotiff(tmp_path / "s.tif", image)
    write_geotiff(tmp_path / "s_mask.tif", gt)
    out = tmp_path / "geo.zarr"
    assert main(["convert", str(tmp_path / "s.tif"), str(out), "--mask", str(tmp_path / "s_mask.tif"),
                 "--classes", "riverworld", "--chunk", "64", "-q"]) == 0
    pred = gt.copy()
    river = np.argwhere(gt == RIVER)
    y, x = river[len(river) // 2]
    window = pred[max(0, y - 40): y + 40, max(0, x - 40): x + 40]
    window[window == RIVER] = POND
    pred[gt == POND] = RIVER
    open_scene(out, mode="a").add_labels("pred", pred, progress=False)
    evaluate_scene(out, progress=False)
    return out


def read_polygons(path):
    meta, _, geoms, fields = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(geoms), dict(zip(meta["fields"], fields))


def test_cog_reads_back_equal_with_crs_transform_colours(georeferenced, tmp_path, capsys):
    scene = open_scene(georeferenced)
    out = tmp_path / "pred.tif"
    assert main(["export", str(georeferenced), "--labels", "pred", "--out", str(out), "-q"]) == 0
    assert "not georeferenced" not in capsys.readouterr().out
    with rasterio.open(out) as d:
        assert d.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert d.profile["tiled"] and d.compression.name == "deflate"
        np.testing.assert_array_equal(d.read(1), np.asarray(scene.label("pred")))
        assert d.crs == rasterio.crs.CRS.from_user_input(scene.crs)
        assert tuple(d.transform)[:6] == pytest.approx(scene.transform)
        assert d.nodata == 255
        table = scene.classes
        cmap = d.colormap(1)
        for c in table.classes:
            assert cmap[c.id] == (*c.color, 255)
        assert cmap[255][3] == 0
        assert d.tags(1)[f"class_{RIVER}"] == "river"
    assert not list(tmp_path.glob(".pred.tif*")), "temporary files left behind"


def test_polygons_rasterize_back_to_the_labels(georeferenced, tmp_path):
    scene = open_scene(georeferenced)
    pred = np.asarray(scene.label("pred"))
    out = tmp_path / "water.gpkg"
    assert main(["export", str(georeferenced), "--out", str(out), "--classes", "river,pond", "-q"]) == 0
    meta, geoms, f = read_polygons(out)
    assert rasterio.crs.CRS.from_user_input(meta["crs"]) == rasterio.crs.CRS.from_user_input(scene.crs)
    assert set(f["class_name"]) == {"river", "pond"}
    back = rasterize(zip(geoms, f["class_id"]), out_shape=pred.shape, fill=255,
                     transform=rasterio.Affine(*scene.transform))
    water = np.isin(pred, [RIVER, POND])
    np.testing.assert_array_equal(back[water], pred[water])
    assert (back[~water] == 255).all()
    # 2 m pixels: areas in map units are 4x the pixel counts; pixel counts add up to the labels'
    np.testing.assert_allclose(f["area"], 4 * f["area_px"])
    assert f["area_px"].sum() == water.sum()
    assert all(g.is_valid for g in geoms)


def test_polygons_join_across_blocks(riverworld_store):
    """Polygonising in 64 px blocks gives the same regions as one block: pieces are joined."""
    labels = np.asarray(riverworld_store.label("gt"))
    whole = label_polygons(da.from_array(labels, chunks=labels.shape), [RIVER, POND], progress=False)
    blocked = label_polygons(da.from_array(labels, chunks=64), [RIVER, POND], progress=False)
    assert len(whole) == len(blocked) > 1
    for (va, a), (vb, b) in zip(whole, blocked):
        assert va == vb and a.area == b.area and a.symmetric_difference(b).area == 0
    spans = [max(p.bounds[2] - p.bounds[0], p.bounds[3] - p.bounds[1]) for _, p in blocked]
    assert max(spans) > 2 * 64  # a river crossing several blocks is one polygon


def test_regions_layer(georeferenced, tmp_path):
    scene = open_scene(georeferenced)
    out = tmp_path / "errors.geojson"
    assert main(["export", str(georeferenced), "--regions", "--out", str(out), "-q"]) == 0
    regions = json.loads((georeferenced.parent / "geo.errors.json").read_text())
    meta, geoms, f = read_polygons(out)
    assert len(geoms) == len(regions) >= 2
    assert sorted(f["pair"]) == sorted(r["pair"] for r in regions)
    assert set(f["pair"]) == {"river->pond", "pond->river"}
    # this pred has no maps/margin nor labels/hard: the columns say "unknown", not 0
    assert np.isnan(f["margin"].astype(float)).all() and np.isnan(f["hard_share"].astype(float)).all()
    # each polygon covers exactly its pair's error pixels
    codes = np.asarray(scene.label("error"))
    table = scene.label_classes("error")
    for pair in ("river->pond", "pond->river"):
        sel = [g for g, p in zip(geoms, f["pair"]) if p == pair]
        back = rasterize(sel, out_shape=codes.shape, transform=rasterio.Affine(*scene.transform), all_touched=False)
        np.testing.assert_array_equal(back.astype(bool), codes == table.id_of(pair))
    np.testing.assert_array_equal(np.sort(f["area_px"]), np.sort([r["area"] for r in regions]))


def test_not_georeferenced_exports_pixels_and_says_so(riverworld_store, tmp_path, capsys):
    out = tmp_path / "gt.gpkg"
    assert main(["export", str(riverworld_store.url), "--labels", "gt", "--out", str(out), "-q"]) == 0
    assert "pixel" in capsys.readouterr().out
    meta, geoms, f = read_polygons(out)
    assert meta["crs"] is None
    h, w = riverworld_store.shape[1:]
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    assert (minx, miny, maxx, maxy) == (0, 0, w, h)
    assert f["area_px"].sum() == h * w


@pytest.mark.parametrize("args, message", [
    (["--labels", "gt", "--out", "x.png"], "unknown format"),
    (["--labels", "gt", "--out", "x.gpkg", "--classes", "lake"], "lake"),
    (["--labels", "gt", "--out", "x.tif", "--classes", "river"], "--classes"),
    (["--labels", "nope", "--out", "x.tif"], "has no labels/nope"),
    (["--regions", "--out", "x.gpkg"], "evaluate"),
    (["--labels", "gt", "--out", "x.gpkg", "--simplify", "-1"], "--simplify"),
    (["--labels", "gt", "--out", "missing/x.tif"], "does not exist"),
])
def test_bad_requests_are_refused_with_one_line(riverworld_store, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["export", str(riverworld_store.url), *args, "-q"])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("x", ".x"))]


def test_existing_output_needs_overwrite(georeferenced, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    out.write_bytes(b"mine")
    assert main(["export", str(georeferenced), "--out", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["export", str(georeferenced), "--out", str(out), "--overwrite", "-q"]) == 0
    with rasterio.open(out) as d:
        assert d.count == 1


def test_a_checkpoint_still_exports_to_a_predict_only_one(tmp_path, capsys):
    from pathlib import Path

    import elegantviz
    from elegantviz.engine.checkpoints import load_model

    shipped = Path(elegantviz.__file__).parent / "weights" / "riverworld-cpu.pt"
    out = tmp_path / "model.pt"
    assert main(["export", str(shipped), str(out), "--float32"]) == 0
    assert "MB" in capsys.readouterr().out
    trained = load_model(out)
    assert trained.classes.names[3] == "river"
    assert next(trained.model.parameters()).dtype.is_floating_point
    assert main(["export", str(shipped), str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "neither a scene store nor a checkpoint" in capsys.readouterr().err
