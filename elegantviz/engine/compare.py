"""`elegantviz compare`: several trained models on the same scenes, one table.

Each model predicts every scene into ``labels/<name>`` by the real ``elegantviz predict`` in a
child process of its own, so its seconds and its peak RSS (the child's, from ``wait4``) are that
model's alone, start-up and model loading included (``forward s``: predict's forward stage, i.e.
reading and normalising the scene, the network and caching its outputs). Then each model's
labels are evaluated against ``labels/gt`` and the scenes' confusion matrices summed (a dataset-level mIoU, as
:func:`~elegantviz.engine.evaluate.dataset_report`). The labels stay in the stores, so the error
navigator and notebook 5 show any two models side by side afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from elegantviz.engine.evaluate import dataset_report, evaluate_scene
from elegantviz.errors import InputError
from elegantviz.io import schema as S
from elegantviz.io.store import open_scene

__all__ = ["ModelSpec", "parse_model", "compare_models", "format_table", "failures"]

MODES = ("holistic", "sliced")


@dataclass(frozen=True)
class ModelSpec:
    """One row of the comparison: a labels name, a checkpoint and how it predicts."""

    name: str
    checkpoint: str
    mode: str = "holistic"


def parse_model(spec: str) -> ModelSpec:
    """``NAME=CHECKPOINT`` or ``NAME=CHECKPOINT@sliced`` (``--model`` on the command line)."""
    name, eq, rest = spec.partition("=")
    if not eq or not name or not rest:
        raise InputError(f"--model {spec!r}: write NAME=CHECKPOINT (or NAME=CHECKPOINT@sliced)")
    path, mode = rest, "holistic"
    for m in MODES:  # only a known mode is cut off: a checkpoint path may hold an @ itself
        if rest.endswith("@" + m):
            path, mode = rest[: -len(m) - 1], m
    S.check_part_name(S.LABELS, name, f"--model {spec!r}")
    if name in (S.GT, S.PRED, S.HARD, S.ERROR) or name.startswith(S.ERROR + "_"):
        raise InputError(f"--model {spec!r}: {name!r} is a name predict or the ground truth uses; name the model "
                         "(e.g. isdnet=...): its labels go to labels/<name>")
    if not Path(path).is_file():
        hint = "; a mode after @ is holistic or sliced" if "@" in path else ""
        raise InputError(f"--model {spec!r}: {path}: no such checkpoint{hint}")
    return ModelSpec(name, path, mode)


def _check_names(specs: list[ModelSpec], scenes: list[str]) -> None:
    """Before any model runs: names differ, and none would replace labels predict did not write."""
    from elegantviz.engine.predict import PREDICTED

    if not specs:
        raise InputError("compare needs at least one --model NAME=CHECKPOINT")
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise InputError(f"--model names must differ (each writes labels/<name>): {', '.join(names)}")
    for path in scenes:
        scene = open_scene(path)
        if S.GT not in scene.labels:
            raise InputError(f"{path}: has no labels/gt to compare the models against")
        for name in names:
            if name in scene.labels and not scene.part_meta(S.LABELS, name).get(PREDICTED):
                raise InputError(f"{path}: labels/{name} exists and was not written by predict; name the model "
                                 "otherwise (compare never replaces labels predict did not make)")


def _predict_child(spec: ModelSpec, scenes: list[str], device: str, crop: int, pairs: list[str]) -> dict:
    """Run ``elegantviz predict`` for one model in a child; its seconds, peak RSS and summaries."""
    cmd = [sys.executable, "-m", "elegantviz", "predict", spec.checkpoint, *scenes, "--name", spec.name,
           "--mode", spec.mode, "--device", device, "--progress-json", "-q"]
    cmd += ["--crop", str(crop)] if spec.mode == "sliced" else []
    for p in pairs:
        cmd += ["--pair", p]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        lines = child.stdout.read().splitlines()
        child.stdout.close()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().strip()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    failed = [e for e in events if "error" in e]
    if failed or child.returncode:
        why = f"{failed[0]['scene']}: {failed[0]['error']}" if failed else (stderr.splitlines() or ["no output"])[-1]
        raise InputError(f"model {spec.name} ({spec.checkpoint}): predict failed: {why}")
    summaries = {e["scene"]: e["summary"] for e in events if "summary" in e}
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "forward_s": sum(s["forward_s"] for s in summaries.values())}


def compare_models(specs: list[ModelSpec], scenes: list[str], pairs: list[str] | None = None, device: str = "auto",
                   crop: int = 512, convention: str = "all", progress: bool = True) -> dict:
    """Predict and evaluate every model on every scene; returns the table's rows and their inputs.
    A model that fails has a row with its ``error`` (one line); the others are still measured."""
    _check_names(specs, scenes)
    pairs = list(pairs or [])
    rows = []
    for i, spec in enumerate(specs):
        if progress:
            print(f"[{i + 1}/{len(specs)}] {spec.name}: predicting {len(scenes)} scene(s) ({spec.mode})",
                  file=sys.stderr)
        try:
            run = _predict_child(spec, scenes, device, crop, pairs)
            reports = [evaluate_scene(p, pred=spec.name, pairs=pairs or None, convention=convention, progress=False)
                       for p in scenes]
        except InputError as e:
            rows.append({"model": spec.name, "checkpoint": spec.checkpoint, "mode": spec.mode, "error": str(e)})
            continue
        total = dataset_report(reports)
        rows.append({"model": spec.name, "checkpoint": spec.checkpoint, "mode": spec.mode, **run,
                     "miou": total["miou"], "iou": {k: v["iou"] for k, v in total["per_class"].items()},
                     "pairs": {e["pair"]: e["pixels"] for e in total["pairs"]}})
    return {"scenes": list(map(str, scenes)), "pairs": pairs, "device": device, "convention": convention,
            "models": rows}


def format_table(result: dict) -> str:
    """The comparison as a text table: one row per model, failed models listed below it."""
    done = [r for r in result["models"] if "error" not in r]
    lines = []
    if done:
        classes, pairs = list(done[0]["iou"]), list(done[0]["pairs"])
        head = ["model", "mode", "mIoU", *classes, *(f"{p} px" for p in pairs), "seconds", "forward s",
                "peak RSS GB"]
        body = [[r["model"], r["mode"], f"{r['miou']:.3f}",
                 *("-" if r["iou"][c] is None else f"{r['iou'][c]:.3f}" for c in classes),
                 *(f"{r['pairs'][p]:,d}" for p in pairs), f"{r['seconds']:.1f}", f"{r['forward_s']:.1f}",
                 f"{r['peak_rss_bytes'] / 2**30:.2f}"] for r in done]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(str(c).rjust(w) if i >= 2 else str(c).ljust(w)
                           for i, (c, w) in enumerate(zip(cells, widths))) for cells in [head, *body]]
    lines += [f"{r['model']}: failed: {r['error']}" for r in result["models"] if "error" in r]
    return "\n".join(lines)


def failures(result: dict) -> list[str]:
    """The names of the models that failed."""
    return [r["model"] for r in result["models"] if "error" in r]
