"""A re-predict swaps its parts in: readers holding the old parts never see missing chunks.

Before, a re-predict deleted ``labels/pred`` before writing the new one, and a dask array made
before the run (what a napari layer holds) returned whole chunks of 255 while it ran.
"""

import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
import zarr

from elegantviz.engine import predict as predict_mod
from elegantviz.engine.predict import predict_scene
from elegantviz.io import swap
from elegantviz.io.store import Scene, create_scene, open_scene
from elegantviz.io.swap import replace_group
from test_predict import checkpoint, fresh_scene  # noqa: F401  (the module's tiny trained model)


def chunks_of(array: np.ndarray, tile: int) -> dict:
    return {(i, j): array[i:i + tile, j:j + tile] for i in range(0, array.shape[0], tile)
            for j in range(0, array.shape[1], tile)}


@pytest.fixture(scope="module")
def permuted(checkpoint, tmp_path_factory):  # noqa: F811
    """The same network with its classes rolled by one: every pixel's prediction changes."""
    ck = torch.load(checkpoint, weights_only=False)
    for key in ("head.4.weight", "head.4.bias"):
        ck["model"][key] = ck["model"][key].roll(1, dims=0)
    path = tmp_path_factory.mktemp("permuted") / "best.pt"
    torch.save(ck, path)
    return path


def test_a_held_layer_reads_old_or_new_chunks_while_a_re_predict_runs(checkpoint, permuted, tmp_path):  # noqa: F811
    scene = fresh_scene(tmp_path, size=(256, 224))
    predict_scene(checkpoint, scene.url, progress=False, tile=None)
    held = open_scene(scene.url).label("pred")  # made before the run, as a viewer's layer is
    tile = held.chunksize[0]
    old = chunks_of(held.compute(), tile)
    run = subprocess.Popen([sys.executable, "-m", "elegantviz", "predict", str(permuted), scene.url, "-q"],
                           stderr=subprocess.PIPE, text=True)
    reads = []
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        reads.append(chunks_of(held.compute(), tile))  # a missing chunk would raise (its manifest lists it)
    assert run.wait(timeout=60) == 0, run.stderr.read()
    reads.append(chunks_of(held.compute(), tile))
    new = chunks_of(open_scene(scene.url).label("pred").compute(), tile)
    assert all(not np.array_equal(old[k], new[k]) for k in old), "the two runs must differ to tell old from new"
    torn = [k for r in reads for k, c in r.items() if not (np.array_equal(c, old[k]) or np.array_equal(c, new[k]))]
    assert not torn, f"{len(torn)} chunk reads were neither the old part nor the new one"
    assert len(reads) > 3 and all(np.array_equal(reads[0][k], old[k]) for k in old)  # reads began before the swap
    assert all(np.array_equal(reads[-1][k], new[k]) for k in new)  # and the held array now reads the new part


@pytest.mark.parametrize("interrupt", ["after one swap", "between exchange and delete"])
def test_an_interrupted_swap_resumes_to_the_uninterrupted_result(checkpoint, tmp_path, monkeypatch, interrupt):  # noqa: F811
    ref = fresh_scene(tmp_path / "ref")
    predict_scene(checkpoint, ref.url, progress=False)
    predict_scene(checkpoint, ref.url, mode="sliced", crop=64, progress=False)
    scene = fresh_scene(tmp_path / "cut")
    predict_scene(checkpoint, scene.url, progress=False)
    real_swap, calls = Scene.swap_in, []

    def swap_once(self, kind, name, under):
        if calls:
            raise KeyboardInterrupt("simulated kill")
        calls.append(name)
        real_swap(self, kind, name, under)

    def lose_rmtree(path):
        raise KeyboardInterrupt("simulated kill")

    if interrupt == "after one swap":
        monkeypatch.setattr(Scene, "swap_in", swap_once)
    else:
        # only swap's own rmtree: zarr deletes through shutil too, in its event-loop thread
        monkeypatch.setattr(swap, "shutil", types.SimpleNamespace(rmtree=lose_rmtree))
    with pytest.raises(KeyboardInterrupt):
        predict_scene(checkpoint, scene.url, mode="sliced", crop=64, progress=False)
    half = open_scene(scene.url)
    assert "pred" in half.labels and "_predict" in half.root  # the store stays readable, the run resumable
    monkeypatch.undo()
    summary = predict_scene(checkpoint, scene.url, mode="sliced", crop=64, progress=False)
    assert summary["resumed"]
    got, want = open_scene(scene.url), open_scene(ref.url)
    assert got.labels == want.labels and got.maps == want.maps == []  # sliced: old evidence removed
    for name in want.labels:
        for a, b in zip(got.label_levels(name), want.label_levels(name)):
            np.testing.assert_array_equal(a.compute(), b.compute())
    assert "_predict" not in got.root and "_progress" not in got.root


def test_a_re_predict_keeps_the_old_parts_until_its_own_are_finished(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    scene = fresh_scene(tmp_path)
    predict_scene(checkpoint, scene.url, progress=False)
    before = open_scene(scene.url).label("pred").compute()

    def stop(what, done, total):
        if what == "labels/error":
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        predict_scene(checkpoint, scene.url, mode="sliced", crop=64, progress=False, on_stage=stop)
    s = open_scene(scene.url)
    assert {"pred", "hard", "error"} <= set(s.labels) and "margin" in s.maps
    np.testing.assert_array_equal(s.label("pred").compute(), before)


def two_groups(url: str, fill_in_new: tuple[int, int]) -> zarr.Group:
    root = zarr.open_group(url, mode="w")
    for path, value in (("labels/x", 1), ("stage/labels/x", 2)):
        group = root.require_group(path)
        group.attrs["which"] = value
        a = group.create_array("0", shape=(8, 8), chunks=(4, 4), dtype="uint8", fill_value=0)
        a[...] = value
    root["stage/labels/x/0"][fill_in_new[0]:fill_in_new[0] + 4, fill_in_new[1]:fill_in_new[1] + 4] = 0
    return root


@pytest.mark.parametrize("where", ["local", "local without RENAME_EXCHANGE", "memory://"])
def test_replace_group_leaves_exactly_the_new_part(tmp_path, monkeypatch, where):
    """The new part's values everywhere, including a chunk it left at the fill value (the old
    chunk file must go, or that chunk would read as the old value), and nothing staged left."""
    if where == "local without RENAME_EXCHANGE":
        monkeypatch.setattr(swap, "exchange_folders", lambda a, b: False)
    url = "memory://swap/s.zarr" if where == "memory://" else str(tmp_path / "s.zarr")
    root = two_groups(url, (4, 0))
    replace_group(root, "stage/labels/x", "labels/x")
    root = zarr.open_group(url, mode="r")
    want = np.full((8, 8), 2, np.uint8)
    want[4:, :4] = 0
    np.testing.assert_array_equal(root["labels/x/0"][...], want)
    assert root["labels/x"].attrs["which"] == 2 and "x" not in root["stage/labels"]
    if where != "memory://":
        assert not (tmp_path / "s.zarr/labels/x/0/c/1/0").exists()
        assert sorted(p.name for p in (tmp_path / "s.zarr/stage/labels").iterdir()) == ["zarr.json"]


def test_swap_in_refuses_a_part_that_is_not_finished(tmp_path):
    scene = create_scene(tmp_path / "s.zarr", np.zeros((1, 32, 32), np.uint8), tile=16, progress=False)
    with pytest.raises(Exception, match="no finished _predict/pred/staged/labels/pred"):
        scene.swap_in("labels", "pred", f"_predict/pred/{predict_mod.STAGED}/")
