import numpy as np
import pytest
import torch
from scipy import ndimage

from elegantviz.cli import main
from elegantviz.config import config_from_dict
from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.engine import predict as predict_mod
from elegantviz.analysis.sobel import sobel_map
from elegantviz.engine.predict import predict_scene
from elegantviz.engine.checkpoints import load_model
from elegantviz.engine.train import Trainer
from elegantviz.errors import InputError
from elegantviz.io.store import open_scene
from elegantviz.losses import label_sobel


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    paths = [str(synthesize_riverworld(root / f"s{i}.zarr", height=96, width=80, seed=i, tile=64, progress=False).url)
             for i in range(2)]
    cfg = config_from_dict({
        "data": {"train": paths[:1], "val": []},
        "model": {"name": "elegantseg-cpu", "overrides": {"dim": 16, "hidden_dim": 16}},
        "optim": {"warmup_iters": 1}, "iters": 2, "ckpt_every": 2, "out_dir": str(root / "run"),
    })
    return Trainer(cfg, progress=False).fit()


def fresh_scene(tmp_path, size=(100, 90), seed=7):
    return synthesize_riverworld(tmp_path / "t.zarr", height=size[0], width=size[1], seed=seed, tile=64, progress=False)


def test_holistic_prediction_writes_pred_and_evidence(checkpoint, tmp_path):
    scene = fresh_scene(tmp_path)
    summary = predict_scene(checkpoint, scene.url, progress=False)
    s = open_scene(scene.url)
    assert {"pred", "hard", "error"} <= set(s.labels)
    assert {"margin", "boundary", "keys", "queries", "attention"} <= set(s.maps)
    assert "_predict" not in s.root and not summary["resumed"]
    # the stored prediction is the model's own argmax on the whole normalised scene
    trained = load_model(checkpoint)
    model, table, norm, cfg = trained.model, trained.classes, trained.norm, trained.config
    img, _ = norm.apply(s.image().compute(), s.nodata)
    with torch.no_grad():
        out = model(torch.from_numpy(img)[None], return_evidence=True)
    np.testing.assert_array_equal(s.label("pred").compute(), out.logits.argmax(1)[0].numpy())
    stride = out.evidence.output_stride
    hard = out.evidence.hard_mask()[0].numpy()
    np.testing.assert_array_equal(s.label("hard").compute(), np.kron(hard, np.ones((stride, stride)))[:100, :90])
    assert abs(hard.mean() - 0.1) < 0.02  # a = 10 %
    # keys and queries reproduce the attention map the model computed for the hard region
    keys = s.map("keys").compute().astype(np.float32)
    queries = s.map("queries").compute().astype(np.float32)
    idx = out.evidence.hard_indices[0].numpy()
    q = queries.reshape(queries.shape[0], -1)[:, idx].mean(1)
    att = np.einsum("d,dhw->hw", q, keys)
    np.testing.assert_allclose(att, (out.evidence.attention_map(0) * hard.size).numpy(), rtol=0.02, atol=0.02)
    # the error map codes river/pond confusions against gt
    gt, pred, err = s.label("gt").compute(), s.label("pred").compute(), s.label("error").compute()
    river, pond = table.id_of("river"), table.id_of("pond")
    np.testing.assert_array_equal(err == 1, (gt == river) & (pred == pond))
    np.testing.assert_array_equal(err == 0, gt == pred)


def test_sobel_map_blockwise_equals_whole_map():
    lab = (np.random.default_rng(0).random((70, 50)) < 0.3).astype(np.uint8)
    import dask.array as da

    got = sobel_map(da.from_array(lab, chunks=16)).compute()
    want = label_sobel(torch.from_numpy(lab.astype(np.int64)), 5, ignore_index=None).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_interrupted_prediction_resumes_without_running_the_network(checkpoint, tmp_path, monkeypatch):
    scene = fresh_scene(tmp_path)
    calls = {"forward": 0}
    from elegantviz.inference import whole

    real_forward = whole.predict_whole

    def counting(*a, **k):
        calls["forward"] += 1
        return real_forward(*a, **k)

    monkeypatch.setattr(whole, "predict_whole", counting)
    real_add_map = type(scene).add_map

    def failing_add_map(self, name, *a, **k):
        if name == "boundary":
            raise KeyboardInterrupt("simulated kill")
        return real_add_map(self, name, *a, **k)

    monkeypatch.setattr(type(scene), "add_map", failing_add_map)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(checkpoint, scene.url, progress=False)
    assert "_predict" in open_scene(scene.url).root
    monkeypatch.setattr(type(scene), "add_map", real_add_map)
    summary = predict_scene(checkpoint, scene.url, progress=False)
    assert summary["resumed"] and calls["forward"] == 1
    assert "boundary" in open_scene(scene.url).maps


