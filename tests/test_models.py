"""ElegantSeg / EHSNet: backbone, MLK/LRD, presets, registry (tiny inputs, random init)."""

import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

from elegantviz.losses import elegantseg_loss
from elegantviz.models import (
    LRD,
    MLK,
    PRESETS,
    ElegantSeg,
    HRNetBackbone,
    MLKUnit,
    SegOutput,
    build_model,
    list_models,
    print_models,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# timm's own count for features_only HRNet (feature_location='', branches 1-4)
PAPER_BACKBONES = {"hrnet_w18": 9.56e6, "hrnet_w32": 29.31e6, "hrnet_w48": 65.33e6}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["hrnet_w18_small_v2", "hrnet_w18", "hrnet_w32", "hrnet_w48"])
def test_backbone_params_equal_timm(name):
    ours = HRNetBackbone(name, in_chans=3)
    ref = timm.create_model(name, features_only=True, feature_location="", out_indices=(1, 2, 3, 4))
    assert _nparams(ours) == _nparams(ref)
    if name in PAPER_BACKBONES:
        assert abs(_nparams(ours) - PAPER_BACKBONES[name]) < 0.005e6
    w = int(name.split("_w")[1].split("_")[0])
    assert ours.branch_channels == [w, 2 * w, 4 * w, 8 * w]
    assert ours.out_channels == 15 * w  # 270 for W18


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("size", [(64, 64), (65, 97), (33, 50)])
def test_backbone_features_at_output_stride(stride, size):
    torch.manual_seed(0)
    bb = HRNetBackbone("hrnet_w18_small_v2", in_chans=2, output_stride=stride).eval()
    x = torch.randn(1, 2, *size)
    f = bb(x)
    assert f.shape == (1, 270, -(-size[0] // stride), -(-size[1] // stride))
    # independent: timm's branches on the zero-padded input, resized and concatenated by hand
    ph, pw = -size[0] % 32, -size[1] % 32
    branches = bb.body(F.pad(x, (0, pw, 0, ph)))
    grid = ((size[0] + ph) // stride, (size[1] + pw) // stride)
    ref = torch.cat([F.interpolate(b, size=grid, mode="bilinear") for b in branches], 1)
    assert torch.allclose(f, ref[..., : f.shape[-2], : f.shape[-1]])


def test_pretrained_goes_through_timm(monkeypatch):
    seen = {}
    real = timm.create_model

    def spy(name, **kwargs):
        seen.update(kwargs, name=name)
        kwargs["pretrained"] = False  # no download here; the flag reaching timm is what we check
        kwargs.pop("pretrained_cfg_overlay", None)
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    bb = HRNetBackbone("hrnet_w18_small_v2", in_chans=4, pretrained=True, pretrained_file="/x/w.pth")
    assert seen["pretrained"] is True and seen["in_chans"] == 4
    assert seen["pretrained_cfg_overlay"] == {"file": "/x/w.pth"}
    assert seen["feature_location"] == "" and seen["out_indices"] == (1, 2, 3, 4)
    assert bb.body.conv1.in_channels == 4


def _conv_same(x, w, b):
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=w.shape[0] if w.shape[1] == 1 else 1)


@pytest.mark.parametrize("fusion", ["gate", "sum", "concat"])
def test_mlk_unit_against_explicit_branches(fusion):
    torch.manual_seed(0)
    unit = MLKUnit(6, (7, 15, 31), fusion, depthwise_impl="fft", layer_scale_init=0.5).eval()
    unit.norm.running_mean.uniform_(-1, 1)
    unit.norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, 40, 36)
    u = F.batch_norm(x, unit.norm.running_mean, unit.norm.running_var, unit.norm.weight, unit.norm.bias, False)
    f5 = _conv_same(u, unit.conv5.weight, unit.conv5.bias)
    fs = [_conv_same(f5, b.weight, b.bias) for b in unit.branches]
    if fusion == "concat":  # EHSNet Eq. (1)
        ref = F.conv2d(torch.cat([u, f5, *fs], 1), unit.fuse.weight, unit.fuse.bias)
    else:
        ref = F.conv2d(f5 + sum(fs), unit.fuse.weight, unit.fuse.bias)
        ref = u * ref if fusion == "gate" else ref
    ref = x + 0.5 * ref  # the pre-norm residual branch with its layer scale
    assert torch.allclose(unit(x), ref, rtol=1e-4, atol=1e-5)
    unit.depthwise_impl = "direct"
    for b in unit.branches:
        b.impl = "direct"
    assert torch.allclose(unit(x), ref, rtol=1e-4, atol=1e-5)


def _mean_abs_ratio(module, x):
    with torch.no_grad():
        return float(module(x).abs().mean() / x.abs().mean())


@pytest.mark.parametrize("cls", [MLK, LRD])
def test_context_module_keeps_the_scale_of_its_input(cls):
    """The unnormalised gate made MLK's output 707x its input at init (and 4,040 after training);
    with the norms and the residual the output stays within a small factor, on any input scale."""
    torch.manual_seed(0)
    m = cls(270, 64, 64)
    for scale in (0.1, 3.0, 100.0):
        x = torch.randn(1, 270, 24, 20).abs() * scale  # ReLU'd backbone features
        assert 0.2 < _mean_abs_ratio(m, x) * scale < 5 * max(1.0, scale), scale
        inner = m.units[0]
        u = torch.randn(1, 64, 24, 20) * scale
        assert _mean_abs_ratio(inner, u) < 1.5  # a unit starts near the identity
    # a few SGD steps on a regression target do not blow it up either
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(2, 270, 24, 20).abs() * 3
    target = torch.randn(2, 64, 24, 20)
    for _ in range(10):
        opt.zero_grad()
        F.mse_loss(m(x), target).backward()
        opt.step()
    assert _mean_abs_ratio(m, x) < 2


def test_mlk_and_lrd_shapes():
    x = torch.randn(1, 270, 12, 10)
    m = MLK(270, 32, 16, num_units=2)
    assert m(x).shape == (1, 32, 12, 10) and len(m.units) == 2
    lrd = LRD(270, 32, 16)
    assert lrd.units[0].fusion == "concat" and lrd.units[0].fuse.in_channels == 16 * 5
    assert lrd(x).shape == (1, 32, 12, 10)


def _check_preset(name, batch, size, in_chans, backward):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, in_chans=in_chans)
    x = torch.randn(batch, in_chans, *size)
    out = model(x, return_evidence=True)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (batch, 5, *size) and out.aux_logits.shape == (batch, 5, *size)
    s = model.output_stride
    fh, fw = -(-size[0] // s), -(-size[1] // s)
    ev = out.evidence
    assert ev.feature_size == (fh, fw) and ev.margin.shape == (batch, fh, fw) and ev.output_stride == s
    assert ev.keys.shape[-2:] == (fh, fw) and ev.context.shape[-2:] == (256 if "cpu" not in name else 64,) * 2
    if not backward:
        return
    labels = torch.randint(0, 5, (batch, *size))
    labels[:, :3] = 255
    # ECR's residual scale starts at 0, so only it gets a gradient at init; open it to reach the rest
    ecr = model.ecr
    if ecr is not None and ecr.form == "projected":
        with torch.no_grad():
            ecr.gamma.fill_(0.1)
        out = model(x, return_evidence=True)
    elegantseg_loss(out, labels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # each image of the batch has its own hard region
    assert set(ev.hard_indices[0].tolist()) != set(ev.hard_indices[1].tolist())


@pytest.mark.parametrize("name", ["elegantseg-cpu", "elegantseg-s", "ehsnet"])
def test_preset_shapes_gradients_batch(name):
    _check_preset(name, batch=2, size=(97, 75), in_chans=4, backward=True)
    _check_preset(name, batch=1, size=(33, 65), in_chans=1, backward=False)


@pytest.mark.parametrize("name", ["elegantseg-m", "elegantseg-l"])
def test_large_presets_shapes_gradients_batch(name):
    # Same code as -s with wider branches; kept to inputs that pad to 64 px (2-5 s each).
    _check_preset(name, batch=2, size=(63, 57), in_chans=4, backward=True)
    _check_preset(name, batch=1, size=(33, 40), in_chans=1, backward=False)


def test_every_preset_is_tested():
    # the isdnet, glnet and fctl presets are tested in test_isdnet.py, test_glnet.py and test_fctl.py
    assert set(PRESETS) == {"elegantseg-s", "elegantseg-m", "elegantseg-l", "ehsnet", "elegantseg-cpu", "isdnet",
                            "isdnet-cpu", "glnet", "glnet-cpu", "fctl", "fctl-cpu"}


def test_implementations_and_memory_formats_agree():
    torch.manual_seed(0)
    model = build_model("elegantseg-cpu", 3, 4, channels_last=False, depthwise_impl="direct").eval()
    x = torch.randn(1, 4, 70, 90)
    ref = model(x).logits
    for mod in model.modules():  # switch every depthwise conv to the FFT path
        if hasattr(mod, "depthwise_impl"):
            mod.depthwise_impl = "fft"
        if hasattr(mod, "impl"):
            mod.impl = "fft"
    assert _rel(model(x).logits, ref) < 1e-5
    model.channels_last = True
    model = model.to(memory_format=torch.channels_last)
    assert _rel(model(x).logits, ref) < 1e-5


def test_evidence_only_when_asked_and_ablations():
    model = build_model("elegantseg-cpu", 3, 3).eval()
    x = torch.randn(1, 3, 40, 40)
    assert model(x).evidence is None
    plain = build_model("elegantseg-cpu", 3, 3, use_ecr=False, context="none").eval()
    out = plain(x, return_evidence=True)
    assert out.evidence.keys is None and out.evidence.hard_indices.shape == (1, 0)
    assert out.logits.shape == (1, 3, 40, 40)
    with pytest.raises(ValueError):
        ElegantSeg(num_classes=1)


def test_registry_and_table(capsys):
    with pytest.raises(KeyError):
        build_model("nope", 3)
    m = build_model("ehsnet", 7, 4, output_stride=4, hidden_dim=32)
    assert m.output_stride == 4 and m.context.units[0].fuse.out_channels == 32
    rows = {r.name: r for r in list_models(num_classes=24, in_chans=4, size=256)}
    assert set(rows) == set(PRESETS)
    s = rows["elegantseg-s"]
    assert s.params == _nparams(build_model("elegantseg-s", 24, 4))
    assert s.gflops > rows["elegantseg-cpu"].gflops > 0
    assert rows["elegantseg-l"].gflops > rows["elegantseg-m"].gflops > s.gflops
    assert rows["isdnet"].params == _nparams(build_model("isdnet", 24, 4)) and rows["isdnet"].backbone == "resnet18d"
    assert s.gflops > rows["isdnet"].gflops > rows["isdnet-cpu"].gflops > 0
    assert rows["glnet"].gflops is None and rows["glnet-cpu"].gflops > 0  # 508 px patches on a 256 px scene: none
    assert print_models(type("Args", (), {"size": 256})()) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PRESETS)


def test_package_import_does_not_import_torch():
    code = "import sys, elegantviz; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
