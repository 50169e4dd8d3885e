import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from conftest import write_geotiff
from elegantviz.cli import main
from elegantviz.errors import InputError
from elegantviz.io.convert import convert_raster
from elegantviz.io.info import scene_info


def test_geotiff_with_mask_band_reorder_and_crs(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (4, 300, 260), dtype=np.uint16)
    mask = rng.integers(0, 6, (300, 260), dtype=np.uint8)  # riverworld has 0..4; 5 is unknown
    write_geotiff(tmp_path / "img.tif", img)
    write_geotiff(tmp_path / "mask.tif", mask)
    res = convert_raster(tmp_path / "img.tif", tmp_path / "s.zarr", bands="3,2,1,4", mask=tmp_path / "mask.tif",
                         classes="riverworld", tile=64, progress=False)
    scene = res.scene
    np.testing.assert_array_equal(scene.image().compute(), img[[2, 1, 0, 3]])
    expect = np.where(mask == 5, 255, mask)
    np.testing.assert_array_equal(scene.label("gt").compute(), expect)
    assert res.mask.unknown_pixels == int((mask == 5).sum()) and res.mask.unknown_values == [5]
    with rasterio.open(tmp_path / "img.tif") as ds:
        assert scene.crs == ds.crs.to_wkt() and scene.transform == pytest.approx(list(ds.transform)[:6])
    with pytest.raises(InputError, match=r"mask.tif: \d+ pixels have values outside class table 'riverworld'"):
        convert_raster(tmp_path / "img.tif", tmp_path / "t.zarr", mask=tmp_path / "mask.tif", classes="riverworld",
                       strict=True, progress=False)


