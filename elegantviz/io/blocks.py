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

import dask
import dask.array as da
import numpy as np
import zarr
from tqdm.auto import tqdm

PROGRESS_GROUP = "_progress"


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

    bar = tqdm(total=len(done.ravel()), initial=len(done.ravel()) - len(todo), desc=desc, unit="block",
               disable=not progress, leave=False)
    workers = workers or min(4, os.cpu_count() or 1)
    # Blocks run in our own threads, each computing its small graph synchronously: the pool
    # bounds memory and lets an interrupt stop between blocks.
    with dask.config.set(scheduler="sync"), ThreadPoolExecutor(workers) as pool:
        pending: set = set()
        queue = iter(todo)
        try:
            for ij in itertools.islice(queue, workers * 2):
                pending.add(pool.submit(write, ij))
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()
                    bar.update(1)
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(write, nxt))
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()
    ledger.remove()
