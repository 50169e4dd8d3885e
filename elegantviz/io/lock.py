"""One writer per scene store: a lock file beside it (``NAME.zarr.lock``).

Two predicts on one store interleaved their parts and their resume ledgers and ended in
``KeyError: '_progress'``. The lock is created atomically (``O_EXCL``) and names its holder
(pid, host, command, start time), so the second writer is refused with one line saying who
holds it. A lock whose process is gone (same host, pid not running) is stale and is taken
over. Stores behind a URL (``s3://``, ``memory://``) have no place for a lock file and are
not locked.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from elegantviz.errors import InputError

FRESH_S = 5.0  # an unreadable lock younger than this is a writer between creating and filling it


def lock_path(store: str | Path) -> Path:
    p = Path(str(store).rstrip("/"))
    return p.with_name(p.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stale(holder: dict | None, path: Path) -> bool:
    if holder is None:  # unreadable: being written this instant, or left by a writer killed then
        try:
            return time.time() - path.stat().st_mtime > FRESH_S
        except OSError:
            return True
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))


@contextmanager
def writer_lock(store: str | Path, command: str) -> Iterator[Path | None]:
    """Hold the store's writer lock for the ``with`` block; refuse if another live writer has it."""
    if "://" in str(store) or not Path(store).is_dir():  # a URL, or no store yet: its opener says so
        yield None
        return
    path = lock_path(store)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if _stale(holder, path):
                path.unlink(missing_ok=True)
                continue
            holder = holder or {"command": "starting", "pid": "?", "host": "?", "since": "now"}
            raise InputError(f"{store}: another elegantviz is writing it ({holder.get('command')}, pid "
                             f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); "
                             f"wait for it, or remove {path} if that process is gone") from None
        except OSError as e:
            raise InputError(f"{store}: cannot create its writer lock {path} ({e.strerror})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise InputError(f"{store}: its writer lock {path} keeps reappearing; is another writer starting?")
    try:
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
