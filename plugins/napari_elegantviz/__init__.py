"""napari plugin for elegantviz scene stores (npe2). Imports nothing heavy at start-up.

Layout: ``reader``, ``writer``, ``sample_data`` (the npe2 contributions, see ``napari.yaml``),
``layers`` (a scene store as layer data), ``palette`` (class tables as napari colormaps),
``viewer_layers`` (finding a scene's layers in a viewer), ``prediction`` (the Predict dock's
worker: ``elegantviz predict`` in a process), ``cache``, ``view`` (``open_viewer``) and
``docks/`` (one module per dock widget). ``open_viewer`` and ``view_scene`` are importable from
here; napari and Qt load when they are called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["open_viewer", "view_scene"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import view

        return getattr(view, name)
    raise AttributeError(f"module 'napari_elegantviz' has no attribute {name!r}")
