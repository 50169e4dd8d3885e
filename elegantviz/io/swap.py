"""Put a part written elsewhere in the store in place of the old one, so readers never see a gap.

A re-predict writes its parts beside the old ones and then swaps each in. On a local store the
swap is one ``renameat2(RENAME_EXCHANGE)`` of the two folders (Linux 3.15+, ext4, xfs, btrfs,
tmpfs): a reader holding the old part (a napari layer's dask array) reads old chunks up to that
instant and new chunks after it, and never a missing chunk. Where the exchange is unsupported
two renames follow each other, leaving a gap of microseconds. Stores behind a URL (S3,
``memory://``) have no rename: the new part's objects are written over the old ones key by key
(each ``put`` is atomic), its metadata last, and only then are the old part's extra chunks
deleted, so a reader sees per chunk the old or the new value, never none.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from elegantviz.io.manifest import METADATA_FILE

AT_FDCWD = -100
RENAME_EXCHANGE = 2
UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV}


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap two folders in one system call; False when the system or filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def replace_local(staged: Path, final: Path) -> None:
    """``final`` becomes the folder at ``staged``; the old ``final`` is deleted afterwards."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        staged.rename(final)
        return
    if not exchange_folders(staged, final):
        old = staged.with_name(staged.name + ".old")
        final.rename(old)
        staged.rename(final)
        staged = old
    shutil.rmtree(staged)


def replace_keys(store, staged: str, final: str) -> None:
    """Copy the staged objects over the final ones (metadata last), then delete stale objects."""

    async def run() -> None:
        new = [k async for k in store.list_prefix(staged + "/")]
        old = [k async for k in store.list_prefix(final + "/")]
        # chunks before metadata, deepest metadata first: the part's own zarr.json (complete) is last
        order = sorted(new, key=lambda k: (k.endswith(METADATA_FILE), -k.count("/")))
        for key in order:
            value = await store.get(key, prototype=default_buffer_prototype())
            await store.set(final + key[len(staged):], value)
        kept = {final + k[len(staged):] for k in new}
        for key in old:
            if key not in kept:
                await store.delete(key)
        for key in new:
            await store.delete(key)

    sync(run())


def replace_group(root: zarr.Group, staged: str, final: str) -> None:
    """Put the group at path ``staged`` in place of the group at ``final`` (which may not exist);
    afterwards ``staged`` is gone. The two paths are relative to ``root``."""
    base = root.store_path.path.strip("/")
    staged, final = (f"{base}/{p}" if base else p for p in (staged, final))
    store = root.store
    if isinstance(store, LocalStore):
        replace_local(Path(store.root) / staged, Path(store.root) / final)
    else:
        replace_keys(store, staged, final)
