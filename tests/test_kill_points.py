"""Issue #17: SIGKILL at three points each of convert, predict and train, then the same command
again, gives output bit-identical to an uninterrupted run.

The real CLI runs in a child process. Each kill point is found by watching the work from outside
(the store's ``_progress`` ledgers and ``_predict`` cache, predict's ``--progress-json`` lines, the
run folder's ``last.pt`` and ``log.jsonl``), never by hooks in the code, and each test asserts
that the child really died at its stage (return code -9, the partial state it left), so a kill
that lands too early or too late fails the test instead of passing it.

Every command runs in its own working folder with relative outputs, so the outputs of two runs
can be compared byte for byte (a run folder's config keeps ``out_dir`` as written).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import assert_same_store, without

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 180.0  # generous: the machine is shared; a stage that never comes fails with its name
POLL_S = 0.005
# log fields that are measurements of the machine, not of the training
VOLATILE_LOG = {"s_per_iter", "memory"}


# --- running the CLI --------------------------------------------------------------------------
def elegantviz(*args: object) -> list[str]:
    return [sys.executable, "-m", "elegantviz", *map(str, args)]


def tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def start(cmd: list[str], cwd: Path, name: str) -> subprocess.Popen:
    """A child with stdout and stderr in files beside its work (a pipe nobody reads could block it)."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(cwd / f"{name}.out", "w") as out, open(cwd / f"{name}.err", "w") as err:
        return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=out, stderr=err)


def run_to_end(cmd: list[str], cwd: Path, name: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    (cwd / f"{name}.out").write_text(done.stdout)
    (cwd / f"{name}.err").write_text(done.stderr)
    return done


def run_ok(cmd: list[str], cwd: Path, name: str) -> subprocess.CompletedProcess:
    done = run_to_end(cmd, cwd, name)
    assert done.returncode == 0, f"{' '.join(cmd[2:])} (in {cwd}) exited {done.returncode}:\n{done.stderr[-1500:]}"
    return done


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], stage: str, cwd: Path, name: str,
              poll_s: float = POLL_S) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail with the stage's name if it never comes."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the child ended (exit {proc.returncode}) before {stage}: killed too late to test "
                            f"it\n{tail(cwd / f'{name}.err')}")
            if time.monotonic() > deadline:
                pytest.fail(f"no sign of {stage} within {TIMEOUT_S:.0f} s\n{tail(cwd / f'{name}.err')}")
            time.sleep(poll_s)
        os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert code == -signal.SIGKILL, f"meant to kill at {stage}, but the child exited {code} by itself"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


# --- what a store shows from outside ----------------------------------------------------------
def node_attrs(node: Path) -> dict:
    """The elegantviz attributes of a zarr node folder ({} if absent or being written)."""
    try:
        return json.loads((node / "zarr.json").read_text()).get("attributes", {}).get("elegantviz", {}) or {}
    except (OSError, ValueError):
        return {}


def is_complete(node: Path) -> bool:
    return bool(node_attrs(node).get("complete"))


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))  # os.walk skips folders deleted meanwhile


def finished_blocks(store: Path, ledger: str) -> int:
    """Blocks a ``_progress`` ledger records as written (one chunk file per finished block).

    ``ledger`` is the target's path with dots (``labels.pred.0``); ledgers of parts written below
    another group (``_predict.pred.staged.labels.pred.0``) count too."""
    try:
        names = os.listdir(store / "_progress")
    except OSError:
        return 0
    return max((count_files(store / "_progress" / n / "c") for n in names
                if n == ledger or n.endswith("." + ledger)), default=0)


def part_complete_somewhere(store: Path, part: str) -> bool:
    """``part`` (e.g. ``labels/pred``) is finished in place or wherever predict stages it."""
    for folder, _, files in os.walk(store):
        rel = Path(folder).relative_to(store).as_posix()
        if "zarr.json" in files and not rel.startswith("_progress") and (rel == part or rel.endswith("/" + part)):
            if is_complete(Path(folder)):
                return True
    return False


def assert_parts_complete(store: Path) -> None:
    """The scene, each of its parts and each of their pyramid levels carry ``complete``."""
    assert is_complete(store), f"{store}: scene not marked complete"
    for kind in ("labels", "maps"):
        for part in sorted(p for p in (store / kind).iterdir() if p.is_dir()) if (store / kind).is_dir() else []:
            assert is_complete(part), f"{part}: not marked complete"
            for level in (p for p in part.iterdir() if p.is_dir()):
                assert is_complete(level), f"{level}: pyramid level not marked complete"


