"""Hostile inputs to `elegantviz convert` (issue #17): each is refused with one line naming the
file and the problem, or converted into a store that says what it did, never a traceback, a
store with non-JSON metadata, or a deleted folder."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from PIL import Image
from rasterio.transform import from_origin

from conftest import write_geotiff
from elegantviz.cli import main
from elegantviz.errors import InputError
from elegantviz.io import convert as convert_module
from elegantviz.io.convert import convert_raster
from elegantviz.io.geo import describe
from elegantviz.io.store import Scene, open_scene


def convert(src, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("tile", 64)
    return convert_raster(src, out, **kw)


def strict_json(store: Path) -> int:
    """Parse every zarr.json of a store as strict JSON (no NaN, Infinity); how many there are."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    files = sorted(Path(store).rglob("zarr.json"))
    for f in files:
        json.loads(f.read_text(), parse_constant=refuse)
    return len(files)


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def img(tmp_path):
    return write_geotiff(tmp_path / "img.tif", np.random.default_rng(0).integers(0, 255, (2, 80, 80), dtype=np.uint8))


def classes_mask(h=80, w=80):
    return (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)


# --- 1. the output path -----------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_plain_folder_is_refused_and_left_untouched(tmp_path, img, overwrite):
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "notes.txt").write_text("three years of work")
    (folder / "chapters" / "one.tex").write_text("\\chapter{One}")
    before = tree(folder)
    with pytest.raises(InputError, match=r"thesis: exists and is not a scene store \(it holds 'chapters' and 1 more\)"):
        convert(img, folder, overwrite=overwrite)
    assert tree(folder) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_plain_file_is_refused_and_left_untouched(tmp_path, img, overwrite):
    out = tmp_path / "out.zarr"
    out.write_text("keep me")
    with pytest.raises(InputError, match="out.zarr: exists and is a file, not a scene store"):
        convert(img, out, overwrite=overwrite)
    assert out.read_text() == "keep me"


