"""elegantviz: holistic segmentation of extra-large images, and a view of what the model did.

Kept light on purpose: napari imports this package at start-up to find the plugin manifest,
so nothing here may import torch, Qt or napari. Public functions are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "open_scene": "elegantviz.io.store",
    "create_scene": "elegantviz.io.store",
    "Scene": "elegantviz.io.store",
    "convert_raster": "elegantviz.io.convert",
    "synthesize_riverworld": "elegantviz.data.synthetic",
    "get_class_table": "elegantviz.classes",
    "ClassTable": "elegantviz.classes",
    "load_model": "elegantviz.engine.checkpoints",
    "TrainedModel": "elegantviz.engine.checkpoints",
    "predict_scene": "elegantviz.engine.predict",
    "evaluate_scene": "elegantviz.engine.evaluate",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elegantviz' has no attribute {name!r}")
