"""Saved-tensor hooks that keep activations in host memory or on disk, exactly.

A holistic step saves far more activations than an accelerator (or this machine's RAM) holds.
These hooks move what autograd saves for backward elsewhere and bring it back bit for bit.
They avoid the pitfalls of ``torch.autograd.graph.save_on_cpu``:

- a tensor saved twice (e.g. one HRNet branch feeding several fuse convolutions) is stored once:
  saves are deduplicated by (storage, offset, shape, strides, dtype, version) while the storage
  is alive, so an address reused by a later tensor is never mistaken for the old one;
- strides are kept (channels_last survives, so backward kernels see the same layout and give the
  same bits); host buffers have the exact size, taken from a reusable pool, never a power of two;
- autograd switches its in-place (version counter) check off for any tensor that goes through
  saved-tensor hooks, whatever the unpack hook returns. We redo it ourselves: each record keeps a
  *version token*, an empty tensor that shares the saved tensor's version counter but not its
  storage, and unpack raises the same error autograd would if the tensor was modified in place;
- on backward the next records (in reverse save order) are prefetched.

Targets: :class:`HostOffload` (CUDA: pinned pool, copies on a side stream, events; CPU: a
pass-through, since the tensors already live in host memory, still deduplicated, metered and
version-checked) and :class:`DiskOffload` (memory-mapped files in a spill folder that is removed
on exit and on error; any device). Tensors under ``threshold_bytes`` and the parameters and
buffers of ``keep`` stay where they are.

The hooks must be active until backward has run (``with hooks: forward; backward``), because the
disk target removes its folder on exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from .pages import SPILL_PREFIX

__all__ = ["HostOffload", "DiskOffload", "PinnedPool", "DEFAULT_THRESHOLD", "default_spill_root"]

DEFAULT_THRESHOLD = 1 << 20  # 1 MiB: below this the bookkeeping costs more than it saves
_SPILL_ENV = "ELEGANTVIZ_SPILL_DIR"


def default_spill_root() -> str:
    """``$ELEGANTVIZ_SPILL_DIR`` or the system temp folder."""
    return os.environ.get(_SPILL_ENV) or tempfile.gettempdir()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _span(size: Iterable[int], stride: Iterable[int]) -> int:
    """Storage elements from the first to the last element of a strided tensor (strides >= 0)."""
    size, stride = list(size), list(stride)
    if any(s == 0 for s in size):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(size, stride))


def _flat_source(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A 1-D contiguous tensor holding ``t``'s elements, and the strides that rebuild ``t`` from it.

    Dense tensors (any dimension order, e.g. channels_last) and broadcasts are copied as the
    storage span they cover, so their strides survive exactly; a view with large gaps (span more
    than twice its elements) is compacted first, keeping its dimension order.
    """
    t = t.detach()
    span = _span(t.shape, t.stride())
    if span > 2 * t.numel():
        t = t.clone(memory_format=torch.preserve_format)
        span = _span(t.shape, t.stride())
    return t.as_strided((span,), (1,), t.storage_offset()), tuple(t.stride())