def test_png_and_stacked_single_band_files(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    scene = convert_raster(tmp_path / "a.png", tmp_path / "a.zarr", tile=32, progress=False).scene
    np.testing.assert_array_equal(scene.image().compute(), rgb.transpose(2, 0, 1))
    assert scene.bands == ["R", "G", "B"] and scene.crs is None
    for i in range(3):
        write_geotiff(tmp_path / f"b{i}.tif", rgb[..., i].copy())
    stacked = convert_raster([tmp_path / f"b{i}.tif" for i in (2, 0)], tmp_path / "s.zarr", tile=32, progress=False)
    np.testing.assert_array_equal(stacked.scene.image().compute(), rgb.transpose(2, 0, 1)[[2, 0]])
    assert stacked.scene.bands == ["b2", "b0"]


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    img = np.zeros((2, 64, 64), np.uint8)
    write_geotiff(tmp_path / "img.tif", img)
    write_geotiff(tmp_path / "small.tif", np.zeros((64, 50), np.uint8))
    (tmp_path / "notes.txt").write_text("not a raster")
    (tmp_path / "empty.tif").write_bytes(b"")
    cases = [
        (dict(sources=tmp_path / "missing.tif"), "missing.tif: no such file"),
        (dict(sources=tmp_path / "notes.txt"), "notes.txt: not a raster"),
        (dict(sources=tmp_path / "empty.tif"), "empty.tif: not a raster"),
        (dict(sources=tmp_path / "img.tif", bands="1,3"), "band 3 is out of range: .*img.tif has 2 band"),
        (dict(sources=tmp_path / "img.tif", mask=tmp_path / "small.tif"), r"small.tif: mask is 64 x 50 but the image is 64 x 64"),
        (dict(sources=[tmp_path / "img.tif", tmp_path / "small.tif"]), "small.tif: is 64 x 50"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            convert_raster(out=tmp_path / "o.zarr", progress=False, **kwargs)


def test_nodata_is_kept_and_respected_by_the_pyramid(tmp_path):
    img = np.full((1, 64, 64), 7, np.int16)
    img[0, :2, :2] = -32768
    img[0, 2:4, 0:2] = [[-32768, -32768], [-32768, 100]]
    write_geotiff(tmp_path / "n.tif", img, nodata=-32768)
    scene = convert_raster(tmp_path / "n.tif", tmp_path / "n.zarr", tile=32, progress=False).scene
    assert scene.nodata == -32768
    level1 = scene.image(1).compute()
    assert level1[0, 0, 0] == -32768 and level1[0, 1, 0] == 100  # nodata never enters a mean


def test_cli_convert_info_and_errors(tmp_path, capsys):
    write_geotiff(tmp_path / "img.tif", np.ones((3, 80, 80), np.uint8))
    write_geotiff(tmp_path / "m.tif", (np.arange(80 * 80).reshape(80, 80) % 3).astype(np.uint8))
    assert main(["convert", str(tmp_path / "img.tif"), str(tmp_path / "s.zarr"), "--mask", str(tmp_path / "m.tif"),
                 "--band-names", "R,G,B", "--chunk", "32", "-q"]) == 0
    assert main(["info", str(tmp_path / "s.zarr"), "--json", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s.zarr"), "--json", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bands"] == ["R", "G", "B"] and info["complete"] is True
    assert info["labels"]["gt"]["histogram"] == {"class 0": 2134, "class 1": 2133, "class 2": 2133}
    assert main(["convert", str(tmp_path / "img.tif"), str(tmp_path / "s.zarr"), "-q"]) == 2
    assert "s.zarr: exists" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nothing.zarr")]) == 2
    assert "nothing.zarr: no such scene store" in capsys.readouterr().err


def window_read(path, band, y0, x0, h, w):
    with rasterio.open(path) as ds:
        return ds.read(band, window=Window(x0, y0, w, h))


@pytest.mark.shared_data
def test_naip_keeps_crs_transform_and_pixels(shared_data, tmp_path):
    src = shared_data / "naip_northdakota" / "m_4709963_se_14_1_20100629.tif"
    scene = convert_raster(src, tmp_path / "naip.zarr", band_names=["R", "G", "B", "NIR"], progress=False).scene
    assert scene.shape == (4, 723, 934) and scene.dtype == np.uint8
    with rasterio.open(src) as ds:
        assert scene.crs == ds.crs.to_wkt() and ds.crs.to_epsg() == 26914
        assert scene.transform == pytest.approx(list(ds.transform)[:6])
    for band in (1, 4):
        np.testing.assert_array_equal(scene.image()[band - 1, 500:723, 600:934].compute(),
                                      window_read(src, band, 500, 600, 223, 334))
    assert scene_info(scene, progress=False)["crs"].startswith("EPSG:26914")


@pytest.mark.shared_data
def test_nc_landsat7_stack_with_strata_mask(shared_data, tmp_path):
    folder = shared_data / "nc_landsat7"
    bands = [folder / f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
    res = convert_raster(bands, tmp_path / "nc.zarr", mask=folder / "strata.tif", progress=False)
    scene = res.scene
    assert scene.shape == (6, 443, 489) and scene.dtype == np.float32
    img = scene.image().compute()
    for i, path in enumerate(bands):
        with rasterio.open(path) as ds:
            raw = ds.read(1).astype(np.float32)
            nd = ds.nodata
        valid = raw != nd
        np.testing.assert_array_equal(img[i][valid], raw[valid])
        assert np.isnan(img[i][~valid]).all()  # -99999 and -32768 both became NaN nodata
    table = scene.label_classes("gt")
    assert table.names == [f"class {v}" for v in range(1, 8)]
    with rasterio.open(folder / "strata.tif") as ds:
        strata = ds.read(1)
    gt = scene.label("gt").compute()
    np.testing.assert_array_equal(gt[strata == 6], table.id_of("class 6"))
    assert (gt[strata == -99999] == 255).all() and res.mask.nodata_pixels == int((strata == -99999).sum())


@pytest.mark.shared_data
def test_landsat8_uint16_with_zero_fill(shared_data, tmp_path):
    src = shared_data / "landsat8_parana" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
    scene = convert_raster(src, tmp_path / "l8.zarr", bands="3,2,1", band_names=["red", "green", "blue"], nodata=0,
                           progress=False).scene
    assert scene.shape == (3, 1860, 2041) and scene.dtype == np.uint16 and scene.nodata == 0
    np.testing.assert_array_equal(scene.image()[0, 1000:1500, 1500:2041].compute(), window_read(src, 3, 1000, 1500, 500, 541))
    top = scene.image(scene.num_levels - 1).compute()
    with rasterio.open(src) as ds:
        fill_share = float((ds.read(1) == 0).mean())
    assert abs(float((top[0] == 0).mean()) - fill_share) < 0.03  # fill stays fill, it is not averaged in
    assert "32621" in scene_info(scene, progress=False)["crs"]
