"""napari plugin in a real viewer under Xvfb: screenshots, docks via the manifest, sample, menus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elegantviz.data.synthetic import POND, RIVER
from elegantviz.io.store import open_scene

from plugin_conftest import centre_pixel, interior_pixel, riverworld_store

PLUGIN = "elegantviz"
RIVER_RGB = np.array([30, 90, 230])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("viewer") / "scene.zarr"
    riverworld_store(path)
    return path


@pytest.fixture(scope="module")
def gt(store):
    return np.asarray(open_scene(store).label("gt"))


def test_screenshots_show_classes_hard_region_and_legend_visibility(make_napari_viewer, qtbot, store, gt):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(store), plugin=PLUGIN)
    assert [ly.name for ly in layers] == ["image", "gt", "hard", "margin"]
    assert layers[1].multiscale and len(layers[1].data) == 3
    y, x = interior_pixel(gt == RIVER)
    labels = viewer.layers["gt"]
    labels.opacity = 1.0

    river = centre_pixel(viewer, y, x)
    assert np.abs(river - RIVER_RGB).max() <= 4, river

    # the status bar names the class under the cursor
    viewer.cursor.position = (y, x)
    assert "river" in str(labels.get_status(viewer.cursor.position, world=True))

    # legend: unticking river shows the image through, exactly as hiding the layer does
    _, legend = viewer.window.add_plugin_dock_widget(PLUGIN, "Class legend")
    legend.set_class_visible("river", False)
    without_river = centre_pixel(viewer, y, x)
    labels.visible = False
    image_only = centre_pixel(viewer, y, x)
    labels.visible = True
    assert np.abs(without_river - image_only).max() <= 2 and np.abs(image_only - RIVER_RGB).max() > 40
    legend.set_class_visible("river", True)
    assert np.abs(centre_pixel(viewer, y, x) - RIVER_RGB).max() <= 4

    # overlays: the hard region (river here) shows the chosen overlay colour, off again when unticked
    _, overlays = viewer.window.add_plugin_dock_widget(PLUGIN, "Overlays")
    row = overlays.rows["hard"]
    row["visible"].setChecked(True)
    row["opacity"].setValue(100)
    assert viewer.layers["hard"].visible and viewer.layers["hard"].opacity == 1.0
    assert np.abs(centre_pixel(viewer, y, x) - [255, 0, 255]).max() <= 4  # magenta by default
    row["style"].setCurrentText("yellow")
    assert np.abs(centre_pixel(viewer, y, x) - [255, 255, 0]).max() <= 4
    row["visible"].setChecked(False)
    assert np.abs(centre_pixel(viewer, y, x) - RIVER_RGB).max() <= 4

    # a cropland pixel is not coloured by the hard overlay
    cy, cx = interior_pixel(gt == 0)
    row["visible"].setChecked(True)
    assert np.abs(centre_pixel(viewer, cy, cx) - [214, 196, 84]).max() <= 4


def test_legend_counts_scene_and_view_shares(make_napari_viewer, qtbot, store, gt):
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin=PLUGIN)
    _, legend = viewer.window.add_plugin_dock_widget(PLUGIN, "Class legend")
    assert legend.layer.name == "gt"
    # the worker's last signal reaches the main thread after the worker stops: wait for the counts
    qtbot.waitUntil(lambda: legend.scene_counts is not None and legend.share_text(legend.table.names[0], "in scene")
                    != "…", timeout=10000)
    expected = np.bincount(gt.ravel(), minlength=256)[:5] / gt.size
    for cid, name in enumerate(legend.table.names):
        assert legend.share_text(name, "in scene") == f"{100 * expected[cid]:.1f} %"
    # zoom deep into a pond: the view share becomes all pond
    y, x = interior_pixel(gt == POND)
    viewer.scene.camera.center = (y, x)
    viewer.scene.camera.zoom = 200
    qtbot.waitUntil(lambda: legend.share_text("pond", "in view") == "100.0 %", timeout=10000)
    assert legend.share_text("river", "in view") == "0.0 %"
    # switching the layer re-counts for that layer's table
    legend.layer_box.setCurrentText("hard")
    qtbot.waitUntil(lambda: legend.scene_counts is not None and legend.table.name == "hard", timeout=10000)
    qtbot.waitUntil(lambda: legend.share_text("hard", "in scene") != "…", timeout=10000)
    assert legend.share_text("hard", "in scene") == f"{100 * (gt == RIVER).mean():.1f} %"
    assert legend.hidden == {0}  # "easy" (schema.HARD_NAMES) is drawn transparent, so it starts unticked


def test_overlays_add_a_lazy_sobel_boundary(make_napari_viewer, store, gt):
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin=PLUGIN)
    _, overlays = viewer.window.add_plugin_dock_widget(PLUGIN, "Overlays")
    assert set(overlays.rows) == {"hard", "margin"}
    overlays.source_box.setCurrentText("gt")
    overlays.add_boundary_button.click()
    layer = viewer.layers["gt boundary"]
    assert layer.multiscale and len(layer.data) == 3 and "gt boundary" in overlays.rows
    edge = layer.data[0].compute()
    changes = (np.diff(gt.astype(int), axis=1) != 0)
    assert edge[:, :-1][changes].all() and edge.mean() < 0.2
    overlays.rows["margin"]["style"].setCurrentText("magma")
    assert viewer.layers["margin"].colormap.name == "magma"
    overlays.rows["margin"]["visible"].setChecked(True)
    assert viewer.layers["margin"].visible and viewer.layers["margin"].colorbar.visible
    overlays.rows["margin"]["visible"].setChecked(False)
    assert not viewer.layers["margin"].visible and not viewer.layers["margin"].colorbar.visible


def test_error_navigator_loads_regions_and_zooms_there(make_napari_viewer, store, tmp_path):
    from elegantviz.analysis.regions import regions_path

    regions = [{"pair": "pond->river", "bbox": [10, 20, 30, 60], "area": 400},
               {"pair": "river->pond", "bbox": [200, 300, 260, 420], "area": 3000},
               {"pair": "river->pond", "bbox": [400, 100, 410, 110], "area": 60}]
    regions_path(store).write_text(json.dumps(regions))
    try:
        viewer = make_napari_viewer()
        viewer.open(str(store), plugin=PLUGIN)
        _, nav = viewer.window.add_plugin_dock_widget(PLUGIN, "Error navigator")
    finally:
        regions_path(store).unlink()
    assert nav.grid.rowCount() == 3 and [r.area for r in nav.shown] == [3000, 400, 60]
    nav.select_row(0)
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((229.5, 359.5))
    h, w = viewer.canvas.size
    assert viewer.scene.camera.zoom == pytest.approx(0.6 * min(h / 60, w / 120))
    box = viewer.layers["error region"].data[0]
    assert box.min(0) == pytest.approx([199.5, 299.5]) and box.max(0) == pytest.approx([259.5, 419.5])
    nav.min_area.setValue(500)  # smaller regions fold away, and the dock says how many
    assert [r.area for r in nav.shown] == [3000] and "2 under 500 px folded away" in nav.folded_label.text()
    nav.min_area.setValue(1)
    nav.pair_box.setCurrentText("pond->river")
    assert nav.grid.rowCount() == 1
    nav.select_row(0)
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((19.5, 39.5))
    bad = tmp_path / "bad.json"
    bad.write_text('{"regions": []}')
    nav.load(bad)
    assert "expected a JSON list" in nav.file_label.text() and nav.grid.rowCount() == 1


def test_sample_menus_and_view_scene(make_napari_viewer, monkeypatch, tmp_path, store):
    monkeypatch.setenv("ELEGANTVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELEGANTVIZ_CHECKPOINT", "none")  # no checkpoint: the plain scene
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "riverworld")
    assert [ly.name for ly in layers] == ["image", "gt"]
    assert layers[0].data[0].shape == (512, 512, 3) and layers[0].multiscale
    assert (tmp_path / "cache" / "samples" / "riverworld-512-seed0.zarr").is_dir()
    assert viewer.open_sample(PLUGIN, "riverworld")[1].metadata["elegantviz"]["scene"] == layers[1].metadata[
        "elegantviz"]["scene"]

    from napari._app_model import get_app_model

    menus = get_app_model().menus
    visualize = {getattr(i, "command", None) and i.command.id for i in menus.get_menu("napari/layers/visualize")}
    measure = {getattr(i, "command", None) and i.command.id for i in menus.get_menu("napari/layers/measure")}
    segment = {getattr(i, "command", None) and i.command.id for i in menus.get_menu("napari/layers/segment")}
    assert {"elegantviz.class_legend", "elegantviz.overlays", "elegantviz.attention_probe"} <= visualize
    assert {"elegantviz.class_legend", "elegantviz.error_navigator"} <= measure
    assert "elegantviz.predict" in segment

    import napari

    from napari_elegantviz import view

    ran = []
    opened = []
    monkeypatch.setattr(napari, "run", lambda *a, **k: ran.append(True))
    real_open = view.open_viewer
    monkeypatch.setattr(view, "open_viewer", lambda path, show=True: opened.append(real_open(path, show=False)))
    view.view_scene(str(store))
    assert ran == [True]
    other = opened[0]
    try:
        assert [ly.name for ly in other.layers] == ["image", "gt", "hard", "margin"]
        docks = set(other.window._wrapped_dock_widgets)
        assert {"Class legend (elegantviz)", "Overlays (elegantviz)", "Error navigator (elegantviz)"} <= docks, docks
    finally:
        other.close()


def test_error_navigator_reads_the_regions_evaluation_keeps_in_the_store(make_napari_viewer, store, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "evaluated.zarr"
    shutil.copytree(store, copy)
    scene = open_scene(copy, mode="r+")
    scene.add_labels("error", np.zeros((512, 512), np.uint8), progress=False)
    group = zarr.open_group(str(copy / "labels" / "error"), mode="r+")
    meta = dict(group.attrs["elegantviz"])
    meta["pairs"] = [{"pair": "river->pond", "pixels": 70, "regions": [
        {"pair": "river->pond", "area": 70, "bbox": [100, 100, 110, 107], "means": {}}]}]
    group.attrs["elegantviz"] = meta
    viewer = make_napari_viewer()
    viewer.open(str(copy), plugin=PLUGIN)
    _, nav = viewer.window.add_plugin_dock_widget(PLUGIN, "Error navigator")
    assert [r.bbox for r in nav.shown] == [(100, 100, 110, 107)] and "labels/error" in nav.file_label.text()
    nav.select_row(0)
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((104.5, 103.0))
