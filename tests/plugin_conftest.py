"""Small scene stores for the napari plugin tests (imported explicitly; not a conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from elegantviz.data.synthetic import RIVER, synthesize_riverworld

SIZE = 512
TILE = 128  # three pyramid levels at 512 px: multiscale paths are exercised


def riverworld_store(path: Path, size: int = SIZE, evidence: bool = True):
    """A riverworld scene with gt and, with ``evidence``, hard/margin/keys stand-ins for prediction."""
    scene = synthesize_riverworld(path, height=size, seed=0, tile=TILE, progress=False)
    if evidence:
        gt = np.asarray(scene.label("gt"))
        scene.add_labels("hard", (gt == RIVER).astype(np.uint8), progress=False)
        ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :].repeat(size, 0)
        scene.add_map("margin", ramp, progress=False)
        scene.add_map("keys", np.random.default_rng(0).random((4, size // 8, size // 8)), progress=False,
                      attrs={"stride": 8})
    return scene


def interior_pixel(mask: np.ndarray, radius: int = 3) -> tuple[int, int]:
    """The pixel deepest inside ``mask``; at least ``radius`` pixels from its edge."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    assert dist[y, x] > radius, f"no pixel {radius} px inside the mask"
    return int(y), int(x)


def centre_pixel(viewer, y: int, x: int, zoom: float = 8.0) -> np.ndarray:
    """RGB of the canvas centre after centring the camera on data pixel (y, x)."""
    viewer.scene.camera.center = (float(y), float(x))
    viewer.scene.camera.zoom = zoom
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    return shot[h // 2 - 2 : h // 2 + 3, w // 2 - 2 : w // 2 + 3, :3].reshape(-1, 3).mean(0)
