"""Every tutorial notebook runs top to bottom in a kernel of this environment, small.

The notebooks read ELEGANTVIZ_NOTEBOOK_SMALL=1 in their parameter cell and write into
ELEGANTVIZ_NOTEBOOK_WORK; they share one work folder, in order, so 4 and 5 reuse the model 3
trained (each still trains its own when run alone). A failing cell fails the test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
EXPECTED = ["01_scene_stores", "02_holistic_training", "03_hard_regions", "04_boundaries", "05_river_pond_errors"]
CELL_TIMEOUT = 300  # seconds; a hung cell fails instead of stalling CI


def _run(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    # kernel "python3" started from this interpreter is this interpreter (jupyter_client swaps
    # a bare "python" in the kernelspec for sys.executable): the project's venv under `make test`
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(cwd)}})
    return client.execute()


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebooks")
    saved = dict(os.environ)
    os.environ.update({
        "ELEGANTVIZ_NOTEBOOK_SMALL": "1",
        "ELEGANTVIZ_NOTEBOOK_WORK": str(work),
        # napari needs a display: pytest-xvfb provides one; without it the cell is skipped
        "ELEGANTVIZ_NOTEBOOK_NAPARI": "1" if os.environ.get("DISPLAY") else "0",
    })
    yield work
    os.environ.clear()
    os.environ.update(saved)


def test_all_tutorials_are_there():
    assert [p.stem for p in PATHS] == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_top_to_bottom(path, notebook_env):
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    _run(nb, path.parent)  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - started
    print(f"{path.name}: {seconds:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2, f"{path.name} showed {len(pictures)} pictures: figures are not displayed"


def test_kernel_is_this_environment(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    _run(nb, tmp_path)
    assert Path(nb.cells[0].outputs[0]["text"].strip()).resolve() == Path(sys.prefix).resolve()


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state; strip it"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_stored_for_readable_diffs(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))
    for cell in raw["cells"]:
        source = cell["source"]
        assert isinstance(source, list) and all(line.count("\n") <= 1 for line in source), "one source line per item"
        assert "id" in cell
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    params = code[0]
    assert "parameters" in params.get("metadata", {}).get("tags", []), "the first code cell holds the parameters"
    assert "ELEGANTVIZ_NOTEBOOK_SMALL" in "".join(params["source"])
