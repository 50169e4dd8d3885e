"""Where the plugin keeps things between sessions, and where it finds a default checkpoint.

- ``$ELEGANTVIZ_CACHE``, else ``$XDG_CACHE_HOME/elegantviz``, else ``~/.cache/elegantviz``:
  the cache root (samples live in ``samples/`` under it).
- ``$ELEGANTVIZ_CHECKPOINT``, else ``<cache root>/checkpoint.pt`` when that file exists, else the
  riverworld model shipped in the package: the checkpoint the sample data predicts with and the
  Predict dock starts from. ``$ELEGANTVIZ_CHECKPOINT=none`` turns the default off.
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
    """The checkpoint named by ``$ELEGANTVIZ_CHECKPOINT``, left in the cache root, or shipped."""
    named = os.environ.get(CHECKPOINT_ENV)
    if named:
        if named.lower() == "none":
            return None
        return Path(named).expanduser() if Path(named).expanduser().is_file() else None
    default = cache_root() / CHECKPOINT_FILE
    if default.is_file():
        return default
    from elegantviz.weights import shipped_checkpoint

    try:
        return shipped_checkpoint()
    except FileNotFoundError:
        return None
