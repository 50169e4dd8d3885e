"""ISDNet against independent computations: shapes through every part at a 1224 crop, the
Laplacian residuals against scipy, zero-initialised RAF gates, the loss terms, the affinity loss
in blocks against the dense matrices, the parameter counts of the official code, batch 1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from elegantviz.losses import ISD_WEIGHTS, affinity_l1, isdnet_loss, loss_terms, training_loss
from elegantviz.models.isdnet import ISDNet, ISDOutput
from elegantviz.models.laplacian import LaplacianPyramid
from elegantviz.models.raf import RAF
from elegantviz.models.registry import build_model, count_flops
from elegantviz.models.stdc import ShallowNet, load_stdc_weights


def _count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_parameter_counts_match_the_official_code():
    """baselines.md 4.5, computed from the official modules (K = 7, RGB)."""
    with torch.device("meta"):
        m = build_model("isdnet", 7, 3)
    parts = {k: _count(*v) for k, v in m.parts().items()}
    assert parts == {"backbone": 11_195_744, "aspp": 2_640_263, "shallow": 1_278_976, "raf16": 1_165_314,
                     "raf8": 870_402, "sr_decoder": 258_883, "fcn_aux": 148_039, "heads": 222_933}
    assert _count(m) == sum(parts.values()) == 17_780_554  # the digest's 17.78 M
    inference = _count(m) - parts["sr_decoder"] - parts["fcn_aux"] - _count(m.aux8_head, m.aux16_head)
    assert round(inference / 1e6, 2) == 17.23


def test_flops_match_the_official_figures():
    with torch.device("meta"):
        m = build_model("isdnet", 7, 3).eval()
    assert round(count_flops(m, 2448, 3) / 1e9, 1) == 475.9
    assert round(count_flops(m, 1958, 3) / 1e9, 1) == 306.8


def test_shapes_through_every_part_at_a_1224_crop():
    torch.manual_seed(0)
    m = build_model("isdnet", 7, 3).train()
    seen = {}
    for name in ("backbone", "aspp", "shallow", "fuse16", "fuse8", "head", "sr_decoder"):
        getattr(m, name).register_forward_hook(
            lambda mod, i, o, name=name: seen.__setitem__(
                name, [tuple(t.shape) for t in (o if isinstance(o, (tuple, list)) else [o])]))
    with torch.no_grad():
        out = m(torch.randn(1, 3, 1224, 1224))
    assert isinstance(out, ISDOutput)
    assert seen["backbone"] == [(1, 256, 39, 39), (1, 512, 39, 39)]  # stages 3 and 4 of the 306 px image
    assert seen["aspp"] == [(1, 7, 39, 39), (1, 128, 39, 39)]  # deep logits, deep_feat
    assert seen["shallow"] == [(1, 256, 153, 153), (1, 512, 77, 77)]  # 1/8, 1/16 of the residuals
    assert seen["fuse16"] == [(1, 128, 77, 77)] * 3 and seen["fuse8"] == [(1, 128, 153, 153)] * 3
    assert seen["head"] == [(1, 7, 153, 153)]
    assert seen["sr_decoder"] == [(1, 3, 624, 624), (1, 128, 624, 624)]
    assert out.residual.shape == (1, 3, 1224, 1224)
    assert out.aux8.shape == (1, 7, 153, 153) and out.aux16.shape == (1, 7, 77, 77) and out.fcn.shape == (1, 7, 39, 39)
    m.eval()
    with torch.no_grad():
        ev = m(torch.randn(1, 3, 1224, 1224))
    assert not isinstance(ev, ISDOutput) and ev.logits.shape == (1, 7, 1224, 1224) and ev.evidence is None
    assert ev.aux_logits is None  # inference keeps the main logits alone (no second K x H x W map)


def _scipy_residuals(img: np.ndarray, levels: int) -> list[np.ndarray]:
    k1 = np.array([1, 4, 6, 4, 1], float)
    k = np.outer(k1, k1) / 256

    def blur(x, gain=1.0):  # torch's reflect padding is scipy's "mirror"
        return ndimage.convolve(x, k * gain, mode="mirror")

    out, level = [], img
    for _ in range(levels):
        coarse = blur(level)[::2, ::2]
        z = np.zeros((2 * coarse.shape[0], 2 * coarse.shape[1]))
        z[::2, ::2] = coarse
        up = blur(z, 4.0)
        if up.shape != level.shape:  # nearest resize of an odd side's one-short map
            rows = np.floor(np.arange(level.shape[0]) * up.shape[0] / level.shape[0]).astype(int)
            cols = np.floor(np.arange(level.shape[1]) * up.shape[1] / level.shape[1]).astype(int)
            up = up[rows][:, cols]
        out.append(level - up)
        level = coarse
    return out


@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_laplacian_residuals_equal_a_direct_computation(size):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, *size))
    got = LaplacianPyramid(2, levels=2)(torch.from_numpy(img)[None])
    for band in range(2):
        want = _scipy_residuals(img[band], 2)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[0, band].numpy(), w, atol=1e-10)
    flat = LaplacianPyramid(1, 2)(torch.full((1, 1, 32, 32), 3.0, dtype=torch.float64))
    assert all(float(r.abs().max()) < 1e-12 for r in flat)  # a flat image has no detail


def test_raf_gates_start_at_zero_and_leave_plain_channel_attention():
    torch.manual_seed(0)
    raf = RAF(64, 32, channels=32, r=8).eval()
    s, c = torch.randn(1, 64, 16, 16), torch.randn(1, 32, 8, 8)
    assert float(raf.g1.detach()) == 0 and float(raf.g2.detach()) == 0
    with torch.no_grad():
        s_feat, s_att = raf.spatial_att(s)
        c_feat, c_att = raf.context_att(c)
        s_plain = s_feat * torch.sigmoid(s_att)
        c_plain = raf.context_head(F.interpolate(c_feat * torch.sigmoid(c_att), size=(16, 16), mode="bilinear"))
        got = raf(s, c)
        for mlp in (raf.spatial_mlp, raf.context_mlp):  # the affinity path is shut: its weights do not matter
            for p in mlp.parameters():
                p.normal_()
        again = raf(s, c)
        raf.g1.fill_(1.0)
        opened = raf(s, c)
    torch.testing.assert_close(got[0], s_plain)
    torch.testing.assert_close(got[1], c_plain)
    torch.testing.assert_close(got[2], raf.smooth(s_plain + c_plain))
    for a, b in zip(got, again):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(opened[0], got[0])  # a gate that opens changes the features


def test_channel_affinity_is_the_product_of_the_attention_groups():
    raf = RAF(16, 16, channels=32, r=4)
    s, c = torch.randn(2, 32, 1, 1), torch.randn(2, 32, 1, 1)
    a = raf.affinity(s, c).view(2, 4, 4)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                want = float((s[n, 8 * i:8 * i + 8, 0, 0] * c[n, 8 * j:8 * j + 8, 0, 0]).sum())
                assert abs(float(a[n, i, j]) - want) < 1e-5


def test_affinity_loss_in_blocks_equals_the_dense_matrices():
    torch.manual_seed(0)
    seg = torch.randn(2, 8, 6, 7, dtype=torch.float64, requires_grad=True)
    sr = torch.randn(2, 8, 12, 14, dtype=torch.float64, requires_grad=True)
    blocked = affinity_l1(seg, sr, block_bytes=300)  # a few rows per block
    blocked.backward()
    g_blocked = seg.grad.clone()
    seg.grad = None
    # dense, as the official code writes it
    small = F.interpolate(sr, size=(6, 7), mode="bilinear", align_corners=False)
    a, b = seg.flatten(2), small.flatten(2)
    a = a / (a.norm(dim=2, keepdim=True) + 1e-6)
    b = b / (b.norm(dim=2, keepdim=True) + 1e-6)
    dense = F.l1_loss(a.transpose(1, 2) @ a, (b.transpose(1, 2) @ b).detach())
    dense.backward()
    assert abs(float(blocked.detach()) - float(dense.detach())) < 1e-6
    torch.testing.assert_close(g_blocked.float(), seg.grad.float(), atol=1e-6, rtol=1e-4)
    assert sr.grad is None  # the SR side teaches, it is not taught


def test_loss_has_every_official_term_with_its_weight():
    torch.manual_seed(0)
    m = build_model("isdnet-cpu", 4, 4).train()
    x = torch.randn(1, 4, 96, 128)
    labels = torch.randint(0, 4, (1, 96, 128))
    labels[0, :5] = 255  # ignored rows
    out = m(x, upsample=False)
    total, terms = isdnet_loss(out, labels)
    assert tuple(terms) == loss_terms(m) == tuple(ISD_WEIGHTS) and len(terms) == 7
    assert ISD_WEIGHTS == {"seg": 1.0, "deep": 1.0, "aux8": 1.0, "aux16": 1.0, "sr": 0.1, "sd": 1.0, "fcn": 0.4}
    assert abs(float(total.detach()) - sum(ISD_WEIGHTS[k] * float(v) for k, v in terms.items())) < 1e-4
    up = F.interpolate(out.logits, size=(96, 128), mode="bilinear", align_corners=False)
    assert abs(float(terms["seg"]) - float(F.cross_entropy(up, labels, ignore_index=255))) < 1e-5
    sr = F.interpolate(out.sr, size=(96, 128), mode="bilinear", align_corners=False)
    assert abs(float(terms["sr"]) - float(F.mse_loss(sr, out.residual))) < 1e-6
    assert training_loss(out, labels, None)[1].keys() == terms.keys()
    # structure distillation alone reaches the deep branch and not the SR decoder (its side is detached)
    m.zero_grad()
    terms_sd = affinity_l1(out.deep_feat, out.sr_feat)
    terms_sd.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in m.sr_decoder.parameters())
    assert float(m.aspp.bottleneck[0].weight.grad.abs().max()) > 0


def test_batch_one_trains_with_group_norm_where_batch_norm_fails():
    x, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 3, (1, 64, 64))
    m = build_model("isdnet-cpu", 3, 3).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    before = m.head[-1].weight.detach().clone()
    loss, _ = isdnet_loss(m(x), labels)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, m.head[-1].weight)
    official = build_model("isdnet-cpu", 3, 3, pooled_norm="batch").train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        official(x)


def test_any_band_count_and_class_count():
    m = build_model("isdnet-cpu", 24, 4).train()  # FBP-style: 4 bands, 24 classes
    out = m(torch.randn(1, 4, 128, 160))
    assert out.residual.shape[1] == 4 and out.sr.shape[1] == 4 and out.logits.shape[1] == 24
    assert m.shallow.stem[0][0].in_channels == 8  # two residuals of 4 bands
    with pytest.raises(ValueError, match="at least 64 px"):
        m(torch.randn(1, 4, 48, 64))


def _official_stdc_names(net: ShallowNet) -> dict[str, str]:
    """STDCNet813's own key names for each tensor of ours, spelled out from its layout: features.0
    and .1 are ConvX (conv, bn); features.2.. the CatBottlenecks (conv_list.j.conv / .bn, avd_layer.0 / .1)."""
    names = {}
    blocks = [("stem.0", "convx"), ("stem.1", "convx")]
    blocks += [(f"stages.{i}.{j}", "cat") for i in range(2) for j in range(2)]
    for f, (ours, kind) in enumerate(blocks):
        for k in net.state_dict():
            if not k.startswith(ours + "."):
                continue
            rest = k[len(ours) + 1:].split(".")
            if kind == "convx":
                names[k] = f"features.{f}.{'conv' if rest[0] == '0' else 'bn'}.{rest[-1]}"
            elif rest[0] == "convs":
                names[k] = f"features.{f}.conv_list.{rest[1]}.{'conv' if rest[2] == '0' else 'bn'}.{rest[-1]}"
            else:  # avd
                names[k] = f"features.{f}.avd_layer.{rest[1]}.{rest[-1]}"
    return names


def test_stdc_weights_are_loaded_with_the_first_conv_repeated(tmp_path):
    torch.manual_seed(0)
    official = ShallowNet(in_chans=3)
    for p in official.state_dict().values():
        if p.is_floating_point():
            p.normal_()  # every tensor distinct, so a wrong mapping cannot pass
    names = _official_stdc_names(official)
    assert len(names) == len(official.state_dict())
    state = {names[k]: v for k, v in official.state_dict().items()}
    state["fc.weight"] = torch.randn(10, 4)  # ImageNet head: ignored
    path = tmp_path / "STDCNet813M.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    net = ShallowNet(in_chans=6)
    load_stdc_weights(net, path)
    for k, v in net.state_dict().items():
        want = official.state_dict()[k]
        if k == "stem.0.0.weight":
            want = torch.cat([want, want], dim=1)
        torch.testing.assert_close(v, want, msg=k)
    model = ISDNet(3, 3, stdc_weights=str(path), channels=64, r=8, stdc_base=64)
    torch.testing.assert_close(model.shallow.stem[0][0].weight, net.stem[0][0].weight)
    torch.save({"other": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no weights of STDC"):
        load_stdc_weights(net, tmp_path / "bad.pt")
    torch.save({"features.0.conv.weight": state["features.0.conv.weight"]}, tmp_path / "part.pt")
    with pytest.raises(ValueError, match="fills 1 of the shallow branch's tensors; missing"):
        load_stdc_weights(net, tmp_path / "part.pt")


def _bilinear_x2(x: np.ndarray) -> np.ndarray:
    """2x bilinear upsampling, half-pixel centres (align_corners=False), edges clamped: by hand."""
    def axis(a, n, ax):
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (src - lo).reshape([-1 if i == ax else 1 for i in range(a.ndim)])
        return np.take(a, lo, ax) * (1 - w) + np.take(a, hi, ax) * w
    return axis(axis(x, x.shape[0], 0), x.shape[1], 1)


def test_shallow_input_is_both_residuals_at_full_resolution():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(3, 64, 80))
    m = build_model("isdnet-cpu", 3, 3).double()
    got = m.residuals(torch.from_numpy(img)[None])[0].numpy()
    assert got.shape == (6, 64, 80)
    for band in range(3):
        r0, r1 = _scipy_residuals(img[band], 2)
        np.testing.assert_allclose(got[band], r0, atol=1e-10)
        np.testing.assert_allclose(got[3 + band], _bilinear_x2(r1), atol=1e-10)


def test_each_head_reads_its_own_features():
    torch.manual_seed(0)
    m = build_model("isdnet-cpu", 4, 3).train()
    for mod in m.modules():  # dropout off, so a head run again gives the same logits
        if isinstance(mod, torch.nn.Dropout2d):
            mod.p = 0.0
    seen = {}
    for name in ("fuse8", "fuse16", "backbone", "aspp", "sr_decoder"):
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o))
    with torch.no_grad():
        out = m(torch.randn(1, 3, 96, 128))
        torch.testing.assert_close(out.aux8, m.aux8_head(seen["fuse8"][1]))  # RAF-8's context features
        torch.testing.assert_close(out.aux16, m.aux16_head(seen["fuse16"][1]))  # RAF-16's
        torch.testing.assert_close(out.fcn, m.fcn_head(seen["backbone"][0]))  # ResNet stage 3
        torch.testing.assert_close(out.aux_logits, seen["aspp"][0])  # the deep branch
        torch.testing.assert_close(out.deep_feat, seen["aspp"][1])
        torch.testing.assert_close(out.sr, seen["sr_decoder"][0])
        torch.testing.assert_close(out.sr_feat, seen["sr_decoder"][1])


def test_bf16_autocast_keeps_residuals_and_losses_in_float32():
    m = build_model("isdnet-cpu", 3, 3).train()
    x, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 3, (1, 64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        total, terms = isdnet_loss(out, labels)
    assert out.residual.dtype == torch.float32 and out.logits.dtype == torch.bfloat16
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
