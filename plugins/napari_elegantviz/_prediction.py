"""Prediction as a generator of stages, cancellable between stages (the Predict dock's worker).

The generator starts the prediction process (``_prediction_process``, which runs
``predict_scene``; see there why it is a process) and yields each stage as it starts. Cancel
stops it at the next stage boundary: a finished part stays finished, an unstarted one is not
begun, and the network output cached in the store lets the next run resume without the
forward pass. The forward pass itself is not interrupted.
"""

from __future__ import annotations

import collections
import json
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Generator

DONE = "done"
_RUNNING: set[subprocess.Popen] = set()


class PredictionFailed(Exception):
    """The prediction raised (its message is shown) or its process died."""


@dataclass(frozen=True)
class Stage:
    """A stage that starts now (``name``), after ``done`` of ``total`` stages finished, at ``at`` (epoch s)."""

    name: str
    done: int
    total: int
    at: float = 0.0


def prediction_running() -> bool:
    """Whether a prediction process is still going (a quit worker leaves it to its next stage)."""
    for proc in list(_RUNNING):
        if proc.poll() is not None:
            _RUNNING.discard(proc)
    return bool(_RUNNING)


def child_command(checkpoint: str, scene_url: str, mode: str) -> list[str]:
    return [sys.executable, "-m", "napari_elegantviz._prediction_process", str(checkpoint), str(scene_url), mode]


def _pump(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _pass_on_cancel(proc: subprocess.Popen, cancel: threading.Event) -> None:
    """Tell the process to stop once ``cancel`` is set, even if nobody iterates the generator
    any more (napari's activity dock quits a worker without resuming it)."""
    while proc.poll() is None:
        if cancel.wait(0.1):
            _tell(proc, "cancel")
            return


def prediction_stages(
    checkpoint: str, scene_url: str, mode: str, cancel: threading.Event
) -> Generator[Stage, None, dict]:
    """Yield each stage of predicting the scene as it starts; return predict_scene's summary.

    When ``cancel`` is set the summary is ``{"cancelled": True, "before": stage, "done": k,
    "total": n}``. A failed prediction raises ``PredictionFailed`` with its message.
    """
    proc = subprocess.Popen(child_command(checkpoint, scene_url, mode), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    _RUNNING.add(proc)
    lines: queue.Queue = queue.Queue()
    errors: collections.deque = collections.deque(maxlen=20)  # the tail of stderr, for a crash report
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    threading.Thread(target=_pass_on_cancel, args=(proc, cancel), daemon=True).start()
    outcome: dict = {}
    try:
        while True:
            line = lines.get()
            if line is None:
                break
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "stage" in message:
                yield Stage(message["stage"], message["done"], message["total"], message.get("at", 0.0))
            else:
                outcome = message
        proc.wait()
    finally:
        _tell(proc, None)  # done: tidy; still running (the worker was quit): it stops at its next stage
    if "summary" in outcome:
        return outcome["summary"]
    if "cancelled" in outcome:
        return {"cancelled": True, "scene": scene_url, **outcome["cancelled"]}
    if "error" in outcome:
        raise PredictionFailed(f"{outcome['type']}: {outcome['error']}")
    tail = "".join(errors).strip().splitlines()[-3:]
    raise PredictionFailed(f"the prediction process exited with code {proc.returncode}: {' / '.join(tail)}")


def _tell(proc: subprocess.Popen, line: str | None) -> None:
    """Send a line to the process, or close its stdin (which it takes as cancel too)."""
    try:
        if line is None:
            proc.stdin.close()
        else:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
    except (OSError, ValueError):  # it has already finished
        pass


def run_prediction(checkpoint: str, scene_url: str, mode: str = "holistic") -> dict:
    """Predict to the end without a GUI (the sample data): the summary, or PredictionFailed."""
    stages = prediction_stages(checkpoint, scene_url, mode, threading.Event())
    while True:
        try:
            next(stages)
        except StopIteration as finished:
            return finished.value
