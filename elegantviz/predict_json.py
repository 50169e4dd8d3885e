"""`predict --progress-json`: the line protocol a program driving a run reads (the napari
Predict dock does), and ``--stdin-cancel``, its way to stop the run between two stages."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from elegantviz.errors import writing


class Cancelled(Exception):
    """Raised between two stages once a cancel was asked for; the store is valid and resumable."""

    def __init__(self, before: str, done: int, total: int):
        super().__init__(before)
        self.report = {"before": before, "done": done, "total": total}


def watch_stdin(cancel: threading.Event) -> None:
    """Set ``cancel`` at a line ``cancel`` on stdin, or when stdin closes (the caller went away)."""
    for line in sys.stdin:
        if line.strip() == "cancel":
            break
    cancel.set()


def predict_json(args: argparse.Namespace, kwargs: dict) -> None:
    """``--progress-json``: JSON lines on stdout (see the option's help); anything else printed
    goes to stderr, so a reader of stdout sees only the protocol."""
    from elegantviz.engine.predict import predict_scene

    out, sys.stdout = sys.stdout, sys.stderr
    cancel = threading.Event()
    if args.stdin_cancel:
        threading.Thread(target=watch_stdin, args=(cancel,), name="stdin-cancel", daemon=True).start()

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        for path in args.scenes:
            def on_stage(name: str, done: int, total: int, path=path) -> None:
                if cancel.is_set():
                    raise Cancelled(name, done, total)
                send({"scene": path, "stage": name, "done": done, "total": total, "at": time.time()})

            try:
                with writing(path):
                    summary = predict_scene(args.checkpoint, path, progress=False, on_stage=on_stage, **kwargs)
            except Cancelled as stop:
                send({"scene": path, "cancelled": stop.report})
                return
            except Exception as exc:
                send({"scene": path, "error": str(exc), "type": type(exc).__name__})
                raise
            send({"scene": path, "summary": summary})
    finally:
        sys.stdout = out
