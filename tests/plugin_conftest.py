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


def interior_pixel(mask: np.ndarray, radius: int = 12) -> tuple[int, int]:
    """A pixel whose whole (2r+1)^2 neighbourhood is inside ``mask`` (the most interior one)."""
    inner = ndimage.minimum_filter(mask.astype(np.uint8), size=2 * radius + 1, mode="constant")
    ys, xs = np.nonzero(inner)
    assert ys.size, "no pixel deep enough inside the mask"
    dist = ndimage.distance_transform_edt(mask)
    k = int(np.argmax(dist[ys, xs]))
    return int(ys[k]), int(xs[k])


def centre_pixel(viewer, y: int, x: int, zoom: float = 8.0) -> np.ndarray:
    """RGB of the canvas centre after centring the camera on data pixel (y, x)."""
    viewer.scene.camera.center = (float(y), float(x))
    viewer.scene.camera.zoom = zoom
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    return shot[h // 2 - 2 : h // 2 + 3, w // 2 - 2 : w // 2 + 3, :3].reshape(-1, 3).mean(0)
