"""Shared fixtures: small synthetic scenes and the real rasters in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("ELEGANTVIZ_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real rasters; tests that need them skip (with the reason) in a user's clone without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real rasters not found at {SHARED_DATA.resolve()} (set ELEGANTVIZ_SHARED_DATA)")
    return SHARED_DATA.resolve()


def write_geotiff(path: Path, data: np.ndarray, nodata=None, crs="EPSG:32614", tiled=True) -> Path:
    """A small georeferenced GeoTIFF for tests."""
    import rasterio
    from rasterio.transform import from_origin

    data = data[None] if data.ndim == 2 else data
    profile = dict(driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2],
                   dtype=data.dtype, crs=crs, transform=from_origin(400000, 5200000, 2.0, 2.0), nodata=nodata)
    if tiled:
        profile.update(tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def riverworld_store(tmp_path):
    """A 384 x 320 riverworld scene store with labels/gt, chunks of 128."""
    from elegantviz.data.synthetic import synthesize_riverworld

    return synthesize_riverworld(tmp_path / "rw.zarr", height=384, width=320, seed=3, tile=128, progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: two OpenMP threads on two shared cores mostly wait for each other (a 97 px
    step took 22 s with 2 threads against 1 s with 1), so these modules run torch on one thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