@dataclass(frozen=True)
class KillPoint:
    """Where to kill (``ready``), and what must then be true of the partial output (``check``)."""

    stage: str
    ready: Callable[[Path], bool]
    check: Callable[[Path], None]


# --- convert ----------------------------------------------------------------------------------
CONVERT_SIZE, CONVERT_CHUNK = 384, 32  # 144 blocks at level 0, 36 at level 1, 144 for labels/gt
CONVERT_BLOCKS = (CONVERT_SIZE // CONVERT_CHUNK) ** 2
CONVERT_LEVELS = 5  # 384, 192, 96, 48, 24


@pytest.fixture(scope="module")
def convert_command(tmp_path_factory) -> list[str]:
    """A riverworld GeoTIFF pair converted with small chunks: each stage has many blocks to kill in."""
    from elegantviz.data.synthetic import synthesize_riverworld

    src = tmp_path_factory.mktemp("convert-input")
    tif, mask = synthesize_riverworld(src / "scene.tif", height=CONVERT_SIZE, width=CONVERT_SIZE, seed=5, tile=64,
                                      progress=False)
    return elegantviz("convert", tif, "scene.zarr", "--mask", mask, "--classes", "riverworld",
                      "--chunk", CONVERT_CHUNK, "-q")


@pytest.fixture(scope="module")
def convert_reference(convert_command, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("convert-reference")
    run_ok(convert_command, cwd, "convert")
    assert_parts_complete(cwd / "scene.zarr")
    return cwd / "scene.zarr"


def _during_level_0(store: Path) -> None:
    done = finished_blocks(store, "0")
    assert 0 < done < CONVERT_BLOCKS and not is_complete(store / "0"), f"level 0: {done} blocks, not mid-level"
    assert not (store / "labels").exists() and not is_complete(store)


def _during_pyramid(store: Path) -> None:
    assert is_complete(store / "0"), "killed before level 0 was finished"
    assert not is_complete(store / "1") and finished_blocks(store, "1") > 0, "not in the middle of level 1"
    assert not (store / "labels").exists() and not is_complete(store)


def _during_labels(store: Path) -> None:
    assert all(is_complete(store / str(k)) for k in range(CONVERT_LEVELS)), "image pyramid not finished"
    assert not is_complete(store / "labels" / "gt") and finished_blocks(store, "labels.gt.0") > 0, \
        "not in the middle of labels/gt"
    assert not is_complete(store)


CONVERT_POINTS = {
    "image-level-0": KillPoint("image level 0", lambda s: finished_blocks(s, "0") >= 16, _during_level_0),
    "pyramid": KillPoint("pyramid level 1", lambda s: finished_blocks(s, "1") >= 4, _during_pyramid),
    "labels-gt": KillPoint("labels/gt level 0", lambda s: finished_blocks(s, "labels.gt.0") >= 16, _during_labels),
}


@pytest.mark.parametrize("point", list(CONVERT_POINTS))
def test_convert_killed_then_rerun_is_bit_identical(point, convert_command, convert_reference, tmp_path):
    """The same convert command resumes a store left by SIGKILL to the uninterrupted store."""
    kill = CONVERT_POINTS[point]
    store = tmp_path / "scene.zarr"
    proc = start(convert_command, tmp_path, "killed")
    kill_when(proc, lambda: kill.ready(store), kill.stage, tmp_path, "killed")
    kill.check(store)
    run_ok(convert_command, tmp_path, "rerun")
    assert_parts_complete(store)
    assert_same_store(store, convert_reference)


# --- predict ----------------------------------------------------------------------------------
PREDICT_SIZE, PREDICT_CHUNK = 256, 64  # 16 blocks at level 0 of every part
EARLY_PARTS = ("labels/pred", "maps/margin", "labels/hard", "maps/boundary", "maps/keys", "maps/queries")


@pytest.fixture(scope="module")
def predict_input(tmp_path_factory) -> Path:
    """A riverworld store with labels/gt (so labels/error is written too), copied fresh per run."""
    from elegantviz.data.synthetic import synthesize_riverworld

    root = tmp_path_factory.mktemp("predict-input")
    synthesize_riverworld(root / "scene.zarr", height=PREDICT_SIZE, width=PREDICT_SIZE, seed=11, tile=PREDICT_CHUNK,
                          progress=False)
    return root / "scene.zarr"


@pytest.fixture(scope="module")
def predict_command() -> list[str]:
    """The shipped model, holistic; --progress-json says when the forward pass starts, which the
    store alone does not show (nothing is written until the network's outputs are cached)."""
    from elegantviz.weights import shipped_checkpoint

    return elegantviz("predict", shipped_checkpoint(), "scene.zarr", "--progress-json", "-q")


def predict_in(cwd: Path, predict_input: Path) -> Path:
    shutil.copytree(predict_input, cwd / "scene.zarr")
    return cwd / "scene.zarr"


def progress_lines(path: Path) -> list[dict]:
    lines = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            lines.append(json.loads(line))
        except ValueError:  # the line being written
            pass
    return lines


def last_stage(path: Path) -> str | None:
    stages = [m["stage"] for m in progress_lines(path) if "stage" in m]
    return stages[-1] if stages else None


def cache_complete(store: Path) -> bool:
    return is_complete(store / "_predict" / "pred")


@pytest.fixture(scope="module")
def predict_reference(predict_command, predict_input, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("predict-reference")
    store = predict_in(cwd, predict_input)
    run_ok(predict_command, cwd, "predict")
    assert_parts_complete(store)
    assert {"pred", "hard", "error"} <= {p.name for p in (store / "labels").iterdir()}
    return store


def _in_forward(store: Path) -> None:
    assert not cache_complete(store), "the network's outputs were already cached: killed after the forward pass"
    assert not part_complete_somewhere(store, "labels/pred")


def _writing_first_part(store: Path) -> None:
    assert cache_complete(store), "the cache was not complete: killed before the forward pass ended"
    assert not part_complete_somewhere(store, "labels/pred"), "labels/pred was finished: killed too late"


def _late_in_parts(store: Path) -> None:
    assert cache_complete(store), "the cache was not complete"
    unfinished = [p for p in EARLY_PARTS if not part_complete_somewhere(store, p)]
    assert not unfinished, f"parts before maps/attention not finished: {unfinished}"
    late = [p for p in ("maps/attention", "labels/error") if part_complete_somewhere(store, p)]
    assert not late, f"{late} already finished: killed too late"


def announced(store: Path) -> Path:
    """The --progress-json lines of the killed predict, beside its store."""
    return store.parent / "killed.out"


# KillPoint.stage is also the last --progress-json stage announced when the kill must come
PREDICT_POINTS = {
    "forward": KillPoint("forward", lambda s: last_stage(announced(s)) == "forward", _in_forward),
    "first-part": KillPoint("labels/pred", lambda s: cache_complete(s) and finished_blocks(s, "labels.pred.0") >= 4,
                            _writing_first_part),
    "late-part": KillPoint("maps/attention", lambda s: finished_blocks(s, "maps.attention.0") >= 4, _late_in_parts),
}


@pytest.mark.parametrize("point", list(PREDICT_POINTS))
def test_predict_killed_then_rerun_is_bit_identical(point, predict_command, predict_input, predict_reference,
                                                    tmp_path):
    """The same predict command takes over the dead writer's lock and finishes the store as an
    uninterrupted run would; after the forward pass it does so without running the network."""
    from elegantviz.io.lock import lock_path

    kill = PREDICT_POINTS[point]
    store = predict_in(tmp_path, predict_input)
    proc = start(predict_command, tmp_path, "killed")
    # the forward pass lasts a few tenths of a second here: poll fast
    kill_when(proc, lambda: kill.ready(store), f"predict's {kill.stage} stage", tmp_path, "killed", poll_s=0.002)
    seen = last_stage(announced(store))
    assert seen == kill.stage, f"killed during {seen!r}, meant during {kill.stage!r}"
    kill.check(store)
    lock = lock_path(store)
    assert lock.exists() and json.loads(lock.read_text())["pid"] == proc.pid, "the killed writer left no lock"

    rerun = run_ok(predict_command, tmp_path, "rerun")
    summary = [m["summary"] for m in progress_lines(tmp_path / "rerun.out") if "summary" in m]
    assert summary, f"no summary line:\n{rerun.stdout[-1500:]}"
    assert summary[0]["resumed"] is (point != "forward"), summary[0]
    assert not lock.exists(), "the rerun left its lock behind"
    assert_parts_complete(store)
    assert_same_store(store, predict_reference)


# --- train ------------------------------------------------------------------------------------
TRAIN_ITERS, CKPT_EVERY = 8, 3  # last.pt at 3, 6 and 8; validation (precise BN, best.pt) at 4 and 8
RUN = "run"  # out_dir, relative to each command's working folder


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    """The riverworld-cpu recipe (AdamW, linear warm-up, cosine, clipping, precise BN) shrunk to
    tiny scenes and a tiny context width."""
    from elegantviz.data.synthetic import synthesize_riverworld

    root = tmp_path_factory.mktemp("train-input")
    scenes = [str(synthesize_riverworld(root / f"s{i}.zarr", height=128, width=112, seed=20 + i, tile=64,
                                        progress=False).url) for i in range(3)]
    config = {
        "data": {"train": scenes[:2], "val": scenes[2:], "mode": "holistic"},
        "model": {"name": "elegantseg-cpu", "overrides": {"dim": 16, "hidden_dim": 16}},
        "optim": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0001, "schedule": "cosine",
                  "warmup": "linear", "warmup_iters": 2, "warmup_lr": 0.0002, "head_lr_mult": 1, "grad_clip": 5.0},
        "memory": {"policy": "none"},
        "precise_bn": 2,
        "iters": TRAIN_ITERS, "val_every": 4, "ckpt_every": CKPT_EVERY, "log_every": 1, "out_dir": RUN,
    }
    path = root / "tiny.yaml"
    path.write_text(json.dumps(config))  # YAML reads JSON
    return path


def log_records(run: Path, strict: bool = True) -> list[dict]:
    """The log's records; while the run writes, its last line may be half written (``strict=False``)."""
    try:
        text = (run / "log.jsonl").read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            if strict:
                raise AssertionError(f"{run / 'log.jsonl'}: not a JSON line: {line[:200]!r}") from None
    return records


def timeless(records: list[dict]) -> list[dict]:
    return [without(r, VOLATILE_LOG) for r in records]


def steps_logged(run: Path) -> list[int]:
    return [r["iter"] for r in log_records(run, strict=False) if "loss" in r]


def checkpoint_iteration(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["iteration"])


def assert_same_tree(got, want, where: str) -> None:
    """Checkpoint contents equal exactly: tensors with torch.equal, arrays bit for bit."""
    import torch

    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want), where
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and np.array_equal(got, want), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys differ"
        for k in want:
            assert_same_tree(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tree(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def assert_same_checkpoints(run: Path, reference: Path) -> None:
    """Every file of the run folder but the log is bit-identical in content to the reference's."""
    import torch

    assert sorted(os.listdir(run)) == sorted(os.listdir(reference)), f"{run}: {sorted(os.listdir(run))}"
    assert (run / "config.yaml").read_text() == (reference / "config.yaml").read_text()
    for name in ("last.pt", "best.pt"):
        got, want = (torch.load(d / name, map_location="cpu", weights_only=False) for d in (run, reference))
        for (key, a), b in zip(want["model"].items(), got["model"].values()):
            assert torch.equal(a, b), f"{run / name}: model.{key} differs from the uninterrupted run's"
        assert_same_tree(got, want, name)


def assert_same_log(run: Path, reference: Path) -> None:
    got, want = (timeless(log_records(d)) for d in (run, reference))
    assert got == want, (f"{run / 'log.jsonl'}: iterations {[r['iter'] for r in got]}, the uninterrupted run's "
                         f"{[r['iter'] for r in want]}")


@pytest.fixture(scope="module")
def train_reference(train_config, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("train-reference")
    run_ok(elegantviz("train", train_config, "-q"), cwd, "train")
    assert steps_logged(cwd / RUN) == list(range(1, TRAIN_ITERS + 1))
    return cwd / RUN


TRAIN_POINTS = {  # kill once this step is logged; then last.pt must be at this iteration (None: absent)
    "before-first-checkpoint": (1, None),
    "after-first-checkpoint": (CKPT_EVERY + 1, CKPT_EVERY),
    "after-later-checkpoint": (2 * CKPT_EVERY + 1, 2 * CKPT_EVERY),
}


class TrainKills:
    """Each kill point's killed run and its restarts, made once and shared by the tests that look
    at the checkpoints and at the log."""

    def __init__(self, config: Path, root: Path):
        self.config, self.root, self.done = config, root, {}
        self.killed_log: dict[str, list[dict]] = {}  # the log as the killed run left it

    def kill(self, point: str) -> Path:
        cwd = self.root / point / "killed"
        step, at = TRAIN_POINTS[point]
        run = cwd / RUN
        proc = start(elegantviz("train", self.config, "-q"), cwd, "killed")
        kill_when(proc, lambda: any(i >= step for i in steps_logged(run)), f"train step {step}", cwd, "killed")
        logged = max(steps_logged(run))
        if at is None:
            assert not (run / "last.pt").exists() and not (run / "best.pt").exists(), "a checkpoint was written"
        else:
            assert checkpoint_iteration(run / "last.pt") == at, "killed at another checkpoint than meant"
        assert logged < (at or 0) + CKPT_EVERY and logged < TRAIN_ITERS, f"step {logged} logged: killed too late"
        self.killed_log[point] = log_records(run, strict=False)  # a kill may tear the last line
        return cwd

    def resumed(self, point: str) -> tuple[subprocess.CompletedProcess, Path]:
        """``train CONFIG --resume`` after the kill: how the README says a run continues."""
        if point not in self.done:
            cwd = self.kill(point)
            if point == "before-first-checkpoint":  # keep the killed folder for the --overwrite restart too
                shutil.copytree(cwd, self.root / point / "overwrite")
            self.done[point] = (run_to_end(elegantviz("train", self.config, "--resume", "-q"), cwd, "resume"),
                                cwd / RUN)
        return self.done[point]

    def overwritten(self, point: str) -> Path:
        """``train CONFIG --overwrite`` after the kill: starting the run over."""
        self.resumed(point)
        cwd = self.root / point / "overwrite"
        if not (cwd / "overwrite.out").exists():
            run_ok(elegantviz("train", self.config, "--overwrite", "-q"), cwd, "overwrite")
        return cwd / RUN


@pytest.fixture(scope="module")
def train_kills(train_config, tmp_path_factory) -> TrainKills:
    return TrainKills(train_config, tmp_path_factory.mktemp("train-kills"))


@pytest.mark.parametrize("point", ["after-first-checkpoint", "after-later-checkpoint"])
def test_train_killed_then_resumed_checkpoints_are_bit_identical(point, train_kills, train_reference):
    """Model, optimizer, schedule, sampler and random states all come back from last.pt."""
    done, run = train_kills.resumed(point)
    assert done.returncode == 0, done.stderr[-1500:]
    assert steps_logged(run)[-1] == TRAIN_ITERS
    assert_same_checkpoints(run, train_reference)


@pytest.mark.parametrize("point", ["after-first-checkpoint", "after-later-checkpoint"])
def test_train_killed_then_resumed_redoes_the_lost_steps_exactly(point, train_kills, train_reference):
    """The killed run's records up to the checkpoint are kept as written (the lost steps' records
    are dropped), and the records appended after them are the uninterrupted run's from the
    checkpoint on (same losses, gradient norms, rates and validations): the same steps redone."""
    done, run = train_kills.resumed(point)
    assert done.returncode == 0, done.stderr[-1500:]
    at = TRAIN_POINTS[point][1]
    killed, resumed, reference = train_kills.killed_log[point], log_records(run), log_records(train_reference)
    kept = [r for r in killed if r["iter"] <= at]
    assert len(kept) < len(killed), "the kill landed on the checkpoint: no lost step to redo"
    assert resumed[:len(kept)] == kept, "the resumed run rewrote the killed run's records"
    assert timeless(killed) == timeless(reference[:len(killed)])
    assert timeless(kept + resumed[len(kept):]) == timeless(reference)


@pytest.mark.parametrize("point", ["after-first-checkpoint", "after-later-checkpoint"])
def test_train_killed_then_resumed_log_matches_uninterrupted(point, train_kills, train_reference):
    """The log is part of the run's output: after a resume it should read as one uninterrupted run."""
    done, run = train_kills.resumed(point)
    assert done.returncode == 0, done.stderr[-1500:]
    assert_same_log(run, train_reference)


def test_train_killed_before_first_checkpoint_restarts_over_bit_identically(train_kills, train_reference):
    """Nothing to resume from yet: --overwrite starts the run over, to the uninterrupted run's output."""
    run = train_kills.overwritten("before-first-checkpoint")
    assert_same_checkpoints(run, train_reference)
    assert_same_log(run, train_reference)


def test_train_killed_before_first_checkpoint_resumes_bit_identically(train_kills, train_reference):
    """`--resume` is how a killed run is continued (README), whenever it was killed."""
    done, run = train_kills.resumed("before-first-checkpoint")
    assert done.returncode == 0, f"--resume refused the killed run: {done.stderr.strip()[-400:]}"
    assert_same_checkpoints(run, train_reference)
    assert_same_log(run, train_reference)