def _version_token(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor sharing ``t``'s version counter but not its storage.

    ``detach()`` shares the version counter; assigning ``.data`` swaps the storage and keeps the
    counter, so the token sees every later in-place change of ``t`` without keeping it alive.
    """
    token = t.detach()
    token.data = torch.empty(0, dtype=t.dtype, device=t.device)
    return token


def _movable(t: torch.Tensor) -> bool:
    return (
        t.layout == torch.strided
        and t.device.type in ("cpu", "cuda")
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
        and type(t) in (torch.Tensor, torch.nn.Parameter)
        and all(s >= 0 for s in t.stride())
    )


class PinnedPool:
    """Host buffers handed out by exact byte size and reused once released.

    ``save_on_cpu`` allocates a fresh pinned tensor per save, and the pinned allocator rounds
    each to a power of two; HRNet saves the same few shapes hundreds of times, so exact-size
    buckets reuse nearly everything. A released buffer carries the event of its last use; the
    next user orders its copy after that event. ``pin=None`` pins when CUDA is available.
    """

    def __init__(self, pin: bool | None = None, max_idle_bytes: int = 4 << 30):
        self.pin = torch.cuda.is_available() if pin is None else pin
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[int, list[tuple[torch.Tensor, Any]]] = {}
        self._lock = threading.Lock()
        self.idle_bytes = 0
        self.allocated_bytes = 0  # bytes ever allocated (not reused)
        self.allocations = 0
        self.reuses = 0

    def acquire(self, nbytes: int) -> tuple[torch.Tensor, Any]:
        """A uint8 buffer of exactly ``nbytes`` and the event (or None) its last use recorded."""
        with self._lock:
            bucket = self._idle.get(nbytes)
            if bucket:
                self.reuses += 1
                self.idle_bytes -= nbytes
                return bucket.pop()
            self.allocations += 1
            self.allocated_bytes += nbytes
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin), None

    def release(self, buf: torch.Tensor, event: Any = None) -> None:
        nbytes = buf.numel()
        with self._lock:
            if self.idle_bytes + nbytes > self.max_idle_bytes:
                return  # dropped; the allocator frees it
            self._idle.setdefault(nbytes, []).append((buf, event))
            self.idle_bytes += nbytes

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
            self.idle_bytes = 0


# ---------------------------------------------------------------------------------------------
# Payloads: where one record's bytes live. They never reference the record (finalizers).


class _Payload:
    where = "host"

    def release(self) -> None:  # called once, when the last save of the record is freed
        pass


class _Kept(_Payload):
    """The tensor stays where it is (small, a parameter, or a host target on CPU)."""

    def __init__(self, alias: torch.Tensor, meter: Any, counted: bool):
        self.alias = alias
        self.where = "device" if alias.is_cuda else "host"
        self.nbytes = _nbytes(alias) if counted else 0
        self.meter = meter
        if meter is not None and self.nbytes:
            meter.held(self.nbytes, self.where)

    def release(self) -> None:
        if self.meter is not None and self.nbytes:
            self.meter.held(-self.nbytes, self.where)
        self.alias = None


class _HostCopy(_Payload):
    """A copy in a pool buffer; on CUDA with the events that order its copies."""

    def __init__(self, buf: torch.Tensor, flat: torch.Tensor, event: Any, pool: PinnedPool, meter: Any):
        self.buf, self.flat, self.event, self.last_use = buf, flat, event, event
        self.pool, self.meter = pool, meter
        if meter is not None:
            meter.held(buf.numel(), "host")

    def release(self) -> None:
        if self.meter is not None:
            self.meter.held(-self.buf.numel(), "host")
        self.pool.release(self.buf, self.last_use)
        self.buf = self.flat = None


class _OnDisk(_Payload):
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


class _Saved:
    """One saved tensor as the graph holds it: metadata, version token, payload."""

    __slots__ = ("size", "stride", "dtype", "device", "nbytes", "version", "token", "payload", "index",
                 "storage_ref", "loaded", "cache", "unpacked", "prefetched", "__weakref__")

    def __init__(self, t: torch.Tensor, index: int):
        self.size, self.stride = tuple(t.shape), tuple(t.stride())
        self.dtype, self.device = t.dtype, t.device
        self.nbytes = _nbytes(t)
        self.version = t._version
        self.token = _version_token(t)
        self.index = index
        self.storage_ref: StorageWeakRef | None = None
        self.payload: _Payload | None = None
        self.loaded: Any = None  # a prefetched flat tensor (and event) waiting for its unpack
        self.cache: weakref.ref | None = None  # the last unpacked tensor, reused while alive
        self.unpacked = False
        self.prefetched = False

    def check_version(self) -> None:
        now = self.token._version
        if now != self.version:
            shape = "x".join(map(str, self.size))
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: [{self.dtype} [{shape}]] is at version {now}; expected version "
                f"{self.version} instead. (Checked by elegantviz.offload: autograd does not check "
                "tensors that go through saved-tensor hooks.)"
            )


class _Small:
    """A save kept in place without deduplication (under the threshold or a parameter)."""

    __slots__ = ("payload", "version", "__weakref__")

    def __init__(self, t: torch.Tensor, meter: Any, counted: bool):
        self.payload = _Kept(t.detach(), meter, counted)
        self.version = t._version
        weakref.finalize(self, self.payload.release)

    def unpack(self) -> torch.Tensor:
        alias = self.payload.alias
        if alias._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: [{alias.dtype} {list(alias.shape)}] is at version {alias._version}; "
                f"expected version {self.version} instead. (Checked by elegantviz.offload.)"
            )
        return alias.detach()


class _OffloadHooks(torch.autograd.graph.saved_tensors_hooks):
    """Shared machinery: threshold, deduplication, version checks, prefetch order, metering."""

    target = "host"

    def __init__(self, threshold_bytes: int = DEFAULT_THRESHOLD, meter: Any = None, prefetch: int = 2,
                 keep: torch.nn.Module | Iterable[torch.Tensor] | None = None):
        super().__init__(self._pack, self._unpack)
        self.threshold_bytes = int(threshold_bytes)
        self.meter = meter
        self.prefetch = int(prefetch)
        self._keep_source = keep
        self._keep_ptrs: set[int] = set()
        self._table: dict[tuple, weakref.ref] = {}
        self._order: list[weakref.ref] = []
        self._lock = threading.RLock()
        self.counts = {"packed": 0, "kept": 0, "stored": 0, "deduplicated": 0, "unpacked": 0,
                       "prefetched": 0, "prefetch_hits": 0}

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "_OffloadHooks":
        self._keep_ptrs = set()
        self._table, self._order = {}, []
        if self._keep_source is not None:
            src = self._keep_source
            tensors = list(src.parameters()) + list(src.buffers()) if isinstance(src, torch.nn.Module) else list(src)
            self._keep_ptrs = {t.untyped_storage().data_ptr() for t in tensors}
        self._open()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._close()

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    # -- target interface ----------------------------------------------------------------------
    def _store(self, rec: _Saved, t: torch.Tensor) -> _Payload:
        raise NotImplementedError

    def _load(self, rec: _Saved) -> torch.Tensor:
        """The flat tensor (on ``rec.device``) that ``as_strided(rec.size, rec.stride)`` rebuilds."""
        raise NotImplementedError

    def _start_prefetch(self, rec: _Saved) -> None:
        pass

    def _on_new(self, nbytes: int, small: bool) -> None:
        """Called once per distinct saved tensor (not for parameters): for measuring subclasses."""

    # -- hooks ---------------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        self.counts["packed"] += 1
        nbytes = _nbytes(t)
        if not _movable(t) or nbytes == 0:
            self.counts["kept"] += 1
            if self.meter is not None:
                self.meter.saved(nbytes)
            return _Small(t, self.meter, counted=True)
        storage = t.untyped_storage()
        if storage.data_ptr() in self._keep_ptrs:  # a parameter or buffer: it stays anyway
            self.counts["kept"] += 1
            return _Small(t, self.meter, counted=False)
        key = (storage.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device,
               t._version)
        with self._lock:
            ref = self._table.get(key)
            rec = ref() if ref is not None else None
            # A live storage at this address is the same storage: no other can own it meanwhile.
            if rec is not None and not rec.storage_ref.expired():
                self.counts["deduplicated"] += 1
                if self.meter is not None:
                    self.meter.deduplicated(nbytes)
                return rec
            rec = _Saved(t, len(self._order))
            rec.storage_ref = StorageWeakRef(storage)
            self._order.append(weakref.ref(rec))
            self._table[key] = weakref.ref(rec, lambda r, k=key, tbl=self._table: tbl.get(k) is r and tbl.pop(k))
        if self.meter is not None:
            self.meter.saved(nbytes)
        self._on_new(nbytes, nbytes < self.threshold_bytes)
        if nbytes < self.threshold_bytes:
            self.counts["kept"] += 1
            rec.payload = _Kept(t.detach(), self.meter, counted=True)
        else:
            self.counts["stored"] += 1
            t0 = time.perf_counter()
            rec.payload = self._store(rec, t)
            if self.meter is not None and not isinstance(rec.payload, _Kept):
                self.meter.moved(time.perf_counter() - t0)
        weakref.finalize(rec, rec.payload.release)
        return rec

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, _Small):
            return packed.unpack()
        rec: _Saved = packed
        rec.check_version()
        self.counts["unpacked"] += 1
        if isinstance(rec.payload, _Kept):
            rec.unpacked = True
            return rec.payload.alias.detach()
        cached = rec.cache() if rec.cache is not None else None
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        if rec.loaded is not None:
            self.counts["prefetch_hits"] += 1
        flat = self._load(rec)
        rec.loaded = None
        out = flat.as_strided(rec.size, rec.stride, 0)
        if self.meter is not None:
            self.meter.moved(time.perf_counter() - t0)
        rec.cache = weakref.ref(out)
        rec.unpacked = True
        self._prefetch_before(rec.index)
        return out

    def _prefetch_before(self, index: int) -> None:
        """Start loading the records saved just before ``index``: backward needs them next."""
        if self.prefetch <= 0:
            return
        started, i = 0, index - 1
        with self._lock:
            while i >= 0 and started < self.prefetch and index - i <= 8 * self.prefetch:
                rec = self._order[i]()
                i -= 1
                if rec is None or rec.unpacked or rec.prefetched or isinstance(rec.payload, _Kept):
                    continue
                rec.prefetched = True
                self._start_prefetch(rec)
                self.counts["prefetched"] += 1
                started += 1


class HostOffload(_OffloadHooks):
    """Keep saved CUDA activations in (pinned) host memory.

    On CUDA: each saved tensor over the threshold is copied into an exact-size pinned buffer from
    ``pool`` on a side stream (ordered after the producing kernels; ``record_stream`` keeps the
    device memory from being reused before the copy ends); unpack orders the copy back on the
    current stream after the copy-out event, and prefetches the next records on the side stream.

    On CPU the tensors already live in host memory, so this is a pass-through: nothing is copied,
    saves are still deduplicated, metered and version-checked, and gradients are bit-identical.
    ``copy=True`` forces the copying path on CPU (through the pool, with prefetch), which is how
    the tests cover the CUDA bookkeeping on a machine without a GPU.
    """

    target = "host"

    def __init__(self, threshold_bytes: int = DEFAULT_THRESHOLD, meter: Any = None, prefetch: int = 2,
                 keep: torch.nn.Module | Iterable[torch.Tensor] | None = None, pool: PinnedPool | None = None,
                 copy: bool = False):
        super().__init__(threshold_bytes, meter, prefetch, keep)
        self.pool = pool if pool is not None else PinnedPool()
        self.copy = copy
        self._side: dict[torch.device, Any] = {}

    def _side_stream(self, device: torch.device) -> Any:
        if device not in self._side:
            self._side[device] = torch.cuda.Stream(device)
        return self._side[device]

    def _store(self, rec: _Saved, t: torch.Tensor) -> _Payload:
        if not t.is_cuda and not self.copy:
            return _Kept(t.detach(), self.meter, counted=True)
        src, rec.stride = _flat_source(t)
        nbytes = _nbytes(src)
        buf, last_use = self.pool.acquire(nbytes)
        flat = buf.view(t.dtype)
        event = None
        if t.is_cuda:
            cur, side = torch.cuda.current_stream(t.device), self._side_stream(t.device)
            side.wait_stream(cur)  # the kernels producing t come first
            with torch.cuda.stream(side):
                if last_use is not None:
                    side.wait_event(last_use)  # the buffer's previous copy-in has finished
                flat.copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
            src.record_stream(side)  # t's memory is not reused before the copy ends
        else:
            flat.copy_(src)
        if self.meter is not None:
            self.meter.spilled(nbytes, "host")
        return _HostCopy(buf, flat, event, self.pool, self.meter)

    def _start_prefetch(self, rec: _Saved) -> None:
        p: _HostCopy = rec.payload  # type: ignore[assignment]
        if rec.device.type == "cuda":
            side = self._side_stream(rec.device)
            with torch.cuda.stream(side):
                side.wait_event(p.event)
                dev = torch.empty(p.flat.shape, dtype=rec.dtype, device=rec.device)
                dev.copy_(p.flat, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(side)
            p.last_use = ev
            rec.loaded = (dev, ev)
        else:
            rec.loaded = (p.flat.clone(), None)

    def _load(self, rec: _Saved) -> torch.Tensor:
        p: _HostCopy = rec.payload  # type: ignore[assignment]
        if rec.loaded is not None:
            dev, ev = rec.loaded
            if ev is not None:
                cur = torch.cuda.current_stream(rec.device)
                cur.wait_event(ev)
                dev.record_stream(cur)  # allocated on the side stream, used on this one
            return dev
        if rec.device.type == "cuda":
            cur = torch.cuda.current_stream(rec.device)
            cur.wait_event(p.event)
            dev = torch.empty(p.flat.shape, dtype=rec.dtype, device=rec.device)
            dev.copy_(p.flat, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(cur)
            p.last_use = ev  # the pool's next user of this buffer waits for this copy
            return dev
        return p.flat.clone()  # the buffer goes back to the pool; the graph must not share it


class DiskOffload(_OffloadHooks):
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

    def _open(self) -> None:
        self.spill_root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=self.spill_root))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        if self.max_inflight_bytes > 0:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="elegantviz-spill")

    def _close(self) -> None:
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

    def _store(self, rec: _Saved, t: torch.Tensor) -> _Payload:
        if self.folder is None:
            raise RuntimeError("DiskOffload used outside its context (the spill folder is gone)")
        src, rec.stride = _flat_source(t)
        host = src.cpu() if src.is_cuda else src
        nbytes = _nbytes(host)
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

    def _start_prefetch(self, rec: _Saved) -> None:
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

    def _load(self, rec: _Saved) -> torch.Tensor:
        p: _OnDisk = rec.payload  # type: ignore[assignment]
        p.wait()
        if not p.path.exists():
            raise RuntimeError(f"spilled activation {p.path} is gone: run backward inside the offload context")
        flat = torch.from_file(str(p.path), shared=False, size=p.nbytes // rec.dtype.itemsize, dtype=rec.dtype)
        return flat.to(rec.device) if rec.device.type != "cpu" else flat
