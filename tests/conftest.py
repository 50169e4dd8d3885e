"""Shared fixtures: small synthetic scenes, the real rasters in ../shared/data, store comparison."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

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


# --- comparing stores -------------------------------------------------------------------------
# attributes that differ between two runs of the same job by design: timings and predict's run id
VOLATILE_ATTRS = {"write_seconds", "run"}


def without(obj, keys: set):
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    return obj


def store_files(store: Path) -> set[str]:
    return {(Path(d) / f).relative_to(store).as_posix() for d, _, files in os.walk(store) for f in files}


def assert_same_store(got: Path, want: Path) -> None:
    """Same files, same metadata (but timings), every array bit for bit, nothing scratch left."""
    files, expected = store_files(got), store_files(want)
    assert files == expected, (f"{got}: files differ from the reference run's: extra "
                               f"{sorted(files - expected)[:8]}, missing {sorted(expected - files)[:8]}")
    top = {f.split("/")[0] for f in files}
    assert not top & {"_progress", "_predict"}, f"{got}: scratch left behind: {sorted(top & {'_progress', '_predict'})}"
    arrays = 0
    for meta in sorted(f for f in files if f.endswith("zarr.json")):
        a, b = (json.loads((root / meta).read_text()) for root in (got, want))
        assert without(a, VOLATILE_ATTRS) == without(b, VOLATILE_ATTRS), f"{got / meta}: metadata differs"
        if a["node_type"] != "array":
            continue
        node = str(Path(meta).parent)
        x, y = (np.asarray(zarr.open_array(str(root / node), mode="r")[...]) for root in (got, want))
        assert x.dtype == y.dtype and x.shape == y.shape, f"{got / node}: {x.dtype}{x.shape} != {y.dtype}{y.shape}"
        if x.tobytes() != y.tobytes():
            pytest.fail(f"{got / node}: not bit-identical to the reference run "
                        f"({int(np.count_nonzero(x != y))} of {x.size} values differ)")
        arrays += 1
    assert arrays, f"{got}: no arrays compared"
