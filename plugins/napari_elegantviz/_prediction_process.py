"""The prediction process: one scene through ``predict_scene``, its stages as JSON lines.

    python -m napari_elegantviz._prediction_process CHECKPOINT SCENE MODE

Why a process of its own rather than a thread of napari's: importing torch's compiler stack
(timm imports torchvision, which imports torch._dynamo and triton) after napari's OpenGL is up
crashes the whole viewer where Mesa renders with llvmpipe (Xvfb, VMs, remote desktops): both
bring their own LLVM. Measured here: ``import triton`` segfaults once a napari canvas has drawn.
A process also keeps the network off the GUI's GIL.

Protocol. stdout carries one JSON object per line: ``{"stage", "done", "total", "at"}`` as
each stage starts (``at`` is ``time.time()``), then exactly one of ``{"summary": ...}``,
``{"cancelled": {"before", "done", "total"}}`` or ``{"error", "type"}``. A line ``cancel`` on
stdin, or stdin closing (napari went away), stops the run at the next stage boundary, where
the store is valid and a later run resumes. Anything else printed goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

CANCEL = threading.Event()


class _Cancelled(Exception):
    def __init__(self, before: str, done: int, total: int):
        super().__init__(before)
        self.report = {"before": before, "done": done, "total": total}


def _watch_stdin() -> None:
    for line in sys.stdin:
        if line.strip() == "cancel":
            break
    CANCEL.set()  # asked to, or the parent is gone


def main(argv: list[str] | None = None) -> int:
    checkpoint, scene_url, mode = (argv if argv is not None else sys.argv[1:])[:3]
    protocol, sys.stdout = sys.stdout, sys.stderr  # stray prints must not break the protocol

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    def on_stage(name: str, done: int, total: int) -> None:
        if CANCEL.is_set():
            raise _Cancelled(name, done, total)
        send({"stage": name, "done": done, "total": total, "at": time.time()})

    threading.Thread(target=_watch_stdin, name="cancel-watch", daemon=True).start()
    try:
        import torch

        from elegantviz.engine.predict import predict_scene

        # leave one core to the viewer: on a small machine a GUI competing with every core stutters
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

        summary = predict_scene(checkpoint, scene_url, mode=mode, progress=False, on_stage=on_stage)
    except _Cancelled as stop:
        send({"cancelled": stop.report})
        return 0
    except Exception as exc:  # reported to the dock, which shows it
        send({"error": str(exc), "type": type(exc).__name__})
        return 1
    finally:
        sys.stdout = protocol
    send({"summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
