"""Random numbers for every numeric option of every command (issue 17): whatever is typed, the
command answers with exit status 2 and one line on stderr, never a traceback, and writes nothing.

Each command points at inputs that do not exist (or a demo folder that is a file), so a value
the option accepts ends a moment later at that input, with its own one-line error, and a value
it refuses ends at argparse, naming the option. Which of the two it was is checked against the
option's documented range, so an accepted bad value (``--tile 0`` once was) fails the test too.
``models`` has no input to miss: its table is replaced by a stub that records what reached it.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elegantviz.cli import MAX_CLASSES, MAX_SIDE, MAX_TOLERANCE, main
from elegantviz.values import parse_size


def whole(lo, hi=None):
    """The option's range for whole numbers: what int() reads, from lo to hi."""
    def ok(text: str) -> bool:
        try:
            v = int(text)
        except ValueError:
            return False
        return v >= lo and (hi is None or v <= hi)
    return ok


def real(lo, below=None):
    def ok(text: str) -> bool:
        try:
            v = float(text)
        except ValueError:
            return False
        return math.isfinite(v) and v >= lo and (below is None or v < below)
    return ok


def any_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def size(text: str) -> bool:
    try:
        parse_size(text)
    except ValueError:
        return False
    return True


# (command line before the option, option, accepted?) per numeric option; MISSING is a path that does not exist
MISSING = "missing"
OPTIONS = [
    (["convert", f"{MISSING}.tif", "out.zarr"], "--chunk", whole(16, 8192)),  # odd ones: the command says so
    (["convert", f"{MISSING}.tif", "out.zarr"], "--nodata", any_float),  # the raster's dtype decides the rest
    (["synth", "taken.zarr"], "--size", whole(64, MAX_SIDE)),
    (["synth", "taken.zarr"], "--width", whole(64, MAX_SIDE)),
    (["synth", "taken.zarr"], "--seed", whole(0, 2**63 - 1)),
    (["synth", "taken.zarr"], "--chunk", whole(16, 8192)),
    (["train", f"{MISSING}.yaml"], "--iters", whole(1)),
    (["train", f"{MISSING}.yaml"], "--memory-budget", size),
    (["predict", f"{MISSING}.pt", f"{MISSING}.zarr", "--mode", "sliced"], "--crop", whole(16)),
    (["predict", f"{MISSING}.pt", f"{MISSING}.zarr", "--mode", "sliced"], "--overlap", real(0, below=1)),
    (["predict", f"{MISSING}.pt", f"{MISSING}.zarr"], "--tile", whole(64)),
    (["convert", f"{MISSING}", "out"], "--workers", whole(1, 512)),  # the missing input ends it before a cluster
    (["predict", f"{MISSING}.pt", f"{MISSING}.zarr"], "--workers", whole(1, 512)),
    (["evaluate", f"{MISSING}.zarr", "--out", "ev"], "--workers", whole(1, 512)),
    (["compare", f"{MISSING}.zarr"], "--crop", whole(16)),
    (["evaluate", f"{MISSING}.zarr", "--out", "ev"], "--tolerance", whole(0, MAX_TOLERANCE)),
    (["evaluate", f"{MISSING}.zarr", "--out", "ev"], "--min-area", whole(1)),
    (["export", f"{MISSING}.zarr", "--out", "x.gpkg"], "--simplify", real(0)),
    (["models"], "--num-classes", whole(1, MAX_CLASSES)),
    (["models"], "--in-chans", whole(1)),
    (["models"], "--size", whole(32, MAX_SIDE * 2)),
    (["demo", "--workdir", "taken.zarr", "--train"], "--size", whole(64, MAX_SIDE // 2)),
    (["demo", "--workdir", "taken.zarr", "--train"], "--iters", whole(1)),
    (["demo", "--workdir", "taken.zarr", "--train"], "--train-scenes", whole(1)),
]

numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 70_000).map(str),  # around every range's ends
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-2, 2).map(str),
    st.sampled_from(["nan", "inf", "-inf", "", " ", "abc", "1e3", "0x10", "1_000", "１２", "12GB", "1.5GiB", "-1GB",
                     "0", "-0", "+7", " 64 ", "1e999", "64.0", "12 XB", "00016", "true", "None"]),
    st.text(alphabet="0123456789.-+eE ,:abGBi", max_size=8),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An empty folder with one file, ``taken.zarr``, which synth and demo refuse to write into."""
    root = tmp_path_factory.mktemp("numbers")
    (root / "taken.zarr").write_text("mine")
    cwd = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(cwd)


@pytest.fixture(scope="module")
def stub_models():
    """`elegantviz models` builds six networks per new set of numbers; here a stub records them."""
    import elegantviz.models.registry as registry

    seen = []
    real_print = registry.print_models
    registry.print_models = lambda args: seen.append((args.num_classes, args.in_chans, args.size)) or 0
    yield seen
    registry.print_models = real_print


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's refusals
            code = e.code
    return code, err.getvalue()


@pytest.mark.parametrize("before, option, accepted", OPTIONS, ids=[f"{b[0]} {o}" for b, o, _ in OPTIONS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=numbers)
def test_any_number_is_one_clean_line_and_writes_nothing(workdir, stub_models, before, option, accepted, text):
    files = tree(workdir)
    code, err = run([*before, f"{option}={text}", "-q"])
    lines = err.splitlines()
    assert "Traceback" not in err
    assert files == tree(workdir), f"{option}={text!r} wrote {tree(workdir) - files}"
    if before[0] == "models" and accepted(text):
        assert code == 0 and not lines and stub_models[-1][["--num-classes", "--in-chans", "--size"].index(option)] \
            == int(text)
        return
    assert code == 2 and len(lines) == 1, (option, text, err)
    refused_here = f"argument {option}:" in lines[0]
    assert refused_here != accepted(text), (option, text, lines[0])
    assert lines[0].startswith(f"elegantviz {before[0]}: error: ")


def test_every_numeric_option_is_covered():
    """A numeric option added later is fuzzed here too: every option with a checked type is listed."""
    from elegantviz.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    typed = {(name, a.option_strings[-1]) for name, p in sub.choices.items() for a in p._actions
             if a.option_strings and a.type is not None and a.dest not in ("bands", "band_names", "name", "pred",
                                                                              "gt", "labels", "pair", "device")}
    assert typed == {(b[0], o) for b, o, _ in OPTIONS}
