"""Row-banded segments equal the plain forward and backward (BatchNorm in training mode included).

Checked in float64, where the only difference left is the order of sums (1e-12), on the segments
the band policy runs: HRNet's stem (stride 4), a layer1 bottleneck, the last bottleneck with
``transition1`` (two outputs at strides 1 and 2), an FCN head with Dropout2d and MLK; then a whole
ElegantSeg training step under ``checkpoint+band(+disk)``. Also: banding without the
statistics passes is wrong, a halo one row short is wrong, the memory bound (through
LiveTensorBytes, not a clock), and the spilled-page release.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from elegantviz.models.heads import FCNHead
from elegantviz.models.mlk import MLK
from elegantviz.offload import LiveTensorBytes, Policy
from elegantviz.models.receptive import reach
from elegantviz.offload.band_model import band_model
from elegantviz.offload.banded import Banded, banded
from elegantviz.pages import SPILL_PREFIX, drop_file_pages, file_backed
from elegantviz.offload.meter import current_rss

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def body():
    torch.manual_seed(0)
    return timm.create_model("hrnet_w18_small", features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                             in_chans=4).double().train()


def _run(fn, modules, x, seed, band=None):
    """Forward+backward with a fixed upstream gradient on copies; outputs, grads and buffers."""
    modules = copy.deepcopy(modules)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    if band is None:
        out = fn(modules)(x)
    else:
        out = banded(fn(modules), x, modules, **band)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(7)
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs])
    params = [p.grad for m in modules for p in m.parameters()]
    buffers = [b.clone() for m in modules for b in m.buffers()]
    return [o.detach() for o in outs], x.grad, params, buffers


def _assert_close(a, b, tol=1e-10):
    for name, xs, ys in zip(("outputs", "input grad", "parameter grads", "buffers"), a, b):
        xs = xs if isinstance(xs, list) else [xs]
        ys = ys if isinstance(ys, list) else [ys]
        for u, v in zip(xs, ys):
            u, v = u.double(), v.double()
            scale = u.abs().max().item() or 1.0
            assert (u - v).abs().max().item() <= tol * scale, name


def _bottleneck(dtype=torch.float64):
    """A layer1 block of HRNet-W18: 256 channels in and out, 64 inside."""
    from timm.models.resnet import Bottleneck

    torch.manual_seed(4)
    return Bottleneck(256, 64).to(dtype).train()


def _segments(body):
    stem_mods = [body.conv1, body.bn1, body.act1, body.conv2, body.bn2, body.act2]
    last_mods = [body.layer1[-1], *body.transition1]
    head = FCNHead(64, 5, 32, kernel_size=3, dropout=0.3).double().train()
    mlk = MLK(64, 32, 32, kernel_sizes=(7, 15), depthwise_impl="fft").double()
    return {
        # name: (builder of fn from the copied modules, modules, input shape, strides, halo)
        "stem": (lambda ms: nn.Sequential(*ms), stem_mods,
                 (1, 4, 96, 40), (4,), 4),
        "bottleneck": (lambda ms: ms[0], [_bottleneck()], (1, 256, 40, 24), (1,), 1),
        "bottleneck+transition1": (lambda ms: (lambda t: (lambda y: tuple(tr(y) for tr in ms[1:]))(ms[0](t))),
                                   last_mods,
                                   (1, 64, 40, 24), (1, 2), 2),
        "fcn head with dropout": (lambda ms: ms[0], [head], (1, 64, 36, 20), (1,), 1),
        "mlk": (lambda ms: ms[0], [mlk], (1, 64, 72, 24), (1,), mlk.radius),
    }


@pytest.mark.parametrize("name", ["stem", "bottleneck", "bottleneck+transition1", "fcn head with dropout", "mlk"])
def test_banded_segment_equals_plain(body, name):
    fn, mods, shape, strides, halo = _segments(body)[name]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = 8 * max(strides)
    runner = Banded(lambda t: t, mods, strides, halo, rows)
    assert len(runner.bands(x)) >= 3
    plain = _run(fn, mods, x, seed=3)
    band = _run(fn, mods, x, seed=3, band=dict(strides=strides, halo=halo, rows=rows))
    _assert_close(plain, band)


def test_banding_with_per_band_statistics_is_wrong(body):
    """The trap the statistics passes avoid: a bottleneck run on each band with its own BatchNorm
    statistics differs from the whole-image block by far more than rounding."""
    block = _bottleneck()
    x = torch.randn(1, 256, 40, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = block(x)
        naive = torch.cat([block(x[..., max(0, r - 1):r + 9, :])[..., (1 if r else 0):(1 if r else 0) + 8, :]
                           for r in range(0, 40, 8)], dim=2)
        exact = banded(block, x, [block], halo=1, rows=8)
    assert (naive - whole).abs().max() > 1e-3
    assert torch.allclose(exact, whole, rtol=0, atol=1e-12)


def test_mlk_radius_is_the_halo_it_needs(body):
    mlk = MLK(16, 8, 8, kernel_sizes=(7, 15), depthwise_impl="direct").double()
    assert reach(mlk).depth == mlk.radius == 2 + 7
    x = torch.randn(1, 16, 64, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = mlk(x)
        assert torch.allclose(banded(mlk, x, [mlk], halo=mlk.radius, rows=16), whole, atol=1e-12)
        assert not torch.allclose(banded(mlk, x, [mlk], halo=mlk.radius - 1, rows=16), whole, atol=1e-6)


@pytest.mark.parametrize("name", ["checkpoint+band", "checkpoint+band+disk"])
def test_band_policy_training_step_equals_plain(name, tmp_path, monkeypatch):
    from elegantviz.models.registry import build_model
    from elegantviz.offload.planner import default_loss

    torch.manual_seed(0)
    model = build_model("elegantseg-s", num_classes=5, in_chans=4).double().train()
    with torch.no_grad():  # MLK's units and ECR's residual weigh in (both start near the identity)
        model.ecr.gamma.fill_(0.5)
        model.context.units[0].layer_scale.fill_(0.5)
    x = torch.randn(1, 4, 160, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def step(policy):
        m = copy.deepcopy(model)
        torch.manual_seed(3)  # the heads' dropout
        with policy.apply(m):
            loss = default_loss(m(x, upsample=False))
            loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters()}, dict(m.named_buffers())

    loss, grads, bufs = step(Policy())
    calls = []
    forward = Banded.forward
    monkeypatch.setattr(Banded, "forward", lambda self, t: calls.append(len(self.bands(t))) or forward(self, t))
    # band_bytes this small gives 3 to 20 bands per segment at this size
    loss_b, grads_b, bufs_b = step(Policy.from_name(name, spill_dir=str(tmp_path), threshold_bytes=4096,
                                                    band_bytes=16 << 10))
    # the stem, layer1's four blocks (the last with transition1), both heads and MLK, each in bands
    # (all but MLK, whose 4-halo minimum band covers these 40 rows)
    assert len(calls) == 8 and sorted(calls)[1] >= 3, calls
    assert abs(loss.item() - loss_b.item()) < 1e-12
    scale = max(g.abs().max().item() for g in grads.values())
    worst = max((grads[n] - grads_b[n]).abs().max().item() for n in grads)
    assert worst < 1e-10 * scale, worst
    assert all(torch.allclose(bufs[n].double(), bufs_b[n].double(), rtol=1e-10, atol=1e-12) for n in bufs)
    assert list(tmp_path.iterdir()) == []  # the spill folder is gone


def test_band_model_patches_and_restores(body):
    from elegantviz.models.registry import build_model

    model = build_model("elegantseg-s", num_classes=3, in_chans=4)
    before = {n: type(m).forward for n, m in model.named_modules()}
    handle = band_model(model)
    assert "forward" in model.head.__dict__ and "forward" in model.context.__dict__
    handle.remove()
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert before == {n: type(m).forward for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="nothing to band"):
        band_model(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_banding_bounds_the_memory_of_a_wide_block(body):
    """Peak live bytes of a 256-channel bottleneck's forward+backward (LiveTensorBytes)."""
    block = _bottleneck(torch.float32)
    x = torch.randn(1, 256, 128, 64, requires_grad=True)
    peaks = {}
    for mode in ("plain", "banded"):
        live = LiveTensorBytes(block)
        with live:
            y = block(x) if mode == "plain" else banded(block, x, [block], halo=1, rows=8)
            y.backward(torch.ones_like(y))
        peaks[mode] = live.peak
        x.grad = None
    one_map = x.numel() * 4
    # Input, output and their gradients are whole either way; beyond them the plain block keeps
    # two more maps (its saved 256-channel maps and 64-channel ones), the banded one a band's worth.
    assert peaks["plain"] - 4 * one_map > 1.8 * one_map, peaks
    assert peaks["banded"] - 4 * one_map < 1.0 * one_map, peaks


