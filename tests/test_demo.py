from elegantviz.cli import main
from elegantviz.io.store import open_scene


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--size", "256", "-q"]) == 0
    out = capsys.readouterr().out
    scene = open_scene(tmp_path / "riverworld.zarr")
    assert scene.labels == ["gt"] and scene.classes.name == "riverworld"
    assert "river" in out and "pond" in out and "complete   yes" in out
