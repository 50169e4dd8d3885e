"""The plugin on really predicted stores: Predict dock, attention probe, overlays, predicted sample.

A tiny model is trained once per session (``plugin_conftest.checkpoint``); its predictions are
poor but every part prediction writes is real. Viewers are shown (``show=True``) wherever a
screenshot is taken; hidden viewers screenshot black.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from elegantviz.io.store import open_scene

from plugin_conftest import (  # noqa: F401  (fixtures)
    PREDICTED_SIZE,
    centre_pixel,
    checkpoint,
    copy_store,
    interior_pixel,
    predicted_store,
    tiny_scene,
)

PLUGIN = "elegantviz"
HOLISTIC_PARTS = ["labels/pred", "maps/margin", "labels/hard", "maps/boundary", "maps/keys", "maps/queries",
                  "maps/attention", "labels/error"]
SHOWN_PARTS = {"labels/pred", "maps/margin", "labels/hard", "maps/boundary", "maps/attention", "labels/error"}
RESPONSIVE_SIZE = 256  # several seconds of CPU prediction with the tiny model
TICK_MS = 20
LIVENESS_S = 1.0
WAIT_MS = 120_000


def parts_shown(viewer, url) -> list[str]:
    return [ly.metadata["elegantviz"]["part"] for ly in viewer.layers
            if ly.metadata.get("elegantviz", {}).get("scene") == url]


def layer_insertions(viewer) -> list[list]:
    """[start, end] (epoch s) of every layer napari inserts from now on, visuals included."""
    spans: list[list] = []
    viewer.layers.events.inserting.connect(lambda event: spans.append([time.time(), None]))
    # last: after napari's own handlers, which build the layer's vispy visuals
    viewer.layers.events.inserted.connect(lambda event: spans[-1].__setitem__(1, time.time()), position="last")
    return spans


def open_with_dock(viewer, path, dock):
    viewer.open(str(path), plugin=PLUGIN)
    return viewer.window.add_plugin_dock_widget(PLUGIN, dock)[1]


def start_prediction(widget, checkpoint, mode="holistic"):
    widget.checkpoint_edit.setText(str(checkpoint))
    widget.mode_box.setCurrentText(mode)
    widget.run_button.click()
    assert widget.running and not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()


def wait_for(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.summary is not None and "error" not in widget.summary, widget.summary
    return widget.summary


# --- Predict dock ----------------------------------------------------------------------------
def test_predict_dock_keeps_the_gui_responsive_and_adds_every_part(make_napari_viewer, qtbot, checkpoint,
                                                                   tmp_path):
    from qtpy.QtCore import QTimer

    path = tiny_scene(tmp_path / "big.zarr", RESPONSIVE_SIZE, seed=2).url
    viewer = make_napari_viewer()
    predict = open_with_dock(viewer, path, "Predict")
    assert predict.scene_box.currentText() == path

    ticks: list[float] = []  # epoch seconds, comparable with the prediction process's stage times
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.time()))
    timer.start()
    qtbot.waitUntil(lambda: len(ticks) >= 3, timeout=5000)
    adding = layer_insertions(viewer)

    started = time.time()
    start_prediction(predict, checkpoint)
    bar, bar_values, stages = predict.progress_bar, [], {}
    bar.events.value.connect(lambda event: bar_values.append((event.value, bar.total)))
    predict.worker.yielded.connect(lambda stage: stages.setdefault(stage.name, stage.at))
    summary = wait_for(qtbot, predict)
    ended = time.time()
    timer.stop()

    # the GUI thread kept ticking through the whole run, and in particular during the forward pass.
    # napari building a new layer's visuals (0.3-1.3 s each on llvmpipe, more under load) is GUI work
    # by design; the bound is on everything else, so a GUI blocked by the prediction fails
    beats = np.array([started] + [t for t in ticks if started < t < ended] + [ended])
    t0, t1 = stages["forward"], stages["labels/pred"]  # when the prediction process ran the network
    assert sum(t0 < t < t1 for t in ticks) >= 1, "no tick during the forward pass: the GUI was blocked"
    assert len(adding) == len(SHOWN_PARTS) and all(end is not None for _, end in adding)
    gaps = [(b - a, a) for a, b in zip(beats[:-1], beats[1:])
            if not any(a <= end and start <= b for start, end in adding)]
    longest_gap, at = max(gaps)
    during = max((name for name, t in stages.items() if t <= at), key=stages.get, default="start")
    assert longest_gap <= LIVENESS_S, f"the GUI froze for {longest_gap:.2f} s during {during}"

    # every part is written, every picture-like part has its layer, the prediction is on show
    assert summary["written"] == HOLISTIC_PARTS and not summary["resumed"]
    assert set(parts_shown(viewer, path)) == {"image", "labels/gt"} | SHOWN_PARTS
    assert predict.added == HOLISTIC_PARTS
    pred = viewer.layers["pred"]
    assert pred.visible and not viewer.layers["hard"].visible and pred.multiscale
    np.testing.assert_array_equal(np.asarray(pred.data[0]), open_scene(path).label("pred").compute())
    # the napari progress bar walked through the stages and was closed at the end
    assert bar_values == [(n, 9) for n in range(10)], bar_values
    assert predict.progress_bar is None and predict.run_button.isEnabled()
    assert "Predicted in" in predict.status.text()


# prediction processes running the real `elegantviz predict` with a patched library: the boundary
# stage waits for Cancel (so the stop point is certain), or the forward pass fails the run (so a
# resume must not need it)
HOLD_BOUNDARY_UNTIL_CANCEL = """
import sys
from elegantviz import cli, predict_json
from elegantviz.engine import predict
asked = []
real_watch = predict_json.watch_stdin
def watch(cancel):
    asked.append(cancel)
    real_watch(cancel)
