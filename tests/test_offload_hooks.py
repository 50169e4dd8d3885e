"""Saved-tensor hooks: exact round trips, deduplication, strides, the in-place check, pool, spill folder."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from elegantviz.offload import DiskOffload, HostOffload, MemoryMeter, PinnedPool
from elegantviz.offload.records import flat_source, storage_span, version_token


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TARGETS = {
    "host": lambda **kw: HostOffload(**kw),  # CPU: pass-through
    "host-copy": lambda **kw: HostOffload(copy=True, **kw),  # CPU: the CUDA bookkeeping (pool, prefetch)
    "disk-sync": lambda tmp, **kw: DiskOffload(tmp, max_inflight_bytes=0, **kw),
    "disk-async": lambda tmp, **kw: DiskOffload(tmp, **kw),
}


def make(name: str, tmp_path, **kw):
    f = TARGETS[name]
    return f(tmp_path, **kw) if name.startswith("disk") else f(**kw)


def grads_of(fn, *leaves):
    for t in leaves:
        t.grad = None
    fn().backward()
    return [t.grad.clone() for t in leaves]


@pytest.mark.parametrize("name", list(TARGETS))
def test_round_trip_is_exact_and_keeps_channels_last(name, tmp_path):
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    x = torch.randn(2, 4, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()

    def f():
        y = torch.nn.functional.conv2d(x, w, padding=1)
        z = torch.nn.functional.conv2d(torch.relu(y), w.transpose(0, 1).flip(-1, -2), padding=1)
        return (z * z.sin()).sum()

    ref = grads_of(f, x, w)
    seen = []
    hooks = make(name, tmp_path, threshold_bytes=0)
    with hooks:
        y = torch.nn.functional.conv2d(x, w, padding=1)
        loss = (y * y.sin()).sum()
        node = loss.grad_fn.next_functions[0][0]  # MulBackward saves y (channels_last)
        seen.append(node._saved_self)
        got = grads_of(f, x, w)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert hooks.counts["stored"] > 0


@pytest.mark.parametrize("name", list(TARGETS))
def test_in_place_modification_of_a_saved_tensor_still_raises(name, tmp_path):
    a = torch.randn(64, 64, requires_grad=True)
    with make(name, tmp_path, threshold_bytes=0):
        x = a * 2
        y = x.sin()  # saves x
        x.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
    # small tensors (kept in place) are checked too
    with make(name, tmp_path, threshold_bytes=1 << 30):
        x = a * 2
        y = x.sin()
        x.mul_(3)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_in_place_through_a_view_after_the_tensor_is_gone(tmp_path):
    a = torch.randn(4096, requires_grad=True)
    with DiskOffload(tmp_path, threshold_bytes=0, max_inflight_bytes=0):
        x = a * 2
        y = x.exp()  # saves its output
        v = y[10:20]
        del x
        v.zero_()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_version_token_shares_the_counter_not_the_storage():
    t = torch.randn(1000)
    tok = version_token(t)
    assert tok.untyped_storage().nbytes() == 0
    t.add_(1)
    assert tok._version == t._version == 1


@pytest.mark.parametrize("name", ["host-copy", "disk-sync", "disk-async"])
def test_a_tensor_saved_twice_is_stored_once(name, tmp_path):
    a = torch.randn(256, 256, requires_grad=True)
    meter = MemoryMeter()
    with meter.step():
        with make(name, tmp_path, threshold_bytes=1024, meter=meter) as hooks:
            x = a * 2
            y = (x * x).sum()  # x saved twice by one mul
            z = x.sin().sum() + x.cos().sum()  # and twice more
            (y + z).backward()
    assert hooks.counts["deduplicated"] >= 3
    s = meter.last
    spilled = s.spilled_host_bytes + s.spilled_disk_bytes
    assert spilled == x.numel() * 4  # one copy of x
    assert s.dedup_bytes == 3 * x.numel() * 4
    assert torch.allclose(a.grad, 2 * 2 * 2 * a + 2 * torch.cos(2 * a) - 2 * torch.sin(2 * a), atol=1e-4)


def test_a_reused_address_is_not_mistaken_for_the_old_tensor(tmp_path):
    """Dedup must check the storage is alive: a freed tensor's address is soon reused."""
    a = torch.randn(512, 512, requires_grad=True)
    ptrs = []
    with DiskOffload(tmp_path, threshold_bytes=0, max_inflight_bytes=0) as hooks:
        outs = []
        for k in range(4):
            x = a.detach() * (k + 1)  # saved by the mul below, then freed once spilled
            ptrs.append(x.data_ptr())
            outs.append((x * a).sum())
            del x
        sum(outs).backward()
    assert hooks.counts["deduplicated"] == 0
    assert torch.allclose(a.grad, 10 * a)


