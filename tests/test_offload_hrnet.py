"""Every policy gives the plain step's loss, gradients and BatchNorm statistics, bit for bit (CPU).

On a tiny timm HRNet (hrnet_w18_small, 4 bands, 64 px, channels_last). Also the checkpointing
traps (in-place input list, BatchNorm recompute, timm's refusal) and, through the meter, that
saved activations held in RAM drop to near zero with disk spill.
"""

from __future__ import annotations

import copy

import pytest
import torch

from elegantviz.offload import MemoryMeter, Policy, checkpoint_hrnet, checkpoint_module
from elegantviz.models.hrnet import find_hrnets

timm = pytest.importorskip("timm")

SIZE, BANDS = 64, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = timm.create_model("hrnet_w18_small", features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                          in_chans=BANDS)
    return m.to(memory_format=torch.channels_last).train()


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, BANDS, SIZE, SIZE, generator=g).contiguous(memory_format=torch.channels_last)


def train_step(net, image, policy=None, meter=None, prepare=None):
    """One forward+backward on a fresh copy; returns loss, grads, buffers (and the copy)."""
    model = copy.deepcopy(net)
    handle = prepare(model) if prepare else None

    def run():
        out = model(image)
        loss = sum((f.float() ** 2).mean() * (i + 1) for i, f in enumerate(out))
        loss.backward()
        return loss.detach()

    if policy is None:
        loss = run()
    elif meter is not None:
        with meter.step(), policy.apply(model, meter):
            loss = run()
    else:
        with policy.apply(model):
            loss = run()
    if handle is not None:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return loss, grads, bufs


@pytest.fixture(scope="module")
def reference(net, image):
    return train_step(net, image)


def assert_identical(a, b):
    loss_a, grads_a, bufs_a = a
    loss_b, grads_b, bufs_b = b
    assert torch.equal(loss_a, loss_b)
    bad = [n for n in grads_a if not torch.equal(grads_a[n], grads_b[n])]
    assert not bad, f"gradients differ: {bad[:5]}"
    bad = [n for n in bufs_a if not torch.equal(bufs_a[n], bufs_b[n])]
    assert not bad, f"buffers differ: {bad[:5]}"


@pytest.mark.parametrize("name", ["host", "disk", "checkpoint", "checkpoint+disk"])
def test_each_policy_is_bit_identical_to_the_plain_step(net, image, reference, name, tmp_path):
    policy = Policy.from_name(name, threshold_bytes=4096, spill_dir=str(tmp_path))
    assert_identical(reference, train_step(net, image, policy))


def test_checkpointing_wraps_stem_blocks_and_modules(net):
    model = copy.deepcopy(net)
    handle = checkpoint_hrnet(model)
    body = find_hrnets(model)[0]
    n_modules = sum(len(s) for s in (body.stage2, body.stage3, body.stage4))
    assert len(handle) == 1 + len(body.layer1) + n_modules
    assert set(model.state_dict()) == set(net.state_dict())  # nothing renamed
    handle.remove()
    assert "forward" not in body.stage2[0].__dict__


def test_timm_refuses_grad_checkpointing_for_hrnet(net):
    with pytest.raises(AssertionError, match="not supported"):
        copy.deepcopy(net).set_grad_checkpointing(True)


def test_checkpointing_an_hrnet_module_without_copying_its_input_list_is_wrong(net, image, reference):
    """The module overwrites its input list; the recompute would start from the outputs."""

    def naive(model):
        body = find_hrnets(model)[0]
        for stage in (body.stage2, body.stage3, body.stage4):
            for mod in stage:
                checkpoint_module(mod, copy_inputs=False)

    _, grads, _ = train_step(net, image, prepare=naive)
    assert any(not torch.equal(grads[n], reference[1][n]) for n in grads)


def test_recompute_without_freezing_batchnorm_moves_statistics_twice(net, image, reference):
    _, _, bufs = train_step(net, image, prepare=lambda m: checkpoint_hrnet(m, freeze_bn=False))
    moved = [n for n in bufs if not torch.equal(bufs[n], reference[2][n])]
    assert any(n.endswith("running_mean") for n in moved)
    assert any(n.endswith("num_batches_tracked") for n in moved)


def test_disk_spill_empties_ram_of_saved_activations(net, image, tmp_path):
    """Through the meter: bytes of saved activations held in RAM, pass-through vs disk."""
    held = {}
    for name in ("host", "disk"):  # on CPU 'host' keeps everything in RAM (and counts it)
        meter = MemoryMeter()
        policy = Policy.from_name(name, threshold_bytes=4096, spill_dir=str(tmp_path), max_inflight_bytes=0)
        train_step(net, image, policy, meter)
        held[name] = meter.last.held_host_peak_bytes
        if name == "disk":
            assert meter.last.spilled_disk_bytes > 0.9 * held["host"]
    assert held["host"] > 1 << 20, held
    assert held["disk"] < 0.05 * held["host"], held
