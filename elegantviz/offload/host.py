"""Host-memory target of the offload hooks: a pool of exact-size (pinned) buffers, side-stream copies."""

from __future__ import annotations

import threading
from typing import Any, Iterable

import torch

from .hooks import DEFAULT_THRESHOLD, OffloadHooks
from .records import Kept, Payload, SavedRecord, flat_source, tensor_nbytes

__all__ = ["HostOffload", "PinnedPool"]


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



class _HostCopy(Payload):
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



class HostOffload(OffloadHooks):
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

    def store(self, rec: SavedRecord, t: torch.Tensor) -> Payload:
        if not t.is_cuda and not self.copy:
            return Kept(t.detach(), self.meter, counted=True)
        src, rec.stride = flat_source(t)
        nbytes = tensor_nbytes(src)
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

    def start_prefetch(self, rec: SavedRecord) -> None:
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

    def load(self, rec: SavedRecord) -> torch.Tensor:
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

