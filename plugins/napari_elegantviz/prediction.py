"""Prediction as a generator of stages, cancellable between stages (the Predict dock's worker).

The generator runs ``elegantviz predict --progress-json --stdin-cancel`` in a process of its
own and yields each stage as it starts. Cancel stops it at the next stage boundary: a finished
part stays finished, an unstarted one is not begun, and the network output cached in the store
lets the next run resume without the forward pass. The forward pass itself is not interrupted.

Why a process rather than a thread of napari's: importing torch's compiler stack (timm imports
torchvision, which imports torch._dynamo and triton) after napari's OpenGL is up crashes the
whole viewer where Mesa renders with llvmpipe (Xvfb, VMs, remote desktops): both bring their
own LLVM. Measured here: ``import triton`` segfaults once a napari canvas has drawn. A process
also keeps the network off the GUI's GIL, and its torch leaves the viewer one core.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Generator

DONE = "done"
RUNNING: set[subprocess.Popen] = set()


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
    for proc in list(RUNNING):
        if proc.poll() is not None:
            RUNNING.discard(proc)
    return bool(RUNNING)


def predict_args(checkpoint: str, scene_url: str, mode: str) -> list[str]:
    """The ``elegantviz`` command line of one run."""
    return ["predict", str(checkpoint), str(scene_url), "--mode", mode, "--progress-json", "--stdin-cancel"]


def child_command(checkpoint: str, scene_url: str, mode: str) -> list[str]:
    return [sys.executable, "-m", "elegantviz.cli", *predict_args(checkpoint, scene_url, mode)]


def child_env() -> dict[str, str]:
    """The environment of the process: torch on all cores but one (a GUI competing with every
    core stutters on a small machine), unless the user chose a thread count."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    return env


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

    When ``cancel`` is set the summary is ``{"cancelled": True, "scene": url, "before": stage,
    "done": k, "total": n}``. A failed prediction raises ``PredictionFailed`` with its message.
    """
    proc = subprocess.Popen(child_command(checkpoint, scene_url, mode), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=child_env())
    RUNNING.add(proc)
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
            if not isinstance(message, dict):
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
        raise PredictionFailed(f"{outcome.get('type', 'Error')}: {outcome['error']}")
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
