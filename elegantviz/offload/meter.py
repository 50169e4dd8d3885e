"""Per-step memory figures: peak device memory, peak RSS, saved-activation bytes, spill, move time.

The offload hooks report into a :class:`MemoryMeter` (bytes held, spilled, seconds moving), so the
figures that matter for a holistic step are measured where they happen rather than guessed from a
clock or from the process total alone. Peak RSS is read from the kernel (``VmHWM``, reset through
``/proc/self/clear_refs``) when that works, else from a sampling thread.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["MemoryMeter", "StepStats", "LiveTensorBytes", "current_rss", "peak_rss"]

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes (``VmRSS``, else psutil)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int | None:
    """Peak RSS since the last reset (``VmHWM``), or None where the kernel does not say."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler(threading.Thread):
    """Polls RSS; the fallback where ``VmHWM`` cannot be reset, and a cross-check where it can."""

    def __init__(self, interval: float):
        super().__init__(daemon=True, name="elegantviz-rss-sampler")
        self.interval = interval
        self.peak = current_rss()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, current_rss())
        return self.peak


@dataclass
class StepStats:
    """What one step cost. Bytes are bytes; ``held_*`` are peaks of saved activations kept in memory."""

    seconds: float = 0.0
    peak_rss_bytes: int = 0
    start_rss_bytes: int = 0
    peak_device_bytes: int | None = None  # CUDA only
    saved_bytes: int = 0  # unique bytes handed to the hooks (after deduplication)
    dedup_bytes: int = 0  # bytes not stored again because the same tensor was saved twice
    held_host_peak_bytes: int = 0  # saved activations held in host RAM (kept CPU tensors, host copies)
    held_device_peak_bytes: int = 0  # saved activations kept on the accelerator
    spilled_host_bytes: int = 0
    spilled_disk_bytes: int = 0
    move_seconds: float = 0.0  # time spent copying to/from host or disk (pack + unpack, wall)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


class MemoryMeter:
    """Counters the hooks update, and ``with meter.step():`` to turn them into :class:`StepStats`.

    Usage::

        meter = MemoryMeter(device)
        with meter.step():
            with policy.apply(model, meter=meter):
                loss = criterion(model(x), y)
                loss.backward()
        log(meter.as_dict())

    Thread-safe: the hooks call it from the forward, backward and writer threads.
    """

    def __init__(self, device: torch.device | str | None = None, sample_interval: float = 0.01):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.sample_interval = sample_interval
        self.history: list[StepStats] = []
        self._lock = threading.Lock()
        self._reset_counters()

    def _reset_counters(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._held = {"host": 0, "device": 0}
            self._held_peak = {"host": 0, "device": 0}
            self._saved = 0
            self._dedup = 0
            self._spilled = {"host": 0, "disk": 0}
            self._move = 0.0

    # -- called by the hooks -------------------------------------------------------------------
    def held(self, nbytes: int, where: str) -> None:
        """``nbytes`` (negative to release) of saved activations now held in ``where``."""
        with self._lock:
            self._held[where] += nbytes
            if self._held[where] > self._held_peak[where]:
                self._held_peak[where] = self._held[where]

    def saved(self, nbytes: int) -> None:
        with self._lock:
            self._saved += nbytes

    def deduplicated(self, nbytes: int) -> None:
        with self._lock:
            self._dedup += nbytes

    def spilled(self, nbytes: int, target: str) -> None:
        with self._lock:
            self._spilled[target] += nbytes

    def moved(self, seconds: float) -> None:
        with self._lock:
            self._move += seconds

    # -- live values -----------------------------------------------------------------------------
    @property
    def held_now(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

    def snapshot(self) -> dict[str, float]:
        """The counters since the last step began (or since creation), without a step."""
        with self._lock:
            return {"saved_bytes": self._saved, "dedup_bytes": self._dedup,
                    "held_host_peak_bytes": self._held_peak["host"],
                    "held_device_peak_bytes": self._held_peak["device"],
                    "spilled_host_bytes": self._spilled["host"], "spilled_disk_bytes": self._spilled["disk"],
                    "move_seconds": self._move}

    # -- step API --------------------------------------------------------------------------------
    @contextmanager
    def step(self, **extra: object) -> Iterator[StepStats]:
        """Measure one step; the stats object is filled in on exit (also appended to ``history``)."""
        stats = StepStats(extra=dict(extra))
        with self._lock:
            # Tensors still held from an earlier step stay counted; only peaks and totals restart.
            self._held_peak = dict(self._held)
            self._saved = self._dedup = 0
            self._spilled = {"host": 0, "disk": 0}
            self._move = 0.0
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        hwm_ok = _reset_peak_rss()
        stats.start_rss_bytes = current_rss()
        sampler = _RssSampler(self.sample_interval)
        sampler.start()
        t0 = time.perf_counter()
        try:
            yield stats
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            stats.seconds = time.perf_counter() - t0
            sampled = sampler.stop()
            hwm = peak_rss() if hwm_ok else None
            stats.peak_rss_bytes = max(sampled, hwm or 0)
            if cuda:
                stats.peak_device_bytes = int(torch.cuda.max_memory_allocated(self.device))
            for key, value in self.snapshot().items():
                setattr(stats, key, value)
            self.history.append(stats)

    @property
    def last(self) -> StepStats | None:
        return self.history[-1] if self.history else None

    def as_dict(self) -> dict:
        """The last step's figures as a flat dict for a JSONL log (empty before the first step)."""
        return self.last.as_dict() if self.last else {}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the CPU tensor storages created while active (forward, hooks and backward).

    CPU tensors have no allocator statistics; this counts every op's output storages and drops
    them when their storage dies (swept every few ops and whenever the peak would grow by
    over 1 %, so the peak is exact to 1 %).
    Parameter gradients are left out (a fixed cost the planner adds itself): counted, they make
    the peak of a small dry run a poor guide to how it grows with pixels.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = self.peak = 0
        self._ops = 0
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._handles: list[Any] = []

    def __enter__(self) -> "LiveTensorBytes":
        self._handles = [p.register_post_accumulate_grad_hook(self._forget_grad) for p in self._params]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        super().__exit__(*exc)

    def _forget_grad(self, p: torch.Tensor) -> None:
        entry = self.live.pop(p.grad.untyped_storage().data_ptr(), None)
        if entry is not None:
            self.now -= entry[1]

    def _sweep(self) -> None:
        for ptr in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(ptr)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._ops += 1
        if self._ops % 8 == 0:
            self._sweep()
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided:
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            entry = self.live.get(ptr)
            if nbytes == 0 or (entry is not None and not entry[0].expired()):
                continue
            if entry is not None:
                self.now -= entry[1]
            self.live[ptr] = (StorageWeakRef(storage), nbytes)
            self.now += nbytes
            if self.now > self.peak * 1.01:
                self._sweep()  # a new peak counts what is still alive (to within 1 %: sweeping at
            self.peak = max(self.peak, self.now)  # every new peak made a step 6x slower)
        return out
