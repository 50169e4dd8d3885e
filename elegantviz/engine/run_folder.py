"""A training run's folder: never overwritten by accident, resumed only by its own run.

A folder that holds a run (``best.pt``, ``last.pt`` or ``log.jsonl``) is refused unless the
user asks to ``--resume`` it or to ``--overwrite`` it: a finished run's ``best.pt`` was once
replaced by a worse model without a word. ``--resume`` takes a ``last.pt`` only if it was
written by a run of the same data, model and recipe (only ``iters`` and ``out_dir`` may
change), and a truncated or foreign file is one line, not a traceback.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

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


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as a dict, or one line saying why it cannot be read."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise InputError(f"{path}: cannot read the checkpoint (truncated or not a checkpoint: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise InputError(f"{path}: not an elegantviz checkpoint (no model weights)")
    return ck


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
