"""Models shipped inside the package (no download at run time).

``riverworld-cpu.pt``: ElegantSeg's CPU preset trained on riverworld by the command in the
README (float16 weights, its config and training log; ``elegantviz.engine.checkpoints.export_model``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

RIVERWORLD = "riverworld-cpu.pt"


def shipped_checkpoint(name: str = RIVERWORLD) -> Path:
    """Path of a shipped model; a clear error when the package was installed without it."""
    path = Path(str(resources.files("elegantviz") / "weights" / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped model is missing; train one with `elegantviz demo --train`")
    return path