def test_bad_input_is_refused_and_leaves_the_modules_alone(body):
    block = _bottleneck()
    with pytest.raises(ValueError, match="multiple of the segment's stride 4"):
        banded(block, torch.randn(1, 256, 30, 8, dtype=torch.float64), [block], strides=(4,), halo=4)
    assert all("forward" not in m.__dict__ for m in block.modules())
    with pytest.raises(ValueError, match="GroupNorm normalises over the whole image"):
        gn = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
        banded(gn, torch.randn(1, 2, 8, 8), [gn], halo=0, rows=4)
    assert all("forward" not in m.__dict__ for m in gn.modules())
    drop2 = nn.Dropout2d(0.5)
    with pytest.raises(ValueError, match="Dropout2d is called twice"):
        banded(lambda t: drop2(drop2(t)), torch.randn(1, 2, 8, 8), [drop2], halo=0, rows=4)
    with pytest.raises(ValueError, match="halo 1 must be a multiple"):
        banded(block, torch.randn(1, 256, 32, 8, dtype=torch.float64), [block], strides=(2,), halo=1)
    with pytest.raises(ValueError, match="called twice"):
        banded(lambda t: block(block(t)), torch.randn(1, 256, 32, 8, dtype=torch.float64), [block], halo=2, rows=8)
    drop = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Dropout(0.5)).train()
    with pytest.raises(ValueError, match="Dropout draws per pixel"):
        banded(drop, torch.randn(1, 2, 8, 8), [drop], halo=0, rows=4)