predict_json.watch_stdin = watch
real_sobel = predict.sobel_map
def held(*args, **kwargs):
    assert asked[0].wait(60)
    return real_sobel(*args, **kwargs)
predict.sobel_map = held
sys.exit(cli.main(sys.argv[1:]))
"""
FORBID_FORWARD = """
import sys
from elegantviz import cli
from elegantviz.inference import whole
def forward(*args, **kwargs):
    raise RuntimeError("the forward pass ran again")
whole.predict_whole = forward
sys.exit(cli.main(sys.argv[1:]))
"""


FAIL_LIKE_A_BAD_CHECKPOINT = """
print("some library chatter")
print('{"error": "not a checkpoint", "type": "UnpicklingError"}')
"""
CRASH = "import sys; sys.stderr.write('Segmentation fault\\n'); sys.exit(139)"


def patched_child(code):
    from napari_elegantviz.prediction import predict_args

    return lambda checkpoint, scene, mode: [sys.executable, "-c", code, *predict_args(checkpoint, scene, mode)]


def test_cancel_keeps_the_store_valid_and_predicting_again_resumes(make_napari_viewer, qtbot, checkpoint, tmp_path,
                                                                  monkeypatch):
    from napari_elegantviz import prediction

    path = tiny_scene(tmp_path / "cancel.zarr", 96, seed=4).url
    viewer = make_napari_viewer()
    predict = open_with_dock(viewer, path, "Predict")
    monkeypatch.setattr(prediction, "child_command", patched_child(HOLD_BOUNDARY_UNTIL_CANCEL))
    start_prediction(predict, checkpoint)
    predict.worker.yielded.connect(lambda stage: stage.name == "maps/boundary" and predict.cancel_button.click())
    summary = wait_for(qtbot, predict)
    assert summary == {"cancelled": True, "scene": path, "before": "maps/keys", "done": 5, "total": 9}
    assert "Cancelled before maps/keys" in predict.status.text()

    scene = open_scene(path)  # a valid store: finished parts complete, nothing half-written
    assert scene.incomplete_parts() == [] and "_predict" in scene.root
    assert set(scene.labels) == {"gt", "pred", "hard"} and set(scene.maps) == {"margin", "boundary"}
    assert set(parts_shown(viewer, path)) == {"image", "labels/gt", "labels/pred", "maps/margin", "labels/hard",
                                              "maps/boundary"}

    monkeypatch.setattr(prediction, "child_command", patched_child(FORBID_FORWARD))
    predict.run_button.click()
    summary = wait_for(qtbot, predict)
    assert summary["resumed"] and summary["written"] == HOLISTIC_PARTS
    names = [ly.name for ly in viewer.layers]
    assert len(names) == len(set(names)), names  # refreshed in place, not added twice
    assert set(parts_shown(viewer, path)) == {"image", "labels/gt"} | SHOWN_PARTS
    assert "_predict" not in open_scene(path).root


def test_sliced_mode_and_failures(make_napari_viewer, qtbot, checkpoint, tmp_path, monkeypatch):
    from napari_elegantviz import prediction

    path = tiny_scene(tmp_path / "sliced.zarr", 96, seed=6).url
    viewer = make_napari_viewer()
    predict = open_with_dock(viewer, path, "Predict")
    start_prediction(predict, checkpoint, mode="sliced")
    summary = wait_for(qtbot, predict)
    assert summary["mode"] == "sliced" and summary["written"] == ["labels/pred", "labels/error"]
    assert set(parts_shown(viewer, path)) == {"image", "labels/gt", "labels/pred", "labels/error"}

    predict.checkpoint_edit.setText(str(tmp_path / "missing.pt"))
    predict.run_button.click()
    assert not predict.running and "No checkpoint file" in predict.status.text()
    # what the prediction process reports, and a process that dies, reach the dock's status line
    predict.checkpoint_edit.setText(str(checkpoint))
    for child, message in ((FAIL_LIKE_A_BAD_CHECKPOINT, "UnpicklingError: not a checkpoint"),
                           (CRASH, "exited with code 139: Segmentation fault")):
        monkeypatch.setattr(prediction, "child_command", patched_child(child))
        predict.run_button.click()
        qtbot.waitUntil(lambda: not predict.running, timeout=WAIT_MS)
        assert message in predict.summary["error"] and "Prediction failed" in predict.status.text()
        assert predict.run_button.isEnabled() and predict.progress_bar is None


def test_a_re_predict_refreshes_replaced_layers_once_swapped_in_and_drops_removed_ones(
        make_napari_viewer, qtbot, checkpoint, predicted_store, tmp_path):
    """Over a predicted store the new parts are staged and swapped in at the end: their layers are
    refreshed then (not mid-run, when the store still holds the old parts), and the evidence a
    sliced run does not write again leaves the store and the viewer."""
    from napari_elegantviz.viewer_layers import layer_tag

    path = str(copy_store(predicted_store, tmp_path / "again.zarr"))
    viewer = make_napari_viewer()
    predict = open_with_dock(viewer, path, "Predict")
    assert {"labels/pred", "maps/margin", "maps/attention"} <= set(parts_shown(viewer, path))
    old_pred = viewer.layers["pred"]
    inserted = []  # (part, whether the run had returned) for every layer napari inserts
    viewer.layers.events.inserted.connect(
        lambda event: inserted.append((layer_tag(event.value).get("part"), predict.summary is not None)))
    start_prediction(predict, checkpoint, mode="sliced")
    summary = wait_for(qtbot, predict)
    assert summary["written"] == ["labels/pred", "labels/error"]
    assert sorted(part for part, _ in inserted) == ["labels/error", "labels/pred"]
    assert all(returned for _, returned in inserted), inserted  # none shown while the old parts were stored
    assert set(parts_shown(viewer, path)) == {"image", "labels/gt", "labels/pred", "labels/error"}
    assert viewer.layers["pred"] is not old_pred
    np.testing.assert_array_equal(np.asarray(viewer.layers["pred"].data[0]), open_scene(path).label("pred").compute())


def test_predict_progress_json_reports_errors_and_cancels_on_closed_stdin(checkpoint, tmp_path, capsys,
                                                                         monkeypatch):
    import io
    import json

    from elegantviz.cli import main

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    path = tiny_scene(tmp_path / "s.zarr", 96, seed=8).url
    args = ["--progress-json", "--stdin-cancel"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("keep going\n"))  # then EOF: the parent is gone
    assert main(["predict", str(garbage), path, *args]) == 2
    out, err = capsys.readouterr()
    assert set(json.loads(out.strip().splitlines()[-1])) == {"scene", "error", "type"}
    assert "not a readable elegantviz checkpoint" in err  # the usual error line, on stderr
    monkeypatch.setattr(sys, "stdin", io.StringIO("keep going\n"))  # stdin closes: the next stage boundary stops
    assert main(["predict", str(checkpoint), path, *args]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines == [{"scene": path, "cancelled": {"before": "forward", "done": 0, "total": 9}}]
    assert open_scene(path).labels == ["gt"]
    # without --stdin-cancel nothing stops it: every stage, then the summary, one JSON object per line
    assert main(["predict", str(checkpoint), path, "--progress-json", "--mode", "sliced"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [m.get("stage") for m in lines] == ["forward", "labels/pred", "labels/error", "done", None]
    assert [m["done"] for m in lines[:-1]] == [0, 1, 2, 3] and {m["total"] for m in lines[:-1]} == {3}
    assert lines[-1]["summary"]["written"] == ["labels/pred", "labels/error"] and lines[-1]["scene"] == path


# --- a really predicted store in the viewer --------------------------------------------------
def test_predicted_store_layers_and_hard_region_colour(make_napari_viewer, predicted_store):
    scene = open_scene(predicted_store)
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(predicted_store), plugin=PLUGIN)
    names = [ly.name for ly in layers]
    assert names == ["image", "error", "gt", "hard", "pred", "attention", "boundary", "margin"]  # no keys/queries
    # margin and attention are stored at full size: drawn at scale 1, not blown up by the stride
    for name in ("attention", "boundary", "margin"):
        layer = viewer.layers[name]
        assert tuple(layer.scale) == (1, 1) and layer.data[0].shape == (PREDICTED_SIZE, PREDICTED_SIZE)
    assert viewer.layers["hard"].features["class"].tolist()[:2] == ["easy", "hard"]

    hard = scene.label("hard").compute() == 1
    y, x = interior_pixel(hard)
    viewer.layers["gt"].visible = False
    _, overlays = viewer.window.add_plugin_dock_widget(PLUGIN, "Overlays")
    row = overlays.rows["hard"]
    row["visible"].setChecked(True)
    row["opacity"].setValue(100)
    assert np.abs(centre_pixel(viewer, y, x) - [255, 0, 255]).max() <= 4  # the overlay colour
    ey, ex = interior_pixel(~hard)
    assert np.abs(centre_pixel(viewer, ey, ex) - [255, 0, 255]).max() > 60  # an easy pixel is not coloured
    row["style"].setCurrentText("cyan")
    assert np.abs(centre_pixel(viewer, y, x) - [0, 255, 255]).max() <= 4


def test_attention_probe_click_shows_that_pixels_attention(make_napari_viewer, qtbot, predicted_store):
    from qtpy.QtCore import QPoint, Qt

    from elegantviz.analysis.attention import pixel_attention
    from napari.utils.colormaps import ensure_colormap

    scene = open_scene(predicted_store)
    stride = int(scene.map_attrs("keys")["stride"])
    viewer = make_napari_viewer(show=True)
    probe = open_with_dock(viewer, predicted_store, "Attention probe")
    assert probe.scene_box.currentText() == scene.url
    for layer in viewer.layers:
        layer.visible = layer.name == "image"  # under the heat map: a missing map would show the scene

    # a real click on the canvas centre, with the camera centred on the pixel to probe
    y, x = 37, 90
    viewer.scene.camera.center = (y, x)
    viewer.scene.camera.zoom = 4
    canvas = viewer.window._qt_viewer.canvas.native
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.waitUntil(lambda: probe.shown is not None, timeout=30_000)
    layer = viewer.layers["attention probe"]
    (py, px) = layer.metadata["elegantviz"]["pixel"]
    assert abs(py - y) <= 1 and abs(px - x) <= 1  # the click landed on the pixel under the centre

    # the layer is that pixel's attention over the whole scene, at feature resolution, centred on its blocks
    expected = pixel_attention(scene, py, px)
    data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5)
    assert tuple(layer.scale) == (stride, stride)
    assert tuple(layer.data_to_world((0, 0))) == ((stride - 1) / 2, (stride - 1) / 2)
    # colours span the 0.5-99.5 percentiles: a few hot pixels do not leave the rest black
    assert layer.contrast_limits == pytest.approx(np.percentile(expected, [0.5, 99.5]), rel=1e-4)
    assert "attention probe" in viewer.window.add_plugin_dock_widget(PLUGIN, "Overlays")[1].rows
    assert viewer.layers["probed pixel"].data.tolist() == [[py, px]]

    # on screen: brightest where the pixel attends most, darkest where it attends least
    layer.opacity = 1.0
    viewer.layers["probed pixel"].visible = False
    inferno = ensure_colormap("inferno")
    most = np.unravel_index(int(np.argmax(expected)), expected.shape)
    least = np.unravel_index(int(np.argmin(expected)), expected.shape)
    centre_of = lambda f: (f[0] * stride + (stride - 1) / 2, f[1] * stride + (stride - 1) / 2)  # noqa: E731
    bright = centre_pixel(viewer, *centre_of(most), zoom=4)
    dark = centre_pixel(viewer, *centre_of(least), zoom=4)
    assert np.abs(bright - inferno.map([1.0])[0, :3] * 255).max() <= 6, bright
    assert np.abs(dark - inferno.map([0.0])[0, :3] * 255).max() <= 6, dark

    # a click elsewhere replaces the map; a drag (a pan) does not probe
    probe.probe_at(5, 5)
    qtbot.waitUntil(lambda: probe.shown == (scene.url, 5, 5), timeout=30_000)
    np.testing.assert_allclose(np.asarray(viewer.layers["attention probe"].data), pixel_attention(scene, 5, 5),
                               rtol=1e-5, atol=1e-5)
    assert [ly.name for ly in viewer.layers].count("attention probe") == 1
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseMove(canvas, centre + QPoint(40, 30))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=centre + QPoint(40, 30))
    qtbot.wait(300)
    assert probe.requested == (scene.url, 5, 5)


def test_probe_pyramid_is_the_mean_attention_of_each_block(tmp_path):
    from elegantviz.analysis.attention import pixel_attention
    from napari_elegantviz.layers import probe_layer

    scene = tiny_scene(tmp_path / "keys.zarr", 256, seed=1)
    rng = np.random.default_rng(0)
    keys = rng.random((6, 32, 32)).astype(np.float32) * 2
    scene.add_map("keys", keys, tile=8, progress=False, attrs={"stride": 8})
    scene.add_map("queries", rng.standard_normal((6, 32, 32)), tile=8, progress=False, attrs={"stride": 8})
    scene = open_scene(scene.url)
    levels, kwargs, kind = probe_layer(scene, 100, 200)
    assert kind == "image" and kwargs["multiscale"] and len(levels) == len(scene.map_levels("keys")) >= 3
    full = pixel_attention(scene, 100, 200)
    np.testing.assert_allclose(levels[0].compute(), full, rtol=1e-5)
    pooled = full.reshape(16, 2, 16, 2).mean((1, 3))
    np.testing.assert_allclose(levels[1].compute(), pooled, rtol=0.01, atol=0.01)  # keys pooled in float16
    assert kwargs["contrast_limits"] == pytest.approx(np.percentile(full, [0.5, 99.5]), rel=1e-4)


# --- sample data -----------------------------------------------------------------------------
def test_sample_is_predicted_when_a_checkpoint_is_configured(make_napari_viewer, monkeypatch, tmp_path, checkpoint):
    from napari_elegantviz import sample_data

    monkeypatch.setenv("ELEGANTVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELEGANTVIZ_CHECKPOINT", str(checkpoint))
    monkeypatch.setattr(sample_data, "SAMPLE_SIZE", 96)  # the real sample is 512 px; same path, less time
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "riverworld")
    names = {ly.name for ly in layers}
    assert {"image", "gt", "pred", "hard", "error", "margin", "boundary", "attention"} <= names
    url = layers[0].metadata["elegantviz"]["scene"]
    assert "-pred-" in url and "_predict" not in open_scene(url).root
    # a second open reuses the predicted store; the plain sample is cached beside it
    assert viewer.open_sample(PLUGIN, "riverworld")[0].metadata["elegantviz"]["scene"] == url
    assert (tmp_path / "cache" / "samples" / "riverworld-96-seed0.zarr").is_dir()
    assert not layers[1].multiscale  # smaller than a tile: one level, shown as a plain array

    # the cache-root file works too, and a checkpoint that cannot predict falls back to the plain scene
    from napari_elegantviz import prediction

    monkeypatch.delenv("ELEGANTVIZ_CHECKPOINT")
    (tmp_path / "cache" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(prediction, "child_command", patched_child(FAIL_LIKE_A_BAD_CHECKPOINT))
    with pytest.warns(UserWarning, match="without prediction.*UnpicklingError"):
        plain = viewer.open_sample(PLUGIN, "riverworld")
    assert [ly.metadata["elegantviz"]["part"] for ly in plain] == ["image", "labels/gt"]
    assert "-pred-" not in plain[0].metadata["elegantviz"]["scene"]
    # with neither, the shipped riverworld model is the default (for the sample and the Predict dock)
    from elegantviz.weights import shipped_checkpoint
    from napari_elegantviz.cache import configured_checkpoint

    (tmp_path / "cache" / "checkpoint.pt").unlink()
    assert configured_checkpoint() == shipped_checkpoint()
    monkeypatch.setenv("ELEGANTVIZ_CHECKPOINT", "none")
    assert configured_checkpoint() is None
