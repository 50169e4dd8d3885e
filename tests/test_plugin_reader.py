"""napari plugin without a window: manifest, light import, reader, writer, boundaries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from elegantviz.classes import RIVERWORLD
from elegantviz.data.synthetic import POND, RIVER
from elegantviz.errors import InputError
from elegantviz.io.store import create_scene, open_scene

from plugin_conftest import TILE, riverworld_store

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "scene.zarr"
    riverworld_store(path)
    return path


def test_manifest_validates():
    out = subprocess.run([str(BIN / "npe2"), "validate", "elegantviz"], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def test_modules_napari_imports_at_start_up_stay_light():
    code = (
        "import sys, napari_elegantviz, napari_elegantviz.reader, napari_elegantviz.writer, "
        "napari_elegantviz.sample_data, napari_elegantviz.layers, napari_elegantviz.palette, "
        "napari_elegantviz.prediction, napari_elegantviz.viewer_layers, napari_elegantviz.view, "
        "napari_elegantviz.cache, napari_elegantviz.docks, elegantviz.analysis.regions, elegantviz.analysis.shares, "
        "elegantviz.analysis.sobel, elegantviz.analysis.attention, elegantviz.cli\n"
        "heavy = [m for m in ('napari', 'qtpy', 'PyQt6', 'torch', 'magicgui') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_reader_returns_lazy_multiscale_layers(store):
    from napari_elegantviz.reader import get_reader

    reader = get_reader(str(store))
    assert callable(reader)
    layers = reader(str(store))
    scene = open_scene(store)
    by_name = {kw["name"]: (data, kw, kind) for data, kw, kind in layers}
    assert [kw["name"] for _, kw, _ in layers] == ["image", "gt", "hard", "margin"]  # keys (4 channels) skipped
    for data, kw, kind in layers:
        assert kw["multiscale"] is True
        assert len(data) == scene.num_levels == 3
        assert all(isinstance(level, da.Array) for level in data)
    image, kw, kind = by_name["image"]
    assert kind == "image" and kw["rgb"] and image[0].shape == (512, 512, 3)
    np.testing.assert_array_equal(image[1][:40, :40].compute(), scene.levels[1][:3, :40, :40].compute().transpose(1, 2, 0))
    lo, hi = kw["contrast_limits"]
    assert 0 <= lo < hi <= 255
    gt, kw, kind = by_name["gt"]
    assert kind == "labels" and gt[0].dtype == np.uint8 and kw["visible"]
    assert kw["colormap"].map(np.array([RIVER], np.uint8))[0][:3] == pytest.approx(np.array([30, 90, 230]) / 255)
    assert kw["colormap"].map(np.array([255], np.uint8))[0][3] == 0  # ignore is transparent
    feats = dict(zip(kw["features"]["index"], kw["features"]["class"]))
    assert feats[RIVER] == "river" and feats[POND] == "pond" and feats[255] == "ignore"
    hard, kw, _ = by_name["hard"]
    assert not kw["visible"] and kw["colormap"].map(np.array([0], np.uint8))[0][3] == 0
    margin, kw, kind = by_name["margin"]
    assert kind == "image" and kw["colormap"] == "viridis" and kw["contrast_limits"] == pytest.approx([0, 1], abs=0.01)


def test_reader_false_colour_and_other_dtypes(store, tmp_path):
    from elegantviz.io.bands import choose_bands
    from napari_elegantviz.reader import read_scene

    scene = open_scene(store)
    layers = read_scene(str(store), composite="false-colour")
    image = layers[0][0]
    np.testing.assert_array_equal(image[0][100, :50].compute(), scene.levels[0][[3, 0, 1], 100, :50].compute().T)
    assert choose_bands(["band 1", "band 2", "band 3", "band 4"], "false-colour") == [3, 0, 1]
    assert choose_bands(["b2", "b3"]) == [0]
    with pytest.raises(InputError):
        choose_bands(["red", "green", "blue"], "false-colour")

    # uint16 with three bands: stretched lazily per band into uint8 RGB using the omero windows
    rng = np.random.default_rng(0)
    u16 = rng.integers(1000, 3000, (3, 300, 300)).astype(np.uint16)
    u16[2] += 20000
    create_scene(tmp_path / "u16.zarr", u16, bands=["red", "green", "blue"], tile=TILE, progress=False)
    data, kw, _ = read_scene(str(tmp_path / "u16.zarr"))[0]
    assert data[0].dtype == np.uint8 and kw["rgb"] and kw["contrast_limits"] == [0, 255]
    rgb = data[0].compute()
    for band in range(3):  # every band spans the display range despite the blue offset
        assert np.percentile(rgb[..., band], 1) < 20 and np.percentile(rgb[..., band], 99) > 235

    # float, one band: grey with the window as contrast limits, data untouched
    f32 = rng.random((1, 300, 300)).astype(np.float32)
    create_scene(tmp_path / "f32.zarr", f32, tile=TILE, progress=False)
    data, kw, _ = read_scene(str(tmp_path / "f32.zarr"))[0]
    assert not kw["rgb"] and kw["colormap"] == "gray" and data[0].dtype == np.float32
    assert 0 < kw["contrast_limits"][0] < kw["contrast_limits"][1] < 1


def test_reader_loads_nothing_up_front(store, tmp_path):
    """Level 0 and 1 chunks replaced by garbage: reading works, computing them fails."""
    import shutil

    from napari_elegantviz.reader import read_scene

    copy = tmp_path / "garbled.zarr"
    shutil.copytree(store, copy)
    garbled = 0
    for prefix in ("0", "1", "labels/gt/0", "labels/gt/1", "labels/hard/0", "maps/margin/0"):
        for chunk in (copy / prefix / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"not a chunk")
                garbled += 1
    assert garbled > 20
    layers = read_scene(str(copy))
    assert len(layers) == 4
    with pytest.raises(Exception):
        layers[1][0][0][:10, :10].compute()


def test_reader_keeps_the_names_prediction_gives_the_hard_region(tmp_path):
    from elegantviz.classes import ClassTable

    from napari_elegantviz.reader import read_scene

    scene = riverworld_store(tmp_path / "s.zarr", size=256, evidence=False)
    table = ClassTable.from_dict({"name": "hard", "classes": [{"id": 0, "name": "easy", "color": [0, 0, 0]},
                                                              {"id": 1, "name": "hard", "color": [255, 0, 255]}]})
    scene.add_labels("hard", np.eye(256, dtype=np.uint8), classes=table, progress=False)
    _, kw, _ = read_scene(str(tmp_path / "s.zarr"))[2]
    assert list(kw["features"]["class"][:2]) == ["easy", "hard"]
    assert kw["colormap"].map(np.array([0], np.uint8))[0][3] == 0
    assert kw["colormap"].map(np.array([1], np.uint8))[0] == pytest.approx([1, 0, 1, 1])


def test_reader_declines_what_is_not_a_scene(tmp_path, store):
    from napari_elegantviz.reader import get_reader

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("x", shape=(4,), dtype="u1")
    (tmp_path / "notes.zarr").write_text("a file")
    assert get_reader(str(tmp_path / "plain.zarr")) is None
    assert get_reader(str(tmp_path / "notes.zarr")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(store), str(store)]) is None
    assert callable(get_reader([str(store)]))


def test_writer_round_trip_into_existing_and_new_stores(store, tmp_path):
    import shutil

    from napari_elegantviz.palette import label_colormap, label_features
    from napari_elegantviz.writer import write_labels

    target = tmp_path / "scene.zarr"
    shutil.copytree(store, target)
    edited = np.asarray(open_scene(target).label("gt")).copy()
    edited[:50, :50] = POND
    attrs = {"name": "edited gt", "features": label_features(RIVERWORLD), "colormap": label_colormap(RIVERWORLD),
             "metadata": {}}
    assert write_labels(str(target), edited.astype(np.int32), attrs) == [str(target)]
    back = open_scene(target)
    assert "edited_gt" in back.labels
    np.testing.assert_array_equal(back.label("edited_gt").compute(), edited)
    table = back.label_classes("edited_gt")
    assert table.names == RIVERWORLD.names and [c.color for c in table.classes] == [c.color for c in RIVERWORLD.classes]

    # saved again: swapped in whole (a layer's dask array made before reads the new labels), no
    # scratch left; the ground truth itself is never replaced by a save
    held = back.label("edited_gt")
    edited[50:, 50:] = RIVER
    write_labels(str(target), edited.astype(np.int32), attrs)
    np.testing.assert_array_equal(held.compute(), edited)
    assert "_predict" not in open_scene(target).root
    gt = np.asarray(open_scene(target).label("gt"))
    with pytest.raises(InputError, match="labels/gt is the ground truth"):
        write_labels(str(target), edited.astype(np.int32), {**attrs, "name": "gt"})
    np.testing.assert_array_equal(open_scene(target).label("gt").compute(), gt)

    # a new store, classes known only from features and colours with a gap (id 2 unused)
    mask = np.zeros((200, 260), np.uint8)
    mask[20:80, 30:90] = 1
    mask[100:150, 100:200] = 3
    from napari.utils.colormaps import DirectLabelColormap

    cmap = DirectLabelColormap(color_dict={0: "black", 1: "red", 3: "blue", None: "transparent"})
    feats = {"index": np.array([0, 1, 3]), "class": np.array(["sea", "ship", "buoy"], dtype=object)}
    new = tmp_path / "new.zarr"
    write_labels(str(new), mask, {"name": "ships", "features": feats, "colormap": cmap, "metadata": {}})
    back = open_scene(new)
    np.testing.assert_array_equal(back.label("ships").compute(), mask)
    table = back.label_classes("ships")
    assert table.names[:2] == ["sea", "ship"] and table.names[3] == "buoy"
    assert table.classes[1].color == (255, 0, 0) and table.classes[3].color == (0, 0, 255)
    with pytest.raises(InputError):
        write_labels(str(tmp_path / "bad.zarr"), np.full((10, 10), 300, np.int32), {"name": "x", "metadata": {}})

    # napari-ome-zarr and ome-zarr-py read the labels group with colours and names
    from napari_ome_zarr._reader import napari_get_reader

    layers = napari_get_reader(str(new))(str(new))
    labels = [layer for layer in layers if layer[2] == "labels"]
    assert labels, [layer[2] for layer in layers]
    data, kw, _ = labels[0]
    level0 = data[0] if isinstance(data, list) else data
    np.testing.assert_array_equal(np.asarray(level0).squeeze(), mask)
    assert kw["colormap"][1][:3] == pytest.approx([1, 0, 0]) and kw["colormap"][3][:3] == pytest.approx([0, 0, 1])
    assert dict(zip(kw["properties"]["index"], kw["properties"]["class"]))[3] == "buoy"

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(n for n in Reader(parse_url(str(new)))() if n.metadata.get("name") == "ships")
    assert node.metadata["color"][1] == pytest.approx([1, 0, 0, 1])
    assert node.metadata["properties"][1]["class"] == "ship"
    np.testing.assert_array_equal(np.asarray(node.data[0]), mask)


def test_lazy_boundary_matches_whole_image_sobel():
    from scipy import ndimage

    from elegantviz.analysis.sobel import boundary_levels

    rng = np.random.default_rng(1)
    labels = ndimage.zoom(rng.integers(0, 5, (20, 24)).astype(np.uint8), 13, order=0)  # blocks, many edges
    lazy = boundary_levels([da.from_array(labels, chunks=64)])[0]
    a = labels.astype(float)
    whole = (ndimage.sobel(a, 0, mode="nearest") != 0) | (ndimage.sobel(a, 1, mode="nearest") != 0)
    np.testing.assert_array_equal(lazy.compute(), whole.astype(np.uint8))
    assert lazy.dtype == np.uint8 and 0 < lazy.mean().compute() < 0.3
