"""`elegantviz demo`: the main job end to end on a synthetic riverworld scene, no network needed."""

from __future__ import annotations

from pathlib import Path

from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.io.convert import convert_raster
from elegantviz.io.info import format_info, scene_info


def run_demo(workdir: Path, size: int = 1024, seed: int = 0, progress: bool = True) -> Path:
    """Synthesize a riverworld GeoTIFF, convert it into a scene store, describe it."""
    workdir.mkdir(parents=True, exist_ok=True)
    tif = workdir / "riverworld.tif"
    print(f"[1/2] synthesizing a {size} x {size} riverworld scene as GeoTIFF: {tif}")
    image, mask = synthesize_riverworld(tif, height=size, seed=seed, overwrite=True, progress=progress)
    store = workdir / "riverworld.zarr"
    print(f"[2/2] converting it into a scene store: {store}")
    result = convert_raster(image, store, mask=mask, classes="riverworld", overwrite=True, progress=progress)
    print(format_info(scene_info(result.scene, progress=progress)))
    print(f"\nThe scene store is {store.resolve()}")
    return store