def test_sliced_prediction_and_band_mismatch(checkpoint, tmp_path, capsys):
    scene = fresh_scene(tmp_path, size=(130, 120))
    assert main(["predict", str(checkpoint), scene.url, "--mode", "sliced", "--crop", "64", "--name", "sliced", "-q"]) == 0
    s = open_scene(scene.url)
    assert "sliced" in s.labels and "error_sliced" in s.labels and "margin" not in s.maps
    assert "crop" not in capsys.readouterr().err
    from elegantviz.io.store import create_scene

    three = create_scene(tmp_path / "three.zarr", np.zeros((3, 64, 64), np.uint8), progress=False)
    with pytest.raises(InputError, match="three.zarr: has 3 bands, the model was trained on 4"):
        predict_scene(checkpoint, three.url, progress=False)


def test_attention_from_stored_keys_matches_the_model(checkpoint, tmp_path):
    from elegantviz.analysis.attention import pixel_attention, region_attention

    scene = fresh_scene(tmp_path)
    predict_scene(checkpoint, scene.url, progress=False)
    s = open_scene(scene.url)
    trained = load_model(checkpoint)
    model, norm = trained.model, trained.norm
    img, _ = norm.apply(s.image().compute(), s.nodata)
    with torch.no_grad():
        ev = model(torch.from_numpy(img)[None], return_evidence=True).evidence
    # pick a hard pixel: its attention map is the model's own for that query
    k = 3
    flat = int(ev.hard_indices[0, k])
    h, w = ev.feature_size
    fy, fx = divmod(flat, w)
    got = pixel_attention(s, fy * ev.output_stride, fx * ev.output_stride)
    want = (ev.attention_map(0, hard=k) * h * w).numpy()
    np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02)
    region = region_attention(s, ev.hard_mask()[0].numpy())
    np.testing.assert_allclose(region, s.map("attention", 0).compute()[::ev.output_stride, ::ev.output_stride][:h, :w],
                               rtol=0.02, atol=0.02)


def test_a_new_run_never_keeps_parts_of_an_older_one(checkpoint, tmp_path):
    scene = fresh_scene(tmp_path)
    predict_scene(checkpoint, scene.url, progress=False)
    assert "margin" in open_scene(scene.url).maps
    # a sliced prediction into labels/pred replaces pred, and the holistic evidence of the old pred goes
    predict_scene(checkpoint, scene.url, mode="sliced", crop=64, progress=False)
    s = open_scene(scene.url)
    assert "pred" in s.labels and "margin" not in s.maps and "hard" not in s.labels


def test_tiled_prediction_writes_the_same_store(checkpoint, tmp_path):
    a = synthesize_riverworld(tmp_path / "a.zarr", height=160, width=150, seed=4, tile=64, progress=False)
    b = synthesize_riverworld(tmp_path / "b.zarr", height=160, width=150, seed=4, tile=64, progress=False)
    predict_scene(checkpoint, a.url, progress=False)
    assert main(["predict", str(checkpoint), b.url, "--tile", "64", "-q"]) == 0
    sa, sb = open_scene(a.url), open_scene(b.url)
    np.testing.assert_array_equal(sa.label("pred").compute(), sb.label("pred").compute())
    np.testing.assert_array_equal(sa.label("hard").compute(), sb.label("hard").compute())
    np.testing.assert_allclose(sa.map("attention").compute().astype(np.float32),
                               sb.map("attention").compute().astype(np.float32), rtol=1e-2, atol=1e-2)
    # keys and queries were streamed into the cache tile by tile: they are the in-memory ones
    from elegantviz.inference.tiles import predict_halo_tiles

    assert "_predict" not in sb.root
    trained = load_model(checkpoint)
    model, norm = trained.model, trained.norm
    img, _ = norm.apply(sb.image().compute(), sb.nodata)
    ref = predict_halo_tiles(model, img, tile=64)
    for key in ("keys", "queries"):
        np.testing.assert_array_equal(sb.map(key).compute(), getattr(ref, key))