def test_the_current_folder_and_an_empty_path_are_refused(tmp_path, img, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("1,2,3")
    monkeypatch.chdir(work)
    for out in ("", ".", "..", str(work)):
        with pytest.raises(InputError, match="empty output path|is the current folder"):
            convert(img, out, overwrite=True)
    assert tree(work) == {"data.csv": b"1,2,3"}
    (work / "data.csv").unlink()  # an empty current folder too: zarr cannot replace '.'
    with pytest.raises(InputError, match=r"\.: is the current folder"):
        convert(img, ".")


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_zarr_group_or_a_store_holding_other_files_is_refused(tmp_path, img, overwrite):
    foreign = tmp_path / "foreign.zarr"
    group = zarr.open_group(str(foreign), mode="w")
    group.attrs["owner"] = "someone else"
    group.create_array("data", shape=(4,), dtype="int8")
    before = tree(foreign)
    with pytest.raises(InputError, match="foreign.zarr: exists and is not a scene store"):
        convert(img, foreign, overwrite=overwrite)
    assert tree(foreign) == before

    store = tmp_path / "s.zarr"
    convert(img, store)
    (store / "my-notes.txt").write_text("written by hand")
    with pytest.raises(InputError, match=r"s.zarr: a scene store that also holds 'my-notes.txt'"):
        convert(img, store, overwrite=overwrite)
    assert (store / "my-notes.txt").read_text() == "written by hand"
    assert open_scene(store).complete


def test_an_input_inside_the_output_is_refused(tmp_path, img):
    store = tmp_path / "s.zarr"
    convert(img, store)
    inside = store / "0" / "img.tif"
    inside.write_bytes(img.read_bytes())
    with pytest.raises(InputError, match=r"img.tif: lies inside the output .*s.zarr"):
        convert(inside, store, overwrite=True)
    with pytest.raises(InputError, match=r"img.tif: lies inside the output"):
        convert(img, store, mask=inside, overwrite=True)
    assert inside.exists()


def test_an_output_under_a_file_is_refused(tmp_path, img):
    with pytest.raises(InputError, match=r"img.tif/s.zarr: cannot be created: .*img.tif is a file"):
        convert(img, img / "s.zarr")


def test_a_scene_store_is_still_replaced_with_overwrite_and_an_empty_folder_is_written(tmp_path, img):
    store = tmp_path / "s.zarr"
    convert(img, store)
    with pytest.raises(InputError, match="s.zarr: exists"):
        convert(img, store)
    assert convert(img, store, bands="2", overwrite=True).scene.shape == (1, 80, 80)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert(img, empty).scene.shape == (2, 80, 80)


def test_an_unwritable_output_is_one_line(tmp_path, img, monkeypatch):
    def refuse(url, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(url))

    monkeypatch.setattr(convert_module, "create_scene", refuse)
    with pytest.raises(InputError, match=r"s.zarr: cannot write the scene store \(Permission denied\)"):
        convert(img, tmp_path / "s.zarr")


# --- 2. the mask's grid -----------------------------------------------------------------------
def write_shifted(path, data, dx):
    profile = dict(driver="GTiff", count=1, height=data.shape[0], width=data.shape[1], dtype=data.dtype,
                   crs="EPSG:32614", transform=from_origin(400000 + dx, 5200000, 2.0, 2.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None])
    return path


def test_a_mask_on_another_grid_is_refused_naming_both_files(tmp_path, img):
    other_crs = write_geotiff(tmp_path / "m4326.tif", classes_mask(), crs="EPSG:4326")
    with pytest.raises(InputError, match=r"m4326.tif: the mask's CRS is EPSG:4326 but the image .*img.tif's is "
                                         r"EPSG:32614; reproject"):
        convert(img, tmp_path / "a.zarr", mask=other_crs)
    shifted = write_shifted(tmp_path / "shifted.tif", classes_mask(), dx=10.0)  # 5 pixels east
    with pytest.raises(InputError, match=r"shifted.tif: the mask's geotransform is \(2, 0, 400010, 0, -2, 5200000\) "
                                         r"but the image .*img.tif's is \(2, 0, 400000, 0, -2, 5200000\)"):
        convert(img, tmp_path / "b.zarr", mask=shifted)
    small = write_geotiff(tmp_path / "small.tif", classes_mask(80, 60))
    with pytest.raises(InputError, match=r"small.tif: mask is 80 x 60 but the image is 80 x 80 \(.*img.tif\)"):
        convert(img, tmp_path / "c.zarr", mask=small)
    assert not any((tmp_path / n).exists() for n in ("a.zarr", "b.zarr", "c.zarr"))


def test_a_mask_without_georeferencing_or_a_rounding_shift_is_accepted(tmp_path, img):
    Image.fromarray(classes_mask()).save(tmp_path / "m.png")
    scene = convert(img, tmp_path / "a.zarr", mask=tmp_path / "m.png").scene
    np.testing.assert_array_equal(scene.label("gt").compute(), classes_mask())
    nearly = write_shifted(tmp_path / "nearly.tif", classes_mask(), dx=1e-7)
    assert convert(img, tmp_path / "b.zarr", mask=nearly).scene.labels == ["gt"]


def test_stacked_bands_on_other_grids_are_refused(tmp_path, img):
    a = write_geotiff(tmp_path / "a.tif", classes_mask())
    b = write_geotiff(tmp_path / "b.tif", classes_mask(), crs="EPSG:4326")
    with pytest.raises(InputError, match=r"b.tif: its CRS is EPSG:4326 but .*a.tif's is EPSG:32614; stacked bands"):
        convert([a, b], tmp_path / "s.zarr")
    c = write_shifted(tmp_path / "c.tif", classes_mask(), dx=10.0)  # within allclose's 1e-5 of 400000
    with pytest.raises(InputError, match=r"c.tif: its geotransform is \(2, 0, 400010"):
        convert([a, c], tmp_path / "s.zarr")


# --- 3. non-finite pixels ---------------------------------------------------------------------
def test_infinite_pixels_are_nodata_counted_and_the_metadata_stays_json(tmp_path):
    data = np.random.default_rng(1).random((1, 100, 90)).astype(np.float32)
    data[0, 5, 5], data[0, 6, 7], data[0, 99, 89] = np.inf, -np.inf, np.inf
    data[0, 50:52, 10:15] = np.nan
    src = write_geotiff(tmp_path / "ratio.tif", data)
    res = convert(src, tmp_path / "s.zarr")
    assert strict_json(tmp_path / "s.zarr") >= 3
    assert res.image.infinite_pixels == 3 and res.image.nan_pixels == 10
    scene = res.scene
    assert np.isnan(scene.nodata) and np.isnan(res.image.nodata)
    stored = scene.image().compute()
    assert np.isnan(stored[0, [5, 6, 99], [5, 7, 89]]).all() and not np.isinf(stored).any()
    np.testing.assert_array_equal(stored[np.isfinite(data)], data[np.isfinite(data)])
    for k in range(scene.num_levels):
        assert not np.isinf(scene.image(k).compute()).any()
    window = scene.root.attrs["ome"]["omero"]["channels"][0]["window"]
    assert all(np.isfinite(v) for v in window.values()) and 0 <= window["min"] < window["max"] <= 1


def test_an_all_infinite_image_and_a_file_declaring_infinite_nodata(tmp_path):
    write_geotiff(tmp_path / "inf.tif", np.full((1, 40, 40), np.inf, np.float32))
    res = convert(tmp_path / "inf.tif", tmp_path / "a.zarr")
    assert res.image.infinite_pixels == 1600 and strict_json(tmp_path / "a.zarr")
    assert np.isnan(res.scene.image().compute()).all()
    data = np.ones((1, 40, 40), np.float32)
    data[0, :3] = np.inf
    write_geotiff(tmp_path / "nd.tif", data, nodata=np.inf)
    res = convert(tmp_path / "nd.tif", tmp_path / "b.zarr")
    assert strict_json(tmp_path / "b.zarr") and np.isnan(res.scene.nodata)
    assert np.isnan(res.scene.image().compute()[0, :3]).all()


@pytest.mark.parametrize("nodata", [float("nan"), float("inf")])
def test_a_non_finite_nodata_option_is_json_and_the_conversion_resumes(tmp_path, monkeypatch, nodata):
    data = np.random.default_rng(2).random((1, 70, 70)).astype(np.float32)
    data[0, 0, 0] = np.inf
    src = write_geotiff(tmp_path / "f.tif", data)
    finish = Scene.finalize

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Scene, "finalize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "s.zarr", nodata=nodata)
    assert strict_json(tmp_path / "s.zarr")
    monkeypatch.setattr(Scene, "finalize", finish)
    scene = convert(src, tmp_path / "s.zarr", nodata=nodata).scene  # resumes: the same job
    assert scene.complete and np.isnan(scene.nodata) and strict_json(tmp_path / "s.zarr")


def test_a_float32_nodata_is_compared_as_the_pixels_hold_it(tmp_path):
    data = np.full((1, 64, 64), 5.0, np.float32)
    data[0, :2, :2] = -9999.1  # float32 holds -9999.0996...
    data[0, 2:4, 0:2] = [[-9999.1, -9999.1], [-9999.1, 100.0]]
    src = write_geotiff(tmp_path / "f.tif", data, nodata=-9999.1)
    scene = convert(src, tmp_path / "s.zarr", tile=32).scene
    level1 = scene.image(1).compute()
    assert level1[0, 0, 0] == np.float32(-9999.1) and level1[0, 1, 0] == 100.0  # nodata never enters a mean
    scene = convert(write_geotiff(tmp_path / "g.tif", data), tmp_path / "t.zarr", tile=32, nodata=-9999.1).scene
    assert scene.image(1).compute()[0, 1, 0] == 100.0


# --- 4. damaged files and bad options ---------------------------------------------------------
def big_geotiff(path, compress=None):
    data = np.random.default_rng(3).integers(0, 60, (3, 512, 512), dtype=np.uint8)
    profile = dict(driver="GTiff", count=3, height=512, width=512, dtype="uint8", crs="EPSG:32614",
                   transform=from_origin(400000, 5200000, 2.0, 2.0), tiled=True, blockxsize=128, blockysize=128)
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("compress", [None, "deflate"])
def test_a_truncated_geotiff_is_refused_before_anything_is_written(tmp_path, compress):
    src = big_geotiff(tmp_path / "img.tif", compress)
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(InputError, match=r"img.tif: truncated or corrupt: its pixel blocks run to byte [\d,]+ but "
                                         r"the file has [\d,]+ bytes"):
        describe(src)
    with pytest.raises(InputError, match="img.tif: truncated"):
        convert(src, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_a_bit_rotted_geotiff_names_the_file_and_the_window(tmp_path):
    src = big_geotiff(tmp_path / "img.tif", "deflate")
    raw = bytearray(src.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 2048] = np.random.default_rng(4).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(raw))
    describe(src)  # the header is fine: the damage shows when its window is read
    with pytest.raises(InputError, match=r"img.tif: unreadable or corrupt pixel data in band \d, window rows "
                                         r"\d+:\d+, columns \d+:\d+ \(.+\)"):
        convert(src, tmp_path / "s.zarr")


def test_damaged_png_and_jpeg_are_one_line(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    for name in ("a.png", "a.jpg"):
        Image.fromarray(rgb).save(tmp_path / name)
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
        with pytest.raises(InputError, match=rf"{name}: unreadable or corrupt image data \(.+\)"):
            convert(tmp_path / name, tmp_path / f"{name}.zarr")


@pytest.mark.parametrize("tile", [0, -64, 8, 15, 17, 100_000, True, 64.0, "64"])
def test_a_bad_chunk_size_is_refused_before_anything_is_written(tmp_path, img, tile):
    with pytest.raises(InputError, match=r"--chunk .*(even number of pixels from 16 to 8192|expected a whole number)"):
        convert(img, tmp_path / "s.zarr", tile=tile)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("nodata", [300, -1, 0.5, float("nan"), float("inf")])
def test_a_nodata_the_pixels_cannot_hold_is_refused(tmp_path, img, nodata):
    with pytest.raises(InputError, match=r"--nodata .*img.tif has uint8 pixels, which hold whole numbers 0\.\.255"):
        convert(img, tmp_path / "s.zarr", nodata=nodata)
    assert not (tmp_path / "s.zarr").exists()
    f32 = write_geotiff(tmp_path / "f.tif", np.zeros((1, 20, 20), np.float32))
    with pytest.raises(InputError, match=r"--nodata 1e\+40: .*f.tif has float32 pixels, which hold NaN and numbers"):
        convert(f32, tmp_path / "t.zarr", nodata=1e40)


# --- 5. more hostile inputs -------------------------------------------------------------------
def test_empty_band_names_and_a_nodata_that_is_no_number_are_refused(tmp_path, img):
    with pytest.raises(InputError, match="--band-names: band 2 has an empty name"):
        convert(img, tmp_path / "s.zarr", band_names=["red", " "])
    with pytest.raises(InputError, match="--nodata 'zero': expected a number"):
        convert(img, tmp_path / "s.zarr", nodata="zero")
    assert not (tmp_path / "s.zarr").exists()


def test_a_non_finite_geotransform_is_refused(tmp_path):
    from affine import Affine

    profile = dict(driver="GTiff", count=1, height=10, width=10, dtype="uint8", crs="EPSG:32614",
                   transform=Affine(2.0, 0.0, float("nan"), 0.0, -2.0, 5200000.0))
    with rasterio.open(tmp_path / "nan.tif", "w", **profile) as dst:
        dst.write(np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(InputError, match=r"nan.tif: its geotransform \(2.0, 0.0, nan, .*\) is not finite"):
        convert(tmp_path / "nan.tif", tmp_path / "s.zarr")


def test_complex_pixels_are_refused(tmp_path):
    src = write_geotiff(tmp_path / "sar.tif", np.full((1, 20, 20), 1 + 2j, np.complex64))
    with pytest.raises(InputError, match="sar.tif: pixel type complex64 is not supported"):
        convert(src, tmp_path / "s.zarr")


def test_mask_values_that_make_no_class(tmp_path):
    write_geotiff(tmp_path / "img.tif", np.zeros((1, 40, 40), np.uint8))
    mask = np.zeros((40, 40), np.float32)
    mask[0, :3] = np.inf
    write_geotiff(tmp_path / "m.tif", mask)
    res = convert(tmp_path / "img.tif", tmp_path / "a.zarr", mask=tmp_path / "m.tif")
    assert res.mask.unknown_pixels == 3 and res.scene.label_classes("gt").names == ["class 0"]
    assert (res.scene.label("gt").compute()[0, :3] == 255).all() and strict_json(tmp_path / "a.zarr")
    mask[1, :2] = 3
    write_geotiff(tmp_path / "nd.tif", mask, nodata=np.inf)  # here inf is the declared nodata
    res = convert(tmp_path / "img.tif", tmp_path / "c.zarr", mask=tmp_path / "nd.tif", strict=True)
    assert (res.mask.unknown_pixels, res.mask.nodata_pixels) == (0, 3)
    write_geotiff(tmp_path / "nan.tif", np.full((40, 40), np.nan, np.float32))
    with pytest.raises(InputError, match="nan.tif: the mask has no class value"):
        convert(tmp_path / "img.tif", tmp_path / "b.zarr", mask=tmp_path / "nan.tif")


def test_a_one_pixel_image_with_its_mask(tmp_path):
    write_geotiff(tmp_path / "one.tif", np.array([[[7]]], np.uint8))
    write_geotiff(tmp_path / "m.tif", np.array([[2]], np.uint8))
    scene = convert(tmp_path / "one.tif", tmp_path / "s.zarr", mask=tmp_path / "m.tif").scene
    assert scene.shape == (1, 1, 1) and int(scene.image().compute()[0, 0, 0]) == 7
    assert scene.label("gt").compute().tolist() == [[0]] and strict_json(tmp_path / "s.zarr")


def test_the_cli_prints_one_line_and_exits_2(tmp_path, img, capsys):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "keep.txt").write_text("x")
    truncated = big_geotiff(tmp_path / "cut.tif")
    truncated.write_bytes(truncated.read_bytes()[:50_000])
    write_geotiff(tmp_path / "m4326.tif", classes_mask(), crs="EPSG:4326")
    write_geotiff(tmp_path / "two.tif", np.zeros((2, 80, 80), np.uint8))
    (tmp_path / "empty.tif").write_bytes(b"")
    cases = [
        ([str(img), str(tmp_path / "plain"), "--overwrite"], "not a scene store"),
        ([str(truncated), str(tmp_path / "a.zarr")], "cut.tif: truncated"),
        ([str(img), str(tmp_path / "b.zarr"), "--mask", str(tmp_path / "m4326.tif")], "the mask's CRS is EPSG:4326"),
        ([str(img), str(tmp_path / "c.zarr"), "--nodata", "300"], "whole numbers 0..255"),
        ([str(img), str(tmp_path / "c.zarr"), "--nodata", "nan"], "whole numbers 0..255"),
        ([str(img), str(tmp_path / "d.zarr"), "--chunk", "17"], "even number of pixels"),
        ([str(img), str(tmp_path / "e.zarr"), "--mask", str(tmp_path / "two.tif")], "it has 2"),
        ([str(tmp_path / "empty.tif"), str(tmp_path / "f.zarr")], "empty.tif: not a raster"),
        ([str(tmp_path / "plain"), str(tmp_path / "g")], "plain: no rasters (.tif"),  # a folder: its rasters
    ]
    for argv, message in cases:
        assert main(["convert", "-q", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("elegantviz convert: error: ") and message in err, err
    assert (tmp_path / "plain" / "keep.txt").read_text() == "x"