def test_strided_sources_rebuild_exactly():
    base = torch.randn(6, 10, 12)
    for t in (base, base.transpose(0, 2), base[:, ::3], base[:, :1].expand(6, 7, 12), base.permute(2, 0, 1)):
        flat, stride = flat_source(t)
        assert flat.is_contiguous() and flat.dim() == 1
        back = flat.clone().as_strided(t.shape, stride, 0)
        assert torch.equal(back, t)
        if storage_span(t.shape, t.stride()) <= 2 * t.numel():  # dense, broadcast: strides kept exactly
            assert stride == t.stride()


def test_threshold_keeps_small_tensors_in_place(tmp_path):
    a = torch.randn(16, requires_grad=True)
    b = torch.randn(100_000, requires_grad=True)
    with DiskOffload(tmp_path, threshold_bytes=4096, max_inflight_bytes=0) as hooks:
        ((a * a).sum() + (b * b).sum()).backward()
    assert hooks.counts["stored"] == 1 and hooks.counts["kept"] >= 1


def test_parameters_stay_in_place(tmp_path):
    lin = torch.nn.Linear(512, 512)
    x = torch.randn(64, 512, requires_grad=True)
    with DiskOffload(tmp_path, threshold_bytes=0, max_inflight_bytes=0, keep=lin) as hooks:
        lin(x).sum().backward()
    assert hooks.counts["stored"] == 1  # x only, not the weight


def test_pool_reuses_exact_sizes_without_rounding():
    pool = PinnedPool(pin=False)
    b1, ev = pool.acquire(1000)
    assert b1.numel() == 1000 and ev is None
    pool.release(b1)
    b2, _ = pool.acquire(1000)
    assert b2.data_ptr() == b1.data_ptr() and pool.reuses == 1
    b3, _ = pool.acquire(1001)
    assert b3.numel() == 1001 and pool.allocations == 2


def test_host_copy_reuses_the_pool_across_steps_and_prefetches():
    pool = PinnedPool(pin=False)
    w = torch.randn(64, 64, requires_grad=True)
    for _ in range(3):
        with HostOffload(copy=True, threshold_bytes=0, pool=pool, prefetch=2) as hooks:
            x = torch.randn(128, 64)
            for _k in range(6):
                x = torch.tanh(x @ w)
            x.sum().backward()
    assert pool.reuses > 0 and pool.allocated_bytes < 3 * 6 * 2 * 128 * 64 * 4
    assert hooks.counts["prefetched"] > 0
    assert hooks.counts["prefetch_hits"] > 0


def test_spill_folder_removed_on_exit_and_on_error(tmp_path):
    a = torch.randn(100_000, requires_grad=True)
    with DiskOffload(tmp_path, threshold_bytes=0, max_inflight_bytes=0) as hooks:
        folder = hooks.folder
        y = (a * a).sum()
        assert any(folder.iterdir())
        y.backward()
    assert not folder.exists()
    with pytest.raises(ZeroDivisionError):
        with DiskOffload(tmp_path, threshold_bytes=0) as hooks:
            folder = hooks.folder
            (a * a).sum()
            1 / 0
    assert not folder.exists()
    assert os.listdir(tmp_path) == []


def test_files_are_deleted_as_backward_frees_them(tmp_path):
    a = torch.randn(100_000, requires_grad=True)
    with DiskOffload(tmp_path, threshold_bytes=0, max_inflight_bytes=0) as hooks:
        y = (a * a).sum()
        assert len(list(hooks.folder.iterdir())) == 1
        y.backward()
        del y
        gc.collect()
        assert list(hooks.folder.iterdir()) == []


def test_cpu_host_target_is_a_pass_through():
    a = torch.randn(100_000, requires_grad=True)
    meter = MemoryMeter()
    with meter.step(), HostOffload(threshold_bytes=0, meter=meter) as hooks:
        y = a * 2
        loss = (y * y).sum()
        assert loss.grad_fn.next_functions[0][0]._saved_self.data_ptr() == y.data_ptr()  # no copy
        loss.backward()
    assert meter.last.spilled_host_bytes == 0 and hooks.counts["stored"] >= 1
