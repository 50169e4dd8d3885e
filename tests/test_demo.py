import json

from elegantviz.cli import main
from elegantviz.io.store import open_scene


def test_demo_trains_from_scratch_end_to_end(tmp_path, capsys):
    assert main(["demo", "--train", "--workdir", str(tmp_path), "--size", "96", "--iters", "2", "--train-scenes", "2", "-q"]) == 0
    out = capsys.readouterr().out
    scene = open_scene(tmp_path / "test.zarr")
    assert {"gt", "pred", "hard", "error"} <= set(scene.labels) and "attention" in scene.maps
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    assert {p["pair"] for p in report["pairs"]} == {"river->pond", "pond->river"}
    assert (tmp_path / "run" / "best.pt").exists()
    assert "elegantviz view" in out and "mIoU" in out


def test_demo_uses_the_shipped_model_by_default(tmp_path, capsys):
    from elegantviz.weights import shipped_checkpoint

    assert main(["demo", "--workdir", str(tmp_path), "--size", "128", "-q"]) == 0
    out = capsys.readouterr().out
    assert str(shipped_checkpoint()) in out and not (tmp_path / "run").exists()
    assert {"pred", "error"} <= set(open_scene(tmp_path / "test.zarr").labels)