def _store_parts(url) -> dict:
    s = open_scene(url)
    parts = {f"labels/{n}": s.label_levels(n) for n in s.labels} | {f"maps/{n}": s.map_levels(n) for n in s.maps}
    return {k: [np.asarray(level.compute()) for level in levels] for k, levels in parts.items()}


def test_interrupted_tiled_prediction_resumes_to_the_same_store(checkpoint, tmp_path, monkeypatch):
    """Stopped after the forward pass, a tiled run resumes from the streamed cache without the
    network; stopped before that cache is complete, it discards it and runs the network again.
    Either way the store is that of an uninterrupted run."""
    from elegantviz.inference import tiles

    urls = [synthesize_riverworld(tmp_path / f"{k}.zarr", height=120, width=110, seed=5, tile=64,
                                  progress=False).url for k in "abc"]
    calls = {"forward": 0}
    real_forward, real_cache = tiles.predict_halo_tiles, predict_mod._cache_outputs

    def counting(*a, **k):
        calls["forward"] += 1
        return real_forward(*a, **k)

    def stop(what, done, total):
        if what == "maps/keys":
            raise KeyboardInterrupt("simulated kill")

    def failing_cache(*a, **k):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(tiles, "predict_halo_tiles", counting)
    predict_scene(checkpoint, urls[0], progress=False, tile=64)
    want = _store_parts(urls[0])
    assert "maps/keys" in want and not np.isnan(want["maps/keys"][0]).any()
    # interrupted after the forward pass: the cache is complete and the maps come from it
    with pytest.raises(KeyboardInterrupt):
        predict_scene(checkpoint, urls[1], progress=False, tile=64, on_stage=stop)
    assert open_scene(urls[1]).root["_predict/pred"].attrs["elegantviz"]["complete"]
    summary = predict_scene(checkpoint, urls[1], progress=False, tile=64)
    assert summary["resumed"] and calls["forward"] == 2
    # interrupted with the maps streamed but the cache not complete: not to be resumed
    monkeypatch.setattr(predict_mod, "_cache_outputs", failing_cache)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(checkpoint, urls[2], progress=False, tile=64)
    half = open_scene(urls[2]).root["_predict/pred"]
    assert "keys" in half and "complete" not in half.attrs.get("elegantviz", {})
    monkeypatch.setattr(predict_mod, "_cache_outputs", real_cache)
    summary = predict_scene(checkpoint, urls[2], progress=False, tile=64)
    assert not summary["resumed"] and calls["forward"] == 4
    for url in urls[1:]:
        got = _store_parts(url)
        assert set(got) == set(want) and "_predict" not in open_scene(url).root
        for part, levels in want.items():
            for a, b in zip(levels, got[part]):
                np.testing.assert_array_equal(b, a, err_msg=part)


def _gt_bytes(url):
    return np.asarray(open_scene(url).label("gt").compute())


@pytest.mark.parametrize("name, message", [("", "invalid labels name ''"), ("gt", "'gt' is reserved .*ground truth"),
                                           ("hard", "'hard' is reserved"), ("error_x", "'error_x' is reserved"),
                                           ("../x", "invalid labels name")])
def test_predict_never_writes_over_the_ground_truth_or_the_store(checkpoint, tmp_path, name, message):
    """`--name ""` used to delete labels/ (ground truth included) and every maps/* before failing;
    `--name gt` replaced the ground truth with the prediction."""
    scene = fresh_scene(tmp_path)
    predict_scene(checkpoint, scene.url, progress=False)
    before = open_scene(scene.url)
    labels, maps, gt = before.labels, before.maps, _gt_bytes(scene.url)
    with pytest.raises(InputError, match=message):
        predict_scene(checkpoint, scene.url, name=name, progress=False)
    after = open_scene(scene.url)
    assert after.labels == labels and after.maps == maps
    np.testing.assert_array_equal(_gt_bytes(scene.url), gt)


