"""Issue #15: training on several processes under torchrun (gloo on the CPU, 2 ranks).

One step on 2 ranks must equal one single-process step accumulating the same 2 samples (loss and
weights; BatchNorm's running statistics differ by design: each rank keeps its own), a resume
across ranks must continue exactly, and a killed rank must stop the run with an error, not hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from elegantviz.config import config_from_dict
from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.engine.train import Trainer

pytestmark = pytest.mark.slow
TIMEOUT_S = 300
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ELEGANTVIZ_DIST_TIMEOUT_S": "60"}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("scenes")
    return [synthesize_riverworld(root / f"s{i}.zarr", height=96, width=80, seed=i, tile=64, progress=False).url
            for i in range(3)]


def config(scenes: list[str], out: Path, accumulate: int, iters: int = 4) -> dict:
    # SGD, so weights can be compared tightly (Adam's first step divides by |g|, which magnifies
    # float-sum differences in gradients near zero); milestones absolute, so --iters 2 and a
    # resume to 4 follow the schedule of a run of 4; no dropout, as the ranks share one random
    # stream (each rank's masks fall on another sample than in one process)
    return {"data": {"train": scenes[:2], "val": scenes[2:], "mode": "holistic"},
            "model": {"name": "elegantseg-cpu", "overrides": {"dim": 16, "hidden_dim": 16, "dropout": 0.0}},
            "optim": {"optimizer": "sgd", "lr": 0.01, "warmup_iters": 1, "warmup_lr": 0.001, "milestones": [3],
                      "accumulate": accumulate},
            "memory": {"policy": "none"}, "precise_bn": 0,
            "iters": iters, "val_every": 2, "ckpt_every": 1, "log_every": 1, "out_dir": str(out)}


def torchrun(cfg: Path, *args: object, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "elegantviz", "train", str(cfg), "-q", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def records(out: Path) -> tuple[list[float], list[float]]:
    """The run's losses, one a step, and its validation mIoUs."""
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["iter"] for r in steps] == list(range(1, len(steps) + 1))
    return [r["loss"] for r in steps], [r["val"]["miou"] for r in log if "val" in r]


def test_two_ranks_equal_one_process_accumulating_both_and_resume_exactly(scenes, tmp_path):
    single = Trainer(config_from_dict(config(scenes, tmp_path / "single", accumulate=2)), progress=False)
    single.fit()
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(config(scenes, tmp_path / "ddp", accumulate=1)))
    torchrun(cfg, "--iters", 2)
    assert len(records(tmp_path / "ddp")[0]) == 2  # rank 0 alone logs: one record a step
    torchrun(cfg, "--resume")
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert ddp["iteration"] == 4
    (ddp_loss, ddp_val), (loss, val) = records(tmp_path / "ddp"), records(tmp_path / "single")
    assert ddp_loss == pytest.approx(loss, rel=1e-5)
    assert len(val) == 2 and ddp_val == pytest.approx(val, abs=1e-6)  # validation split over the ranks, summed
    assert (tmp_path / "ddp" / "best.pt").is_file()
    ref = single.model.state_dict()
    params = {n for n, _ in single.model.named_parameters()}
    assert params
    for name in params:
        torch.testing.assert_close(ddp["model"][name], ref[name], rtol=1e-4, atol=1e-6, msg=name)
    # the weights moved: an equality of two untouched models would prove nothing
    start = Trainer(config_from_dict(config(scenes, tmp_path / "start", accumulate=2)), progress=False)
    moved = max(float((ref[n] - start.model.state_dict()[n]).abs().max()) for n in params)
    assert moved > 1e-3


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's child process that runs ``rank``."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def test_a_killed_rank_stops_the_run_with_an_error(scenes, tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(config(scenes, tmp_path / "ddp", accumulate=1, iters=500)))
    proc = torchrun(cfg, wait=False)
    log, deadline = tmp_path / "ddp" / "log.jsonl", time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # training: both ranks in their steps
            break
        time.sleep(0.1)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "no rank 1"
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=TIMEOUT_S)  # not a hang: it ends well before the 500 steps
    assert proc.returncode != 0, out[-3000:]
    assert time.monotonic() - killed_at < 120, "the run went on long after a rank died"
    assert ("rank 1" in out or "local_rank: 1" in out) and "Signal 9 (SIGKILL)" in out, out[-3000:]
    steps = sum("loss" in json.loads(line) for line in log.read_text().splitlines())
    assert 2 <= steps < 500
    # resumable: rank 0, stopped by torchrun at any moment, leaves a whole checkpoint (written
    # atomically), of the last step or the one before (the log line comes before the checkpoint)
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)["iteration"] >= steps - 1 >= 1
