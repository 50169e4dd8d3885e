"""The npe2 reader: a scene store path becomes lazy image, labels and maps layers.

napari asks every reader whose pattern matches (``*.zarr``); we answer only for elegantviz
scene stores and return None for anything else, so napari-ome-zarr keeps plain OME-Zarr.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from elegantviz.io.bands import NATURAL


def _scene_or_none(path: str):
    """Open ``path`` as a finished scene store, or None when it is not one."""
    from elegantviz.errors import ElegantvizError
    from elegantviz.io.store import open_scene

    try:
        return open_scene(path)
    except (ElegantvizError, OSError):
        return None


def _looks_like_zarr(path: str) -> bool:
    p = Path(path)
    return path.rstrip("/").endswith(".zarr") and (not p.exists() or p.is_dir())


def get_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader hook: a reader function for a scene store, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = str(path)
    if not _looks_like_zarr(path) or _scene_or_none(path) is None:
        return None
    return partial(read_scene, composite=NATURAL)


def read_scene(path: str | list[str], composite: str = NATURAL) -> list[tuple]:
    """Layer data of a scene store; ``composite='false-colour'`` shows NIR, red, green."""
    from elegantviz.io.store import open_scene

    from .layers import scene_layers

    if isinstance(path, list):
        path = path[0]
    return scene_layers(open_scene(str(path)), composite=composite)
