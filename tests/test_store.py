import os
import signal
import subprocess
import sys
import threading
import time

import dask.array as da
import numpy as np
import pytest
import zarr

from elegantviz.classes import RIVERWORLD
from elegantviz.data.synthetic import RiverworldSpec, render_image, render_labels
from elegantviz.errors import IncompleteSceneError, InputError, SceneStoreError
from elegantviz.io.pyramid import mean_pool, mode_pool
from elegantviz.io.store import create_scene, open_scene


def test_round_trip_pyramid_labels_and_maps(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 300, 200), dtype=np.uint8)
    scene = create_scene(tmp_path / "s.zarr", img, bands=["r", "g", "b"], classes=RIVERWORLD, tile=64,
                         crs="EPSG:4326", transform=[1, 0, 0, 0, -1, 0], progress=False)
    assert scene.num_levels == 4  # 300 -> 150 -> 75 -> 38 fits in 64
    np.testing.assert_array_equal(scene.image().compute(), img)
    np.testing.assert_array_equal(scene.image(1).compute(), mean_pool(img))
    lab = rng.integers(0, 5, (300, 200), dtype=np.uint8)
    scene.add_labels("gt", lab, progress=False)
    scene.add_map("margin", rng.random((300, 200)), progress=False)
    again = open_scene(tmp_path / "s.zarr")
    assert again.labels == ["gt"] and again.maps == ["margin"]
    assert again.bands == ["r", "g", "b"] and again.crs == "EPSG:4326" and again.classes == RIVERWORLD
    np.testing.assert_array_equal(again.label("gt").compute(), lab)
    # mode pooling breaks ties by rarity within each pooled block (2 x 2 tiles of level 0)
    expect = np.block([[mode_pool(lab[y : y + 128, x : x + 128]) for x in range(0, 200, 128)] for y in range(0, 300, 128)])
    np.testing.assert_array_equal(again.label("gt", 1).compute(), expect)
    assert again.map("margin").dtype == np.float16
    assert again.root["0"].chunks == (1, 64, 64)
    assert "_progress" not in again.root  # the ledger is gone once everything is written


