"""Resumable, blockwise writes of lazy arrays into zarr arrays.

Each finished block is recorded in a small ledger array under the store's ``_progress``
group *after* its chunks are written, so a killed run that is started again skips the
finished blocks and rewrites any block it was in the middle of. Memory stays at a few blocks
per worker thread, whatever the size of the array.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Sequence

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.storage import LocalStore
from tqdm.auto import tqdm

from elegantviz.io.schema import PROGRESS_GROUP


class BlockLedger:
    """Which spatial blocks of one target array are written; one tiny chunk per block."""

    def __init__(self, root: zarr.Group, target_path: str, grid: tuple[int, ...]):
        self.name = target_path.strip("/").replace("/", ".")
        progress = root.require_group(PROGRESS_GROUP)
        if self.name in progress and tuple(progress[self.name].shape) == grid:
            self.array = progress[self.name]
        else:
            self.array = progress.create_array(
                self.name, shape=grid, dtype="uint8", chunks=(1,) * len(grid), fill_value=0, overwrite=True
            )
        self.root = root

    def done(self) -> np.ndarray:
        return np.asarray(self.array[...]).astype(bool)

    def mark(self, index: tuple[int, ...]) -> None:
        self.array[index] = 1

    def remove(self) -> None:
        progress = self.root[PROGRESS_GROUP]
        if self.name in progress:
            del progress[self.name]
        if not list(progress.keys()):
            del self.root[PROGRESS_GROUP]


def drop_ledgers(root: zarr.Group, prefix: str) -> None:
    """Forget the finished blocks of every array under ``prefix`` (a part being rewritten or removed)."""
    if PROGRESS_GROUP not in root:
        return
    progress = root[PROGRESS_GROUP]
    stem = prefix.strip("/").replace("/", ".") + "."
    for key in list(progress.array_keys()):
        if key.startswith(stem):
            del progress[key]
    if not list(progress.keys()):
        del root[PROGRESS_GROUP]


def drop_partial_files(array: zarr.Array) -> None:
    """Delete the temporary files a killed writer left in a local array's folder: zarr's LocalStore
    writes each chunk to ``<chunk>.<uuid>.partial`` and renames it, so a SIGKILL mid-chunk leaves
    one behind (the chunk itself is rewritten, its ledger bit being unset)."""
    store = array.store_path.store
    if isinstance(store, LocalStore):
        folder = Path(store.root) / array.store_path.path
        for stray in folder.rglob("*.partial") if folder.is_dir() else ():
            stray.unlink(missing_ok=True)


def write_blockwise(
    source: da.Array,
    root: zarr.Group,
    target_path: str,
    desc: str,
    progress: bool = True,
    workers: int | None = None,
) -> None:
    """Write ``source`` into the existing array ``root[target_path]`` block by block.

    ``source`` is rechunked so that each of its blocks covers whole chunks of the target in
    the last two (spatial) axes and every leading axis in one piece. Blocks already in the
    ledger are skipped.
    """
    target = root[target_path]
    drop_partial_files(target)
    if tuple(source.shape) != tuple(target.shape):
        raise ValueError(f"{target_path}: source shape {source.shape} != target shape {target.shape}")
    tile = target.chunks[-2:]
    source = source.rechunk(tuple(source.shape[:-2]) + tuple(tile))
    grid = source.numblocks[-2:]
    ledger = BlockLedger(root, target_path, grid)
    done = ledger.done()
    todo = [ij for ij in itertools.product(*map(range, grid)) if not done[ij]]
    lead = (0,) * (source.ndim - 2)
    blocks = source.to_delayed(optimize_graph=True)

    def write(ij: tuple[int, int]) -> None:
        data = blocks[lead + ij].compute(scheduler="sync")
        y0, x0 = ij[0] * tile[0], ij[1] * tile[1]
        region = (Ellipsis, slice(y0, y0 + data.shape[-2]), slice(x0, x0 + data.shape[-1]))
        target[region] = data
        ledger.mark(ij)

    run_threaded(todo, write, desc, progress, total=done.size, workers=workers)
    ledger.remove()


def run_threaded(items, fn, desc: str, progress: bool = True, total: int | None = None,
                 workers: int | None = None) -> list:
    """Apply ``fn`` to each item in a small thread pool with a progress bar; results in order.

    At most two tasks per worker are in flight, so memory stays bounded and an interrupt
    stops between blocks. Each block's dask graph is computed synchronously in its thread.
    """
    items = list(items)
    total = len(items) if total is None else total
    workers = workers or min(4, os.cpu_count() or 1)
    results: list = [None] * len(items)
    bar = tqdm(total=total, initial=total - len(items), desc=desc, unit="block", disable=not progress, leave=False)

    def call(i):
        with dask.config.set(scheduler="sync"):
            results[i] = fn(items[i])

    with ThreadPoolExecutor(workers) as pool:
        queue = iter(range(len(items)))
        pending = {pool.submit(call, i) for i in itertools.islice(queue, workers * 2)}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()
                    bar.update(1)
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(call, nxt))
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()
    return results


def block_starts(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """The first index of every block along each axis of a dask array's ``chunks``."""
    return [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]


def map_blocks_collect(arrays: da.Array | Sequence[da.Array], fn, desc: str, progress: bool = True,
                       with_index: bool = False) -> list:
    """``fn`` of every block (e.g. counts, unique values), one block at a time, in block order.

    With several arrays (same chunks), ``fn`` gets one block of each; with ``with_index`` it
    also gets the block's index first.
    """
    many = not isinstance(arrays, da.Array)
    arrays = list(arrays) if many else [arrays]
    grids = [a.to_delayed(optimize_graph=True) for a in arrays]
    if any(g.shape != grids[0].shape for g in grids):
        raise ValueError(f"arrays have different block grids: {[g.shape for g in grids]}")
    index = list(np.ndindex(grids[0].shape))

    def one(idx):
        blocks = [g[idx].compute(scheduler="sync") for g in grids]
        args = blocks if many else blocks[:1]
        return fn(idx, *args) if with_index else fn(*args)

    return run_threaded(index, one, desc, progress)