def test_drop_file_pages_gives_back_rss_and_keeps_the_data(tmp_path):
    x = torch.randn(1, 32, 1024, 512).contiguous(memory_format=torch.channels_last)  # 64 MiB
    folder = tmp_path / f"{SPILL_PREFIX}test"
    folder.mkdir()
    path = folder / "000001.bin"
    x.permute(0, 2, 3, 1).contiguous().numpy().tofile(path)
    flat = torch.from_file(str(path), shared=False, size=x.numel(), dtype=x.dtype)
    t = flat.as_strided(x.shape, x.stride())
    assert file_backed(t) and not file_backed(x)
    (tmp_path / "other.bin").write_bytes(path.read_bytes())  # a file that is not a spill file
    other = torch.from_file(str(tmp_path / "other.bin"), shared=False, size=x.numel(), dtype=x.dtype)
    assert not file_backed(other) and not drop_file_pages(other.as_strided(x.shape, x.stride()), 0, 1024)
    assert torch.equal(t, x)  # every page now read
    before = current_rss()
    assert drop_file_pages(t, 0, 1024)
    assert before - current_rss() > 48 << 20
    assert torch.equal(t, x)  # read back from the page cache or the file
    assert not drop_file_pages(x, 0, 1024)  # anonymous memory is never dropped (it would be zeroed)
    assert not drop_file_pages(t.contiguous(), 0, 10)
    assert np.isfinite(t.numpy()).all()


def test_running_statistics_with_cumulative_momentum():
    bn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=None)).double().train()
    x = torch.randn(1, 3, 32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    plain = copy.deepcopy(bn)
    for _ in range(2):
        with torch.no_grad():
            plain(x * 2)
            banded(bn, x * 2, [bn], halo=1, rows=8)
    for a, b in zip(plain.buffers(), bn.buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-12)


def test_bf16_autocast_forward_with_backward_outside_it():
    """As the trainer on CUDA: forward under bf16 autocast, backward after it has ended. Backward
    recomputes each band under the forward's autocast, and the norms work in float32."""
    block = _bottleneck(torch.float32)
    x = torch.randn(1, 256, 48, 16, generator=torch.Generator().manual_seed(6))
    results = []
    for band in (False, True):
        m = copy.deepcopy(block)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = banded(m, xi, [m], halo=1, rows=8) if band else m(xi)
        y.float().square().mean().backward()
        results.append((y.float().detach(), xi.grad, m.conv1.weight.grad))
    for a, b in zip(*results):
        assert (a - b).norm() < 0.02 * a.norm()