def test_ome_zarr_reader_accepts_the_metadata(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    img = np.random.default_rng(1).integers(0, 255, (4, 260, 260), dtype=np.uint8)
    scene = create_scene(tmp_path / "s.zarr", img, bands=list("rgbn"), classes=RIVERWORLD, tile=64, progress=False)
    scene.add_labels("gt", (img[0] % 5).astype(np.uint8), progress=False)
    nodes = list(Reader(parse_url(str(tmp_path / "s.zarr")))())
    image = nodes[0]
    assert image.load(Multiscales) is not None
    assert [d.shape for d in image.data] == [a.shape for a in scene.levels]
    assert image.metadata["channel_names"] == list("rgbn")
    labels = [n for n in nodes if n.load(Label) is not None]
    assert len(labels) == 1
    meta = labels[0].metadata
    assert meta["properties"][3]["class"] == "river"
    assert tuple(meta["color"][3][:3]) == pytest.approx(tuple(v / 255 for v in RIVERWORLD.classes[3].color), abs=1e-3)


def test_memory_url(tmp_path):
    img = np.arange(2 * 100 * 90, dtype=np.uint16).reshape(2, 100, 90)
    create_scene("memory://elegantviz-test/s.zarr", img, tile=32, progress=False)
    scene = open_scene("memory://elegantviz-test/s.zarr")
    np.testing.assert_array_equal(scene.image().compute(), img)
    assert scene.num_levels == 3


def test_not_a_store_and_missing_store(tmp_path):
    with pytest.raises(InputError, match="nope.zarr: no such scene store"):
        open_scene(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(SceneStoreError, match="plain.zarr: not an elegantviz scene store"):
        open_scene(tmp_path / "plain.zarr")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises((SceneStoreError, InputError), match="file.zarr"):
        open_scene(tmp_path / "file.zarr")


def test_existing_output_refused_unless_overwrite(tmp_path):
    img = np.zeros((1, 40, 40), np.uint8)
    create_scene(tmp_path / "s.zarr", img, tile=32, progress=False)
    with pytest.raises(InputError, match="exists"):
        create_scene(tmp_path / "s.zarr", img, tile=32, progress=False)
    create_scene(tmp_path / "s.zarr", img + 1, tile=32, overwrite=True, progress=False)
    assert int(open_scene(tmp_path / "s.zarr").image()[0, 0, 0]) == 1


def test_zero_size_and_wrong_shapes_are_refused(tmp_path):
    with pytest.raises(InputError, match="zero-size"):
        create_scene(tmp_path / "z.zarr", np.zeros((1, 0, 5), np.uint8), progress=False)
    scene = create_scene(tmp_path / "s.zarr", np.zeros((1, 40, 40), np.uint8), tile=32, progress=False)
    with pytest.raises(InputError, match=r"labels/gt has shape \(40, 41\)"):
        scene.add_labels("gt", np.zeros((40, 41), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        scene.add_labels("gt", np.zeros((40, 40), np.int32))


class FailingBlocks:
    """A lazy image whose blocks count their reads and fail once at a chosen block."""

    def __init__(self, data, fail_at):
        self.data, self.fail_at, self.calls, self.lock = data, fail_at, 0, threading.Lock()

    def block(self, block_info=None):
        loc = block_info[None]["array-location"]
        with self.lock:
            self.calls += 1
            n = self.calls
        if self.fail_at is not None and n == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return self.data[tuple(slice(a, b) for a, b in loc)]

    def array(self, tile):
        c, h, w = self.data.shape
        chunks = ((c,), tuple(min(tile, h - y) for y in range(0, h, tile)), tuple(min(tile, w - x) for x in range(0, w, tile)))
        return da.map_blocks(self.block, chunks=chunks, dtype=self.data.dtype, meta=np.empty((0, 0, 0), self.data.dtype))


def test_interrupted_write_resumes_without_redoing_finished_blocks(tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (2, 256, 256), dtype=np.uint8)
    src = FailingBlocks(img, fail_at=10)  # 16 blocks of 64
    with pytest.raises(KeyboardInterrupt):
        create_scene(tmp_path / "s.zarr", src.array(64), tile=64, progress=False)
    with pytest.raises(IncompleteSceneError, match="incomplete scene store"):
        open_scene(tmp_path / "s.zarr")
    done_before = int(np.asarray(zarr.open_group(str(tmp_path / "s.zarr"))["_progress/0"][...]).sum())
    assert 1 <= done_before < 16
    src.fail_at, src.calls = None, 0
    scene = create_scene(tmp_path / "s.zarr", src.array(64), tile=64, progress=False)
    assert src.calls == 16 - done_before  # finished blocks were not read again
    np.testing.assert_array_equal(scene.image().compute(), img)
    assert open_scene(tmp_path / "s.zarr").complete


def test_resume_refuses_a_different_job(tmp_path):
    img = np.zeros((1, 128, 128), np.uint8)
    src = FailingBlocks(img, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        create_scene(tmp_path / "s.zarr", src.array(32), tile=32, progress=False)
    with pytest.raises(InputError, match="different job"):
        create_scene(tmp_path / "s.zarr", np.zeros((1, 128, 64), np.uint8), tile=32, progress=False)


@pytest.mark.slow
def test_killed_synth_process_resumes_to_the_same_scene(tmp_path):
    """A real SIGKILL in the middle of writing; the second run finishes and matches a direct render."""
    out = tmp_path / "k.zarr"
    cmd = [sys.executable, "-m", "elegantviz.cli", "synth", str(out), "--size", "1024", "--chunk", "128", "-q"]
    proc = subprocess.Popen(cmd)
    ledger = out / "_progress" / "0" / "c"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ledger.exists() and sum(1 for _ in ledger.rglob("*") if _.is_file()) >= 8:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(IncompleteSceneError):
        open_scene(out)
    subprocess.run(cmd, check=True)
    scene = open_scene(out)
    spec = RiverworldSpec(1024, 1024, 0)
    np.testing.assert_array_equal(scene.image().compute(), render_image(spec, 0, 1024, 0, 1024))
    np.testing.assert_array_equal(scene.label("gt").compute(), render_labels(spec, 0, 1024, 0, 1024))


def test_a_resumed_write_deletes_the_temporary_file_a_killed_writer_left(tmp_path):
    """zarr's LocalStore writes a chunk to <chunk>.<uuid>.partial and renames it: a SIGKILL in
    between leaves that file, which the resumed write removes (found by tests/test_kill_points.py)."""
    from elegantviz.io.blocks import write_blockwise

    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    root.create_array("a", shape=(64, 64), dtype="uint8", chunks=(32, 32))
    stray = tmp_path / "s.zarr" / "a" / "c" / "0" / "1.0123abcd.partial"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a chunk")
    data = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    write_blockwise(da.from_array(data, chunks=32), root, "a", "a", progress=False)
    assert not stray.exists()
    np.testing.assert_array_equal(root["a"][...], data)
