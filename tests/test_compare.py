"""ISDNet through the shipped commands (train, predict, compare), and `elegantviz compare` against
a dense confusion matrix of the labels it left in the stores."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from elegantviz.config import config_from_dict
from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.engine.predict import predict_scene
from elegantviz.engine.train import train
from elegantviz.errors import InputError
from elegantviz.io.store import create_scene, open_scene
from elegantviz.weights import shipped_checkpoint


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "elegantviz", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def isdnet_checkpoint(tmp_path_factory, one_torch_thread):
    """ISDNet's CPU preset after a few steps of the shipped riverworld recipe (a model that runs)."""
    root = tmp_path_factory.mktemp("isd")
    paths = [synthesize_riverworld(root / f"t{i}.zarr", height=128, seed=i, tile=128, progress=False).url
             for i in range(2)]
    cfg = config_from_dict({"data": {"train": paths, "val": [paths[1]]}, "model": {"name": "isdnet-cpu"},
                            "optim": {"optimizer": "adamw", "lr": 1e-3, "warmup_iters": 0, "head_lr_mult": 1},
                            "memory": {"policy": "auto"}, "iters": 3, "val_every": 3, "ckpt_every": 3,
                            "log_every": 1, "precise_bn": 1, "out_dir": str(root / "run")})
    best = train(cfg, progress=False)
    log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    return best, log


def test_isdnet_trains_with_its_seven_terms_logged(isdnet_checkpoint):
    _, log = isdnet_checkpoint
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 3 and {"seg", "deep", "aux8", "aux16", "sr", "sd", "fcn"} <= set(steps[0])
    assert steps[0]["policy"] == "none"  # policy auto: the planner's dry runs ran ISDNet's own loss
    assert any("val" in r for r in log)


def test_isdnet_predicts_labels_alone_and_refuses_tiles(isdnet_checkpoint, riverworld_store, one_torch_thread):
    best, _ = isdnet_checkpoint
    summary = predict_scene(best, riverworld_store.url, name="isdnet", progress=False)
    assert summary["written"] == ["labels/isdnet", "labels/error_isdnet"]
    scene = open_scene(riverworld_store.url)
    assert scene.label("isdnet").shape == scene.label("gt").shape and not scene.maps
    with pytest.raises(InputError, match="--tile runs ElegantSeg unit by unit; ISDNet predicts"):
        predict_scene(best, riverworld_store.url, name="isdnet", tile=128, progress=False)


def test_isdnet_refuses_a_scene_smaller_than_its_deep_branch(isdnet_checkpoint, tmp_path):
    best, _ = isdnet_checkpoint
    small = create_scene(tmp_path / "small.zarr", np.zeros((4, 48, 96), np.uint8), progress=False)
    with pytest.raises(InputError, match="48 x 96 px is too small to predict .each side needs 64 px"):
        predict_scene(best, small.url, name="isdnet", progress=False)
    with pytest.raises(InputError, match="--crop 32: this model takes windows of 64 px"):
        big = create_scene(tmp_path / "big.zarr", np.zeros((4, 96, 96), np.uint8), progress=False)
        predict_scene(best, big.url, name="isdnet", mode="sliced", crop=32, progress=False)


def _confusion(scene, name: str, k: int) -> np.ndarray:
    gt, pr = np.asarray(scene.label("gt").compute()), np.asarray(scene.label(name).compute())
    keep = gt != scene.classes.ignore_index
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (gt[keep], pr[keep]), 1)
    return cm


def test_compare_table_equals_a_dense_confusion_matrix(isdnet_checkpoint, tmp_path):
    best, _ = isdnet_checkpoint
    scenes = [synthesize_riverworld(tmp_path / f"c{i}.zarr", height=192, seed=50 + i, tile=128, progress=False).url
              for i in range(2)]
    out = tmp_path / "cmp.json"
    r = _cli("compare", *scenes, "--model", f"isd={best}", "--model", f"es={shipped_checkpoint()}",
             "--model", f"sl={shipped_checkpoint()}@sliced", "--crop", 128, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    table = r.stdout.splitlines()
    assert table[0].split()[:3] == ["model", "mode", "mIoU"]
    assert [line.split()[0] for line in table[1:4]] == ["isd", "es", "sl"]
    result = json.loads(out.read_text())
    k = open_scene(scenes[0]).classes.num_classes
    names = open_scene(scenes[0]).classes.names
    for row in result["models"]:
        cm = sum(_confusion(open_scene(s), row["model"], k) for s in scenes)
        iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
        present = cm.sum(1) + cm.sum(0) > 0
        assert abs(row["miou"] - float(np.mean(iou[present]))) < 1e-9
        assert row["pairs"]["river->pond"] == cm[names.index("river"), names.index("pond")]
        assert row["pairs"]["pond->river"] == cm[names.index("pond"), names.index("river")]
        assert 0 < row["forward_s"] < row["seconds"] and 100 * 2**20 < row["peak_rss_bytes"] < 24 * 2**30
    assert result["models"][2]["mode"] == "sliced"
    assert f"{result['models'][1]['miou']:.3f}" in table[2]


@pytest.mark.parametrize("args, message", [
    (["--model", "a=missing.pt"], "missing.pt: no such checkpoint"),
    (["--model", "nocheckpoint"], "write NAME=CHECKPOINT"),
    (["--model", "gt=CK"], "'gt' is a name predict or the ground truth uses"),
    (["--model", "error_x=CK"], "'error_x' is a name predict or the ground truth uses"),
    (["--model", "a=CK@tiled"], "no such checkpoint; a mode after @ is holistic or sliced"),
    (["--model", "a=CK", "--crop", "128"], "--crop applies to models given as NAME=CHECKPOINT@sliced"),
    (["--model", "a=CK", "--model", "a=CK"], "names must differ"),
    ([], "at least one --model"),
])
def test_compare_refuses_bad_models_in_one_line(riverworld_store, args, message):
    ck = str(shipped_checkpoint())
    r = _cli("compare", riverworld_store.url, *[a.replace("CK", ck) for a in args])
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_compare_refuses_a_scene_without_ground_truth(tmp_path):
    bare = create_scene(tmp_path / "bare.zarr", np.zeros((4, 64, 64), np.uint8), progress=False)
    r = _cli("compare", bare.url, "--model", f"es={shipped_checkpoint()}")
    assert r.returncode == 2 and "has no labels/gt" in r.stderr


def test_compare_keeps_measuring_after_a_failed_model(riverworld_store, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    at = tmp_path / "lr@1e-3.pt"  # an @ in a checkpoint's own name
    at.write_bytes(shipped_checkpoint().read_bytes())
    out = tmp_path / "cmp.json"
    r = _cli("compare", riverworld_store.url, "--model", f"bad={bad}", "--model", f"es={at}", "--out", out, "-q")
    assert r.returncode == 2 and "1 of 2 models failed: bad" in r.stderr, r.stderr
    rows = {row["model"]: row for row in json.loads(out.read_text())["models"]}
    assert "error" in rows["bad"] and "bad.pt" in rows["bad"]["error"] and rows["es"]["miou"] > 0.5
    assert "bad: failed:" in r.stdout and r.stdout.splitlines()[1].startswith("es ")


def test_compare_refuses_to_replace_labels_predict_did_not_write(riverworld_store):
    scene = open_scene(riverworld_store.url, mode="a")
    scene.add_labels("mine", scene.label("gt"), classes=scene.classes, progress=False)
    r = _cli("compare", riverworld_store.url, "--model", f"mine={shipped_checkpoint()}")
    assert r.returncode == 2 and "labels/mine exists and was not written by predict" in r.stderr