def test_predict_replaces_only_labels_it_wrote(checkpoint, tmp_path):
    scene = fresh_scene(tmp_path)
    s = open_scene(scene.url, mode="a")
    s.add_labels("manual", s.label("gt"), progress=False)  # a user's own annotation
    with pytest.raises(InputError, match="labels/manual exists and was not written by predict"):
        predict_scene(checkpoint, scene.url, name="manual", progress=False)
    np.testing.assert_array_equal(open_scene(scene.url).label("manual").compute(), _gt_bytes(scene.url))
    predict_scene(checkpoint, scene.url, name="again", mode="sliced", crop=64, progress=False)
    predict_scene(checkpoint, scene.url, name="again", mode="sliced", crop=64, progress=False)  # its own: replaced


@pytest.mark.parametrize("args, message", [
    (["--tile", "0"], "tile must be .* >= 64"), (["--tile", "-64"], "tile must be"), (["--tile", "7"], "tile must be"),
    (["--mode", "sliced", "--overlap", "1.0"], r"overlap must be in \[0, 1\)"),
    (["--mode", "sliced", "--overlap", "-1"], "overlap must be"), (["--mode", "sliced", "--crop", "0"], "--crop: must be at least 16"),
    (["--pair", "lake:sea"], "lake"),
])
def test_bad_numbers_are_refused_before_any_work(checkpoint, tmp_path, capsys, args, message):
    import re

    scene = fresh_scene(tmp_path)
    try:
        code = main(["predict", str(checkpoint), scene.url, "-q", *args])
    except SystemExit as e:  # refused by argparse itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert "pred" not in open_scene(scene.url).labels


def test_keys_and_attention_hold_their_values_past_float16_range(checkpoint, tmp_path):
    """At 2048 px (stride 8) N = 65,536 > 65,504: keys x N and attention overflowed float16 and the
    stored keys were all 0 or inf. They are float32 now; the probe's attention comes out finite
    and equal to the model's."""
    from elegantviz.analysis.attention import pixel_attention

    scene = synthesize_riverworld(tmp_path / "big.zarr", height=2048, width=2048, seed=3, progress=False)
    predict_scene(checkpoint, scene.url, progress=False)
    s = open_scene(scene.url)
    trained = load_model(checkpoint)
    h, w = s.map("keys").shape[1:]
    assert h * w > 65504 and s.map("keys").dtype == np.float32 and s.map("attention").dtype == np.float32
    keys = np.asarray(s.map("keys").compute())
    assert np.isfinite(keys).all() and keys.max() > 0
    img, _ = trained.norm.apply(s.image().compute(), s.nodata)
    with torch.no_grad():
        ev = trained.model(torch.from_numpy(img)[None], return_evidence=True).evidence
    want = (ev.keys[0] * (h * w)).numpy()
    np.testing.assert_allclose(keys, want.reshape(keys.shape), rtol=1e-5, atol=1e-3)
    att = pixel_attention(s, h // 2 * 8, w // 2 * 8)
    # keys sum to 1 over positions and a query to 1 over channels: relative to uniform, the mean is 1
    assert np.isfinite(att).all() and abs(float(att.mean()) - 1.0) < 1e-3


def test_a_second_writer_is_refused_with_one_line(checkpoint, tmp_path, capsys):
    """Two predicts on one store ended in KeyError: '_progress'; now the second is refused while
    the first runs, and a lock left by a killed writer does not lock the store forever."""
    import json
    import subprocess
    import sys
    import time

    from elegantviz.io.lock import lock_path

    scene = fresh_scene(tmp_path)
    lock = lock_path(scene.url)
    first = subprocess.Popen([sys.executable, "-m", "elegantviz", "predict", str(checkpoint), scene.url, "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.exists(), first.communicate()
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["command"] == "predict"
        assert main(["predict", str(checkpoint), scene.url, "-q"]) == 2
        err = capsys.readouterr().err
        assert f"another elegantviz is writing it (predict, pid {first.pid}" in err and "Traceback" not in err
        assert main(["evaluate", scene.url, "--out", str(tmp_path / "ev"), "-q"]) == 2  # evaluate writes too
        assert "another elegantviz is writing it" in capsys.readouterr().err
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert not lock.exists()
    assert "pred" in open_scene(scene.url).labels
    # a lock whose process is gone is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": holder["host"], "command": "predict",
                                "since": "earlier"}))
    assert main(["evaluate", scene.url, "--out", str(tmp_path / "ev"), "-q"]) == 0
    assert not lock.exists()
