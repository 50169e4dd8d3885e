"""Sample data: a small riverworld scene, synthesized once into the user's cache, and predicted
when a checkpoint is configured.

Configure the checkpoint with ``$ELEGANTVIZ_CHECKPOINT=/path/to/best.pt`` or by copying it to
``<cache root>/checkpoint.pt`` (cache root: ``$ELEGANTVIZ_CACHE``, else
``$XDG_CACHE_HOME/elegantviz``, else ``~/.cache/elegantviz``; see ``cache``). The sample then
also holds pred, hard, error, margin, boundary, attention and the keys and queries the
attention probe reads. The first open predicts (seconds with a CPU-sized model); later opens
reuse the cached store, keyed by the checkpoint's path, size and modification time.

Rendering is deterministic in (size, seed), so the cache is keyed by both. Every store is
built under a temporary name and renamed when finished: a half-written sample is never taken
for a finished one.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

from elegantviz.io.schema import PRED

from .cache import cache_root, configured_checkpoint

SAMPLE_SIZE = 512
SAMPLE_SEED = 0


def cache_dir() -> Path:
    return cache_root() / "samples"


def _finished(path: Path, needs: str | None = None) -> bool:
    from elegantviz.errors import ElegantvizError
    from elegantviz.io.store import open_scene

    try:
        scene = open_scene(path)
    except ElegantvizError:
        return False
    return needs is None or needs in scene.labels


def _build_once(final: Path, build: Callable[[Path], None], needs: str | None = None) -> Path:
    """``final`` if it is a finished store, else ``build(tmp)`` and rename tmp to ``final``."""
    if final.exists():
        if _finished(final, needs):
            return final
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".partial-")) / final.name
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first; theirs is as good as ours
            pass
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return final


def riverworld_store(size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> Path:
    """Path of the cached riverworld sample store, synthesizing it on first use."""
    from elegantviz.data.synthetic import synthesize_riverworld

    return _build_once(cache_dir() / f"riverworld-{size}-seed{seed}.zarr",
                       lambda tmp: synthesize_riverworld(tmp, height=size, seed=seed, tile=256, progress=False))


def checkpoint_key(checkpoint: Path) -> str:
    """Short id of a checkpoint file: a retrained checkpoint at the same path gets a new one."""
    stat = checkpoint.stat()
    text = f"{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def predicted_store(checkpoint: Path, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> Path:
    """Path of the riverworld sample predicted with ``checkpoint``, predicting on first use."""
    from .prediction import run_prediction

    plain = riverworld_store(size, seed)

    def build(tmp: Path) -> None:
        shutil.copytree(plain, tmp)
        run_prediction(str(checkpoint), str(tmp))  # in its own process: see prediction

    name = f"riverworld-{size}-seed{seed}-pred-{checkpoint_key(checkpoint)}.zarr"
    return _build_once(cache_dir() / name, build, needs=PRED)


def riverworld_sample() -> list[tuple]:
    """npe2 sample-data command: the riverworld scene's layers, with prediction when it can."""
    from .reader import read_scene

    path = riverworld_store(SAMPLE_SIZE, SAMPLE_SEED)
    checkpoint = configured_checkpoint()
    if checkpoint is not None:
        try:
            path = predicted_store(checkpoint, SAMPLE_SIZE, SAMPLE_SEED)
        except Exception as exc:  # a checkpoint for other bands, or no checkpoint at all: the scene still helps
            warnings.warn(f"riverworld sample shown without prediction ({checkpoint}): "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
    return read_scene(str(path))
