"""A training run's folder: never overwritten by accident, resumed only by its own run.

A folder that holds a run (``best.pt``, ``last.pt`` or ``log.jsonl``) is refused unless the
user asks to ``--resume`` it or to ``--overwrite`` it: a finished run's ``best.pt`` was once
replaced by a worse model without a word. ``--resume`` takes a ``last.pt`` only if it was
written by a run of the same data, model and recipe (only ``iters`` and ``out_dir`` may
change), and a truncated or foreign file is one line, not a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from elegantviz.errors import InputError

RUN_FILES = ("best.pt", "last.pt", "log.jsonl")
# Config keys a resumed run may change: how long it runs, where and how often it writes, and on what.
MAY_CHANGE = {"iters", "out_dir", "val_every", "ckpt_every", "log_every", "memory", "device"}


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding a run unless resuming or overwriting; on overwrite, remove the
    old run's checkpoints and log so nothing of it mixes with the new one."""
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other: continue the run, or start it over")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a run folder")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if resume or not found:
        return
    if not overwrite:
        raise InputError(f"{out}: holds a training run ({', '.join(found)}); pass --resume to continue it, "
                         "--overwrite to start it over (its checkpoints are deleted), or another --out")
    for name in found:
        (out / name).unlink()


def check_resumable(path: Path, ck: dict, state: dict) -> None:
    """The checkpoint was written by this run: same config (but ``MAY_CHANGE``), classes, bands."""
    missing = [k for k in ("optimizer", "scheduler", "sampler", "rng", "iteration", "config") if k not in ck]
    if missing:
        raise InputError(f"{path}: cannot be resumed from (no {', '.join(missing)}: an exported or foreign checkpoint)")
    differ = [f"config.{k}" for k in sorted(set(ck["config"]) | set(state["config"]))
              if k not in MAY_CHANGE and ck["config"].get(k) != state["config"].get(k)]
    differ += [k for k in ("classes", "in_chans", "bands") if ck.get(k) != state.get(k)]
    if differ:
        raise InputError(f"{path}: written by another run ({', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} "
                         "differ); resume with the config that wrote it, or start a new run in another --out")


def trim_log(out: Path, iteration: int) -> None:
    """Keep the log records of the iterations up to ``iteration`` (the checkpoint resumed from):
    the steps after it are redone and logged again, so the log reads as one uninterrupted run.
    A line torn by a kill is dropped with them. Rewritten atomically (a temporary file, renamed)."""
    log = out / "log.jsonl"
    if not log.exists():
        return
    kept = []
    for line in log.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # the kill tore this line; nothing after it was written
        if not isinstance(record, dict) or not isinstance(record.get("iter"), int) or record["iter"] > iteration:
            break
        kept.append(line if line.endswith("\n") else line + "\n")
    tmp = log.with_name(log.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log)
