import json

from elegantviz.cli import main
from elegantviz.io.store import open_scene


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--size", "96", "--iters", "2", "-q"]) == 0
    out = capsys.readouterr().out
    scene = open_scene(tmp_path / "test.zarr")
    assert {"gt", "pred", "hard", "error"} <= set(scene.labels) and "attention" in scene.maps
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    assert {p["pair"] for p in report["pairs"]} == {"river->pond", "pond->river"}
    assert (tmp_path / "run" / "best.pt").exists()
    assert "elegantviz view" in out and "mIoU" in out
