"""What the offload hooks keep per saved tensor: its metadata, version token and payload.

A payload says where one record's bytes live (kept in place, in a host buffer, in a file); it
never references its record, so that a finalizer on the record can release it. The helpers
copy a tensor's storage span so that its strides survive a round trip exactly.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef

__all__ = ["tensor_nbytes", "storage_span", "flat_source", "version_token", "movable", "Payload", "Kept",
           "SavedRecord", "SmallSave"]


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def storage_span(size: Iterable[int], stride: Iterable[int]) -> int:
    """Storage elements from the first to the last element of a strided tensor (strides >= 0)."""
    size, stride = list(size), list(stride)
    if any(s == 0 for s in size):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(size, stride))


def flat_source(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A 1-D contiguous tensor holding ``t``'s elements, and the strides that rebuild ``t`` from it.

    Dense tensors (any dimension order, e.g. channels_last) and broadcasts are copied as the
    storage span they cover, so their strides survive exactly; a view with large gaps (span more
    than twice its elements) is compacted first, keeping its dimension order.
    """
    t = t.detach()
    span = storage_span(t.shape, t.stride())
    if span > 2 * t.numel():
        t = t.clone(memory_format=torch.preserve_format)
        span = storage_span(t.shape, t.stride())
    return t.as_strided((span,), (1,), t.storage_offset()), tuple(t.stride())


def version_token(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor sharing ``t``'s version counter but not its storage.

    ``detach()`` shares the version counter; assigning ``.data`` swaps the storage and keeps the
    counter, so the token sees every later in-place change of ``t`` without keeping it alive.
    """
    token = t.detach()
    token.data = torch.empty(0, dtype=t.dtype, device=t.device)
    return token


def movable(t: torch.Tensor) -> bool:
    return (
        t.layout == torch.strided
        and t.device.type in ("cpu", "cuda")
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
        and type(t) in (torch.Tensor, torch.nn.Parameter)
        and all(s >= 0 for s in t.stride())
    )



class Payload:
    where = "host"

    def release(self) -> None:  # called once, when the last save of the record is freed
        pass


class Kept(Payload):
    """The tensor stays where it is (small, a parameter, or a host target on CPU)."""

    def __init__(self, alias: torch.Tensor, meter: Any, counted: bool):
        self.alias = alias
        self.where = "device" if alias.is_cuda else "host"
        self.nbytes = tensor_nbytes(alias) if counted else 0
        self.meter = meter
        if meter is not None and self.nbytes:
            meter.held(self.nbytes, self.where)

    def release(self) -> None:
        if self.meter is not None and self.nbytes:
            self.meter.held(-self.nbytes, self.where)
        self.alias = None



class SavedRecord:
    """One saved tensor as the graph holds it: metadata, version token, payload."""

    __slots__ = ("size", "stride", "dtype", "device", "nbytes", "version", "token", "payload", "index",
                 "storage_ref", "loaded", "cache", "unpacked", "prefetched", "__weakref__")

    def __init__(self, t: torch.Tensor, index: int):
        self.size, self.stride = tuple(t.shape), tuple(t.stride())
        self.dtype, self.device = t.dtype, t.device
        self.nbytes = tensor_nbytes(t)
        self.version = t._version
        self.token = version_token(t)
        self.index = index
        self.storage_ref: StorageWeakRef | None = None
        self.payload: Payload | None = None
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


class SmallSave:
    """A save kept in place without deduplication (under the threshold or a parameter)."""

    __slots__ = ("payload", "version", "__weakref__")

    def __init__(self, t: torch.Tensor, meter: Any, counted: bool):
        self.payload = Kept(t.detach(), meter, counted)
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

