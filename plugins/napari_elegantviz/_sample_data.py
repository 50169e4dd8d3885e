"""Sample data: a small riverworld scene, synthesized once into the user's cache.

Rendering is deterministic in (size, seed), so the cache is keyed by both and written to a
temporary name first: a half-written sample is never taken for a finished one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SAMPLE_SIZE = 512
SAMPLE_SEED = 0


def cache_dir() -> Path:
    base = os.environ.get("ELEGANTVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "elegantviz"
    )
    return Path(base) / "samples"


def riverworld_store(size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> Path:
    """Path of the cached riverworld sample store, synthesizing it on first use."""
    from elegantviz.data.synthetic import synthesize_riverworld
    from elegantviz.errors import ElegantvizError
    from elegantviz.io.store import open_scene

    final = cache_dir() / f"riverworld-{size}-seed{seed}.zarr"
    if final.exists():
        try:
            open_scene(final)
            return final
        except ElegantvizError:
            shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".partial-")) / final.name
    synthesize_riverworld(tmp, height=size, seed=seed, tile=256, progress=False)
    try:
        tmp.rename(final)
    except OSError:  # another process finished first; theirs is as good as ours
        pass
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return final


def riverworld_sample() -> list[tuple]:
    """npe2 sample-data command: the riverworld scene's layers."""
    from ._reader import read_scene

    return read_scene(str(riverworld_store()))
