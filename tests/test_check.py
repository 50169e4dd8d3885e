"""Damaged scene stores (issue #17): a chunk gone or corrupt is named in one line by every reader
and by `elegantviz check`, instead of reading as the fill value or ending in a codec traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from elegantviz.cli import main
from elegantviz.errors import InputError
from elegantviz.io.store import create_scene, open_scene

GT_CHUNK = "labels/gt/0/c/1/0"
IMAGE_CHUNK = "0/c/0/1/2"  # band 0, chunk row 1, column 2


@pytest.fixture
def store(tmp_path) -> str:
    """A 256 x 256 riverworld store in 64 px chunks, made as a user makes one."""
    path = str(tmp_path / "scene.zarr")
    assert main(["synth", path, "--size", "256", "--chunk", "64", "-q"]) == 0
    return path


def run_check(path: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["check", path, "-q"])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def edit_zarr_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def drop_manifests(path: str) -> None:
    """What a store written before the manifest looks like."""
    for meta_file in Path(path).rglob("zarr.json"):
        meta = json.loads(meta_file.read_text())
        ours = meta.get("attributes", {}).get("elegantviz", {})
        if "manifest" in ours:
            del ours["manifest"]
            meta_file.write_text(json.dumps(meta))


def test_a_missing_label_chunk_is_named_by_every_reader_and_by_check(store, tmp_path, capsys):
    scene = open_scene(store, mode="r+")
    scene.add_labels("pred", scene.label("gt"), progress=False)
    (Path(store) / GT_CHUNK).unlink()
    message = f"{store}: {GT_CHUNK} is missing"
    with pytest.raises(InputError, match=message):
        open_scene(store).label("gt").compute()
    from elegantviz.engine.evaluate import evaluate_scene

    with pytest.raises(InputError, match=message):
        evaluate_scene(store, progress=False)
    capsys.readouterr()
    assert main(["info", store, "-q"]) == 2  # was: 25 % of the scene shown as 'ignore'
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    rc, out = run_check(store, capsys)
    assert rc == 2 and f"{store}: {GT_CHUNK} is missing" in out.splitlines()
    assert "damaged, 1 problem" in out


def test_predict_refuses_a_missing_ground_truth_chunk(tmp_path):
    from elegantviz.engine.predict import predict_scene
    from elegantviz.weights import shipped_checkpoint

    store = str(tmp_path / "small.zarr")  # predict runs the network before it reads labels/gt: keep it small
    assert main(["synth", store, "--size", "128", "--chunk", "64", "-q"]) == 0
    (Path(store) / GT_CHUNK).unlink()
    with pytest.raises(InputError, match=f"{GT_CHUNK} is missing"):
        predict_scene(shipped_checkpoint(), store, device="cpu", progress=False)


def test_b_a_corrupt_image_chunk_is_named_without_a_codec_traceback(store, capsys):
    (Path(store) / IMAGE_CHUNK).write_bytes(b"\x28\xb5\x2f\xfd not zstd at all" * 8)
    for read in (lambda s: s.image().compute(), lambda s: s.tile_levels()[0][:, 64:128, 128:192].compute()):
        with pytest.raises(InputError, match=f"{store}: image chunk {IMAGE_CHUNK} is corrupt") as caught:
            read(open_scene(store))
        assert caught.value.__suppress_context__ and "\n" not in str(caught.value)
    from elegantviz.engine.predict import predict_scene
    from elegantviz.weights import shipped_checkpoint

    with pytest.raises(InputError, match=f"{IMAGE_CHUNK} is corrupt"):  # the image is read before the network runs
        predict_scene(shipped_checkpoint(), store, device="cpu", progress=False)
    rc, out = run_check(store, capsys)
    assert rc == 2 and any(line.startswith(f"{store}: {IMAGE_CHUNK} is corrupt (") for line in out.splitlines())


def test_c_a_chunk_zarr_never_wrote_is_not_damage(store, capsys):
    scene = open_scene(store, mode="r+")
    gt = scene.label("gt").compute()
    gt[0:64, 64:128] = 255  # the fill value of labels: zarr writes no file for this chunk
    scene.add_labels("edited", gt, progress=False)
    assert not (Path(store) / "labels/edited/0/c/0/1").exists()
    np.testing.assert_array_equal(open_scene(store).label("edited").compute(), gt)
    rc, out = run_check(store, capsys)
    assert rc == 0 and out.splitlines() == [f"{store}: clean (3 parts, 125 chunks read)"]


def test_d_an_edited_zarr_json_is_reported_not_believed(store, capsys):
    edit_zarr_json(Path(store) / "labels/gt/0/zarr.json", shape=[256, 320])
    edit_zarr_json(Path(store) / "1/zarr.json", data_type="uint16")
    with pytest.raises(InputError, match=r"labels/gt/0/zarr.json disagrees with the manifest: it says shape \[256, 320\]"):
        open_scene(store).label("gt")
    rc, out = run_check(store, capsys)
    lines = out.splitlines()
    assert rc == 2
    assert f"{store}: labels/gt/0/zarr.json disagrees with the manifest: it says shape [256, 320], " \
           "written as [256, 256]" in lines
    assert f"{store}: 1/zarr.json disagrees with the manifest: it says dtype uint16, written as uint8" in lines
    # without a manifest the image and the pyramid still tell the truth
    drop_manifests(store)
    rc, out = run_check(store, capsys)
    lines = out.splitlines()
    assert rc == 2
    assert f"{store}: labels/gt/0 has shape [256, 320], but the image is [256, 256]" in lines
    assert f"{store}: 1 has dtype uint16, level 0 uint8" in lines


def test_e_a_clean_store_passes_and_so_does_one_behind_an_fsspec_url(store, capsys):
    rc, out = run_check(store, capsys)
    assert rc == 0 and out.splitlines() == [f"{store}: clean (2 parts, 105 chunks read)"]
    # memory:// (any fsspec URL): a map too; the manifest is listed through the store, not the disk
    import fsspec

    from elegantviz.io.check import check_scene

    url = "memory://check/clean.zarr"
    rng = np.random.default_rng(0)
    scene = create_scene(url, rng.integers(0, 255, (2, 100, 90), dtype=np.uint8), tile=32, overwrite=True,
                         progress=False)
    scene.add_labels("gt", rng.integers(0, 3, (100, 90), dtype=np.uint8), progress=False)
    scene.add_map("margin", rng.random((100, 90)), progress=False)
    report = check_scene(url, progress=False)
    assert report.problems == [] and report.parts == 3
    fsspec.filesystem("memory").rm("/check/clean.zarr/maps/margin/0/c/2/1")
    assert [str(p) for p in check_scene(url, progress=False).problems] == [f"{url}: maps/margin/0/c/2/1 is missing"]
    with pytest.raises(InputError, match="maps/margin/0/c/2/1 is missing"):
        open_scene(url).map("margin").compute()
    fsspec.filesystem("memory").rm("/check", recursive=True)


def test_f_a_store_without_a_manifest_reads_as_before(store, capsys):
    assert "manifest" in open_scene(store).meta and "manifest" in open_scene(store).part_meta("labels", "gt")
    drop_manifests(store)
    (Path(store) / GT_CHUNK).unlink()
    scene = open_scene(store)
    gt = scene.label("gt").compute()  # no manifest: a missing chunk cannot be told from an empty one
    assert (gt[64:128, 0:64] == 255).all() and scene.image().compute().shape == (4, 256, 256)
    rc, out = run_check(store, capsys)
    assert rc == 0 and "no chunk manifest" in out and out.splitlines()[-1].startswith(f"{store}: clean")
