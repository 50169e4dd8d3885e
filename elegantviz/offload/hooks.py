"""The public base of the saved-tensor hooks: threshold, deduplication, version checks, prefetch.

A holistic step saves far more activations than an accelerator (or this machine's RAM) holds.
Subclasses of :class:`OffloadHooks` move what autograd saves for backward elsewhere
(:class:`.host.HostOffload`, :class:`.disk.DiskOffload`) and bring it back bit for bit. They
avoid the pitfalls of ``torch.autograd.graph.save_on_cpu``:

- a tensor saved twice (e.g. one HRNet branch feeding several fuse convolutions) is stored once:
  saves are deduplicated by (storage, offset, shape, strides, dtype, version) while the storage
  is alive, so an address reused by a later tensor is never mistaken for the old one;
- strides are kept (channels_last survives, so backward kernels see the same layout and give the
  same bits);
- autograd switches its in-place (version counter) check off for any tensor that goes through
  saved-tensor hooks, whatever the unpack hook returns. We redo it ourselves: each record keeps a
  *version token*, an empty tensor that shares the saved tensor's version counter but not its
  storage, and unpack raises the same error autograd would if the tensor was modified in place;
- on backward the next records (in reverse save order) are prefetched.

Tensors under ``threshold_bytes`` and the parameters and buffers of ``keep`` stay where they are.
The hooks must be active until backward has run (``with hooks: forward; backward``), because the
disk target removes its folder on exit.

A subclass implements :meth:`OffloadHooks.store` and :meth:`OffloadHooks.load`, and may
implement ``start_prefetch``, ``open``, ``close`` and ``on_new``.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from .records import Kept, Payload, SavedRecord, SmallSave, movable, tensor_nbytes

__all__ = ["OffloadHooks", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 1 << 20  # 1 MiB: below this the bookkeeping costs more than it saves


class OffloadHooks(torch.autograd.graph.saved_tensors_hooks):
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
    def __enter__(self) -> "OffloadHooks":
        self._keep_ptrs = set()
        self._table, self._order = {}, []
        if self._keep_source is not None:
            src = self._keep_source
            tensors = list(src.parameters()) + list(src.buffers()) if isinstance(src, torch.nn.Module) else list(src)
            self._keep_ptrs = {t.untyped_storage().data_ptr() for t in tensors}
        self.open()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.close()

    def open(self) -> None:
        """Called on entry, before the hooks are installed (e.g. to make a spill folder)."""

    def close(self) -> None:
        """Called on exit, also on error, after the hooks are removed."""

    # -- target interface ----------------------------------------------------------------------
    def store(self, rec: SavedRecord, t: torch.Tensor) -> Payload:
        """Where ``t`` (over the threshold) goes; may set ``rec.stride`` to that of the stored copy."""
        raise NotImplementedError

    def load(self, rec: SavedRecord) -> torch.Tensor:
        """The flat tensor (on ``rec.device``) that ``as_strided(rec.size, rec.stride)`` rebuilds."""
        raise NotImplementedError

    def start_prefetch(self, rec: SavedRecord) -> None:
        """Start bringing ``rec`` back; backward unpacks it soon (the default does nothing)."""

    def on_new(self, nbytes: int, small: bool) -> None:
        """Called once per distinct saved tensor (not for parameters): for measuring subclasses."""

    # -- hooks ---------------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        self.counts["packed"] += 1
        nbytes = tensor_nbytes(t)
        if not movable(t) or nbytes == 0:
            self.counts["kept"] += 1
            if self.meter is not None:
                self.meter.saved(nbytes)
            return SmallSave(t, self.meter, counted=True)
        storage = t.untyped_storage()
        if storage.data_ptr() in self._keep_ptrs:  # a parameter or buffer: it stays anyway
            self.counts["kept"] += 1
            return SmallSave(t, self.meter, counted=False)
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
            rec = SavedRecord(t, len(self._order))
            rec.storage_ref = StorageWeakRef(storage)
            self._order.append(weakref.ref(rec))
            self._table[key] = weakref.ref(rec, lambda r, k=key, tbl=self._table: tbl.get(k) is r and tbl.pop(k))
        if self.meter is not None:
            self.meter.saved(nbytes)
        self.on_new(nbytes, nbytes < self.threshold_bytes)
        if nbytes < self.threshold_bytes:
            self.counts["kept"] += 1
            rec.payload = Kept(t.detach(), self.meter, counted=True)
        else:
            self.counts["stored"] += 1
            t0 = time.perf_counter()
            rec.payload = self.store(rec, t)
            if self.meter is not None and not isinstance(rec.payload, Kept):
                self.meter.moved(time.perf_counter() - t0)
        weakref.finalize(rec, rec.payload.release)
        return rec

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, SmallSave):
            return packed.unpack()
        rec: SavedRecord = packed
        rec.check_version()
        self.counts["unpacked"] += 1
        if isinstance(rec.payload, Kept):
            rec.unpacked = True
            return rec.payload.alias.detach()
        cached = rec.cache() if rec.cache is not None else None
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        if rec.loaded is not None:
            self.counts["prefetch_hits"] += 1
        flat = self.load(rec)
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
                if rec is None or rec.unpacked or rec.prefetched or isinstance(rec.payload, Kept):
                    continue
                rec.prefetched = True
                self.start_prefetch(rec)
                self.counts["prefetched"] += 1
                started += 1

