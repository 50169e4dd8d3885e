"""Disk target of the offload hooks: memory-mapped files in a private spill folder, one writer thread."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import torch

from .hooks import DEFAULT_THRESHOLD, OffloadHooks
from ..pages import SPILL_PREFIX
from .records import Payload, SavedRecord, flat_source, tensor_nbytes

__all__ = ["DiskOffload", "default_spill_root"]

_SPILL_ENV = "ELEGANTVIZ_SPILL_DIR"


def default_spill_root() -> str:
    """``$ELEGANTVIZ_SPILL_DIR`` or the system temp folder."""
    return os.environ.get(_SPILL_ENV) or tempfile.gettempdir()



class _OnDisk(Payload):
    """A file in the spill folder, written now or by the writer thread (``future``)."""

    where = "disk"

    def __init__(self, path: Path, nbytes: int, meter: Any):
        self.path, self.nbytes, self.meter = path, nbytes, meter
        self.future: Future | None = None
        self.pending_bytes = 0

    def wait(self) -> None:
        if self.future is not None:
            self.future.result()

    def release(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.add_done_callback(lambda _f, p=self.path: _unlink(p))
        else:
            _unlink(self.path)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class DiskOffload(OffloadHooks):
    """Spill saved activations to memory-mapped files in a private folder under ``spill_dir``.

    Works on any device (CUDA tensors are copied to host first). Files are written by one writer
    thread with at most ``max_inflight_bytes`` waiting (0: write in the caller), read back through
    ``torch.from_file`` (a private mapping: backward reads pages straight from the page cache),
    and prefetched with ``posix_fadvise(WILLNEED)``. A file is deleted when the graph frees its
    last save; the folder is removed on exit, also on error, and at interpreter exit.
    """

    target = "disk"

    def __init__(self, spill_dir: str | os.PathLike | None = None, threshold_bytes: int = DEFAULT_THRESHOLD,
                 meter: Any = None, prefetch: int = 2, keep: torch.nn.Module | Iterable[torch.Tensor] | None = None,
                 max_inflight_bytes: int = 64 << 20):
        super().__init__(threshold_bytes, meter, prefetch, keep)
        self.spill_root = Path(spill_dir) if spill_dir is not None else Path(default_spill_root())
        self.max_inflight_bytes = int(max_inflight_bytes)
        self.folder: Path | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[_OnDisk] = deque()
        self._inflight = 0
        self._finalizer: weakref.finalize | None = None

    def open(self) -> None:
        self.spill_root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=self.spill_root))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        if self.max_inflight_bytes > 0:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="elegantviz-spill")

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
        finally:
            self._writer = None
            self._pending.clear()
            self._inflight = 0
            if self._finalizer is not None:
                self._finalizer()  # removes the folder now
            self.folder = None

    def _write(self, p: _OnDisk, host: torch.Tensor) -> None:
        t0 = time.perf_counter()
        host.view(torch.uint8).numpy().tofile(p.path)
        if self.meter is not None:
            self.meter.moved(time.perf_counter() - t0)
            self.meter.spilled(p.nbytes, "disk")
            if p.pending_bytes:
                self.meter.held(-p.pending_bytes, "host")

    def _wait_inflight(self, incoming: int) -> None:
        while self._pending and self._inflight + incoming > self.max_inflight_bytes:
            p = self._pending.popleft()
            p.wait()
            self._inflight -= p.pending_bytes

    def store(self, rec: SavedRecord, t: torch.Tensor) -> Payload:
        if self.folder is None:
            raise RuntimeError("DiskOffload used outside its context (the spill folder is gone)")
        src, rec.stride = flat_source(t)
        host = src.cpu() if src.is_cuda else src
        nbytes = tensor_nbytes(host)
        p = _OnDisk(self.folder / f"{rec.index:06d}.bin", nbytes, self.meter)
        if self._writer is None or nbytes > self.max_inflight_bytes:
            # A tensor over the in-flight limit is written now: queued, it would stay in memory
            # next to the maps the following layers allocate (3 GB each at 6800x7200).
            self._wait_inflight(self.max_inflight_bytes)
            self._write(p, host)
            return p
        self._wait_inflight(nbytes)
        p.pending_bytes = nbytes
        if self.meter is not None:
            self.meter.held(nbytes, "host")  # in RAM until written
        p.future = self._writer.submit(self._write, p, host)
        self._pending.append(p)
        self._inflight += nbytes
        return p

    def start_prefetch(self, rec: SavedRecord) -> None:
        p: _OnDisk = rec.payload  # type: ignore[assignment]
        if p.future is not None and not p.future.done() or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(p.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
        rec.loaded = True

    def load(self, rec: SavedRecord) -> torch.Tensor:
        p: _OnDisk = rec.payload  # type: ignore[assignment]
        p.wait()
        if not p.path.exists():
            raise RuntimeError(f"spilled activation {p.path} is gone: run backward inside the offload context")
        flat = torch.from_file(str(p.path), shared=False, size=p.nbytes // rec.dtype.itemsize, dtype=rec.dtype)
        return flat.to(rec.device) if rec.device.type != "cpu" else flat
