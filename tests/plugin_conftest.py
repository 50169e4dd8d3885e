"""Small scene stores for the napari plugin tests (imported explicitly; not a conftest).

The fixtures at the end train a tiny model once per session and predict with it, so the
plugin is tested on what prediction really writes. Import them into one test module only:
each module that imports a fixture gets its own copy, and would train again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
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


# --- real prediction ---------------------------------------------------------------------------
PREDICTED_SIZE = 128  # 16 x 16 feature pixels at the tiny model's stride of 8
PREDICT_TILE = 64


def tiny_scene(path: Path, size: int, seed: int):
    """A riverworld scene as prediction sees it: gt, no evidence yet."""
    return synthesize_riverworld(path, height=size, seed=seed, tile=PREDICT_TILE, progress=False)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A CPU model trained for 2 iterations: its predictions are poor, but real in every part."""
    from elegantviz.config import config_from_dict
    from elegantviz.engine.train import Trainer

    root = tmp_path_factory.mktemp("checkpoint")
    train_scene = tiny_scene(root / "train.zarr", 96, seed=11)
    cfg = config_from_dict({
        "data": {"train": [str(train_scene.url)], "val": []},
        "model": {"name": "elegantseg-cpu", "overrides": {"dim": 16, "hidden_dim": 16}},
        "optim": {"warmup_iters": 1}, "iters": 2, "ckpt_every": 2, "out_dir": str(root / "run"),
    })
    return Path(Trainer(cfg, progress=False).fit())


@pytest.fixture(scope="session")
def predicted_store(tmp_path_factory, checkpoint) -> Path:
    """A 128 px scene after holistic prediction: pred, hard, error, margin, boundary, keys, queries, attention."""
    from elegantviz.engine.predict import predict_scene

    path = tmp_path_factory.mktemp("predicted") / "scene.zarr"
    tiny_scene(path, PREDICTED_SIZE, seed=5)
    predict_scene(checkpoint, path, progress=False)
    return path


def copy_store(store: Path, to: Path) -> Path:
    shutil.copytree(store, to)
    return to
