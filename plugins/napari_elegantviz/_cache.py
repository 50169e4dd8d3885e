"""Where the plugin keeps things between sessions, and where it finds a default checkpoint.

- ``$ELEGANTVIZ_CACHE``, else ``$XDG_CACHE_HOME/elegantviz``, else ``~/.cache/elegantviz``:
  the cache root (samples live in ``samples/`` under it).
- ``$ELEGANTVIZ_CHECKPOINT``, else ``<cache root>/checkpoint.pt`` when that file exists: the
  checkpoint the sample data predicts with and the Predict dock starts from.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_ENV = "ELEGANTVIZ_CHECKPOINT"
CHECKPOINT_FILE = "checkpoint.pt"


def cache_root() -> Path:
    base = os.environ.get("ELEGANTVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "elegantviz"
    )
    return Path(base)


def configured_checkpoint() -> Path | None:
    """The checkpoint named by ``$ELEGANTVIZ_CHECKPOINT`` or left in the cache root, if any."""
    named = os.environ.get(CHECKPOINT_ENV)
    if named:
        return Path(named).expanduser() if Path(named).expanduser().is_file() else None
    default = cache_root() / CHECKPOINT_FILE
    return default if default.is_file() else None
