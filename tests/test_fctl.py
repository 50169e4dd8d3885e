"""FCtL (models/fctl.py, fcn8s.py, lcf.py, ale.py; losses/fctl.py) against independent computations:
the digest's sizes and costs (baselines.md 3.6), the stages' trainable parts and roles, the
zero-initialised gates, the context crops and their feature alignment, ALE on/off, TTA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from elegantviz.losses.fctl import fctl_loss
from elegantviz.models.ale import align_context
from elegantviz.inference.patches import tta_logits
from elegantviz.models.fctl import PRESET_KWARGS, FCtL, context_crops
from elegantviz.models.lcf import (
    centred_map,
    feature_map,
    global_map,
    identity_map,
    relative_positions,
)
from elegantviz.models.patch_grid import PatchGrid

# a tiny FCtL: VGG-11 at 1/16 width (4 .. 32 channels), 64 px patches, a 3 x 3 grid on 128 x 160
TINY = dict(backbone="vgg11", width_div=16, width=32, decoder="bilinear", patch_size=64, min_overlap=16, sub_batch=4,
            dropout=0.0)


def n_params(mods) -> int:
    return sum(p.numel() for m in mods for p in m.parameters())


def conv(cin, cout, k=1, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def tiny(stage="full", seed=0, **kw) -> FCtL:
    torch.manual_seed(seed)
    return FCtL(3, **{**TINY, "stage": stage, **kw})


def scene(c=3, h=128, w=160, seed=1):
    return torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed))


def trainable(model) -> set[str]:
    return {n.split(".")[0] if not n.startswith("lcc.") else ".".join(n.split(".")[:2])
            for n, p in model.named_parameters() if p.requires_grad}


# -- sizes (meta device) ----------------------------------------------------------------------

def test_full_size_parameter_counts_match_the_digest():
    k, c = 7, 512
    with torch.device("meta"):
        model = FCtL(k, **PRESET_KWARGS["fctl"])
        iccv = FCtL(k, **{**PRESET_KWARGS["fctl"], "ale": False})
    parts = {name: n_params(mods) for name, mods in model.parts().items()}
    vgg16 = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512),
             (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    assert parts["trunk"] == sum(conv(a, b, 3) for a, b in vgg16) == 14_714_688
    assert parts["conv6"] == conv(512, 4096, 7) and round(parts["conv6"] / 1e6, 1) == 102.8
    assert parts["conv7"] == conv(4096, 4096) and round(parts["conv7"] / 1e6, 1) == 16.8
    assert parts["heads"] == conv(4096, k) + conv(512, k) + conv(256, k)
    lcc = 3 * (2 * conv(c, c) + conv(c, c, bias=False) + 1 + 4)  # q, k, v, gamma, GPE (W_r, z)
    mcf = 3 * conv(c, c) + conv(3 * c, 3 * c) + 3 * conv(c, c)
    assert parts["fctl"] == lcc + mcf and round(parts["fctl"] / 1e6, 2) == 6.30
    local_plus_fctl = sum(parts[p] for p in ("trunk", "conv6", "conv7", "heads", "fctl"))
    assert round(local_plus_fctl / 1e6, 1) == 140.6
    assert parts["enc_medium"] == parts["enc_large"] == parts["trunk"]
    lfi = 3 * conv(c, c) + sum(128 * (2 * w * w + 1) for w in (3, 5, 7, 9))
    assert parts["ale"] == 4 * lfi + 1
    assert n_params([model]) == sum(parts.values())
    assert abs(n_params([iccv]) / 1e6 - 170.0) < 0.5  # "final inference model about 170 M used parameters"
    assert "ale" not in iccv.parts()


def test_full_size_flops_per_patch_match_the_digest():
    with torch.device("meta"):
        model = FCtL(2, **{**PRESET_KWARGS["fctl"], "ale": False}).eval()
        x = torch.randn(1, 3, 508, 508)
        with FlopCounterMode(display=False) as fc:
            out = model(x)
        with FlopCounterMode(display=False) as trunk_fc:
            model.enc_medium(x)
    assert out.logits.shape == (1, 2, 508, 508)
    assert abs(trunk_fc.get_total_flops() / 1e9 - 308) < 1  # one VGG trunk at 508 with pad 100
    assert abs(fc.get_total_flops() / 1e12 - 1.00) < 0.01  # the Inria final model, per patch
    p3, p4, p5 = model.fcn.encode(x)
    assert (p3.shape[-1], p4.shape[-1], p5.shape[-1]) == (89, 45, 23)


def test_meta_training_forward_runs():
    with torch.device("meta"):
        model = FCtL(7, **PRESET_KWARGS["fctl"]).train()
        out = model(torch.randn(1, 3, 600, 1000))
    assert out.patch_logits.shape == (2 * 3, 7, 508, 508) and len(out.boxes) == 6


# -- stages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, parts, roles", [
    ("local", {"fcn"}, ()),
    ("medium", {"fcn", "lcc.medium"}, ("local",)),
    ("large", {"fcn", "lcc.large"}, ("local",)),
    ("full", {"fcn", "lcc.self", "lcc.medium", "lcc.large", "mcf", "ale"}, ("medium", "large")),
])
def test_stage_trainable_parts_and_roles(stage, parts, roles):
    with torch.device("meta"):
        model = FCtL(7, **{**PRESET_KWARGS["fctl"], "stage": stage})
    assert trainable(model) == parts
    assert model.init_roles == model.required_roles == roles
    assert model.loss_terms == ("focal",) and model.min_side == 508 and model.patch_based
    if stage == "full":
        assert all(not p.requires_grad for p in model.enc_medium.parameters())
        assert all(not p.requires_grad for p in model.enc_large.parameters())
        model.train()
        assert model.training and model.fcn.training
        assert not model.enc_medium.training and not model.enc_large.training


def test_deepglobe_form_stages_and_roles():
    kw = {**TINY, "medium_context": 3.0, "large_context": "global", "center_qk": True}
    large = FCtL(3, **kw, stage="large")
    assert trainable(large) == {"fcn"} and large.init_roles == ("local",) and large.required_roles == ()
    full = FCtL(3, **kw, stage="full")
    assert full.required_roles == ("local", "medium", "large")
    x, y = scene(), torch.randint(0, 3, (1, 128, 160))
    out = large.train()(x)
    assert out.boxes is None and out.patch_logits.shape == (1, 3, 64, 64)
    total, terms = fctl_loss(out, y)
    assert total.isfinite() and set(terms) == set(large.loss_terms)
    assert large.eval()(x).logits.shape == (1, 3, 128, 160)
    with torch.no_grad():
        full.lcc["large"].gamma.fill_(1.0)
        a = full.eval()(x).logits
        full.enc_large.features[0].weight.mul_(2)  # the global encoder feeds every patch
        b = full(x).logits
    assert a.shape == (1, 3, 128, 160) and not torch.allclose(a, b)


# -- zero-initialised gates, shapes, learning -------------------------------------------------

@pytest.mark.parametrize("stage", ["medium", "full"])
def test_zero_gates_leave_the_local_branch_unchanged_at_init(stage):
    local, model = tiny("local", seed=0), tiny(stage, seed=1)
    model.fcn.load_state_dict(local.fcn.state_dict())
    x = scene()
    with torch.no_grad():
        a, b = local.eval()(x).logits, model.eval()(x).logits
        for corr in model.lcc.values():
            corr.gamma.fill_(0.5)
        c = model(x).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-4)  # the gates are what keeps them equal


@pytest.mark.parametrize("bands", [3, 4])
def test_shapes_in_eval_and_training_non_square(bands):
    model = tiny("full", in_chans=bands)
    x = scene(bands)
    out = model.eval()(x, return_evidence=True)
    assert out.logits.shape == (1, 3, 128, 160) and out.views == {} and out.stride == 1
    calls = []
    model(x, progress=calls.append)
    assert sum(calls) == 9 and calls == [4, 4, 1]
    tr = model.train()(x, upsample=False)
    assert tr.patch_logits.shape == (9, 3, 64, 64) and tr.boxes == PatchGrid(128, 160, 64, 16).boxes()
    assert tr.loss_kind == "fctl" and tr.patch == 64
    with pytest.raises(ValueError, match="at least 64"):
        model(torch.randn(1, bands, 60, 160))


def test_training_loss_decreases():
    model = tiny("full", ale=True)
    with torch.no_grad():  # open the gates so every part learns from the first step
        for corr in model.lcc.values():
            corr.gamma.fill_(0.1)
        model.ale.gamma.fill_(0.1)
    x = scene()
    y = (x[0, 0] > 0).long() + (x[0, 1] > 0.5).long()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    losses = []
    for _ in range(8):
        total, terms = fctl_loss(model(x, upsample=False), y[None])
        assert tuple(terms) == model.loss_terms
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.enc_medium.parameters())


def test_loss_crops_the_labels_at_the_boxes():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 8, 10))

    class Out:
        patch_logits, boxes, patch = logits, [(0, 0), (4, 6)], 4

    total, _ = fctl_loss(Out, labels, ignore_index=None)
    p = F.softmax(logits, 1)
    target = torch.stack([labels[0, :4, :4], labels[0, 4:8, 6:10]])
    pt = p.gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(total, (-((1 - pt) ** 3) * pt.log()).mean())


def test_grad_checkpoint_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = tiny("full", seed=3, grad_checkpoint=ckpt)
        with torch.no_grad():
            model.lcc["medium"].gamma.fill_(0.3)
        total, _ = fctl_loss(model.train()(scene()), torch.randint(0, 3, (1, 128, 160), generator=torch.Generator()
                                                                    .manual_seed(0)))
        total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


# -- inference: summed overlaps, TTA ----------------------------------------------------------

def test_eval_sums_the_patch_logits_over_overlaps():
    model = tiny("local").eval()
    x = scene()
    with torch.no_grad():
        got = model(x).logits
        want = torch.zeros(1, 3, 128, 160)
        for y0, x0 in PatchGrid(128, 160, 64, 16).boxes():
            want[:, :, y0 : y0 + 64, x0 : x0 + 64] += model.fcn(x[:, :, y0 : y0 + 64, x0 : x0 + 64])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_tta_sums_the_eight_d4_views():
    """``predict --tta`` on FCtL: the summed logits are D4-equivariant, where one view's are not."""
    model = tiny("full", seed=4).eval()
    with torch.no_grad():
        model.lcc["large"].gamma.fill_(1.0)
        s = scene()
        rot = torch.rot90(s, 1, (-2, -1))
        a, b = tta_logits(model, s), tta_logits(model, rot)
        c, d = model(s).logits, model(rot).logits
        torch.testing.assert_close(torch.rot90(a, 1, (-2, -1)), b, rtol=1e-4, atol=1e-4)  # D4-equivariant
        torch.testing.assert_close(tta_logits(model, s.flip(-1)), a.flip(-1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(torch.rot90(c, 1, (-2, -1)), d, atol=1e-3)  # a single view is not


# -- contexts and their geometry --------------------------------------------------------------

@pytest.mark.parametrize("mul", [2.0, 3.0])
def test_context_crops_are_centred_zero_padded_slices(mul):
    img, p = scene(3, 100, 120), 40
    boxes = PatchGrid(100, 120, p, 16).boxes()
    pad = int(p * (mul - 1) / 2)
    padded = torch.zeros(1, 3, 100 + 2 * pad, 120 + 2 * pad)
    padded[:, :, pad : pad + 100, pad : pad + 120] = img
    side = int(mul * p)
    want = torch.cat([padded[:, :, y : y + side, x : x + side] for y, x in boxes])
    want = F.interpolate(want, size=(p, p), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(context_crops(img, boxes, p, mul), want)


def test_context_pixel_map_follows_a_scene_point():
    img, p, mul = torch.zeros(1, 1, 200, 200), 64, 2.0
    y0, x0 = 70, 90
    img[:, :, y0 + 20 : y0 + 22, x0 + 10 : x0 + 12] = 1.0  # a 2 x 2 dot at patch pixels (21, 11) continuous
    ctx = context_crops(img, [(y0, x0)], p, mul)[0, 0]
    rows, cols = torch.arange(p) + 0.5, torch.arange(p) + 0.5
    cy, cx = (ctx.sum(1) * rows).sum() / ctx.sum(), (ctx.sum(0) * cols).sum() / ctx.sum()
    m = centred_map(mul, p, 1)[0]
    assert abs(cy - (m[0, 0] * 21 + m[0, 1])) < 0.05 and abs(cx - (m[1, 0] * 11 + m[1, 1])) < 0.05
    g = global_map([(y0, x0)], p, (200, 200))[0]  # the same dot on the thumbnail
    th = F.interpolate(img, size=(p, p), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    ty = (th.sum(1) * rows).sum() / th.sum()
    assert abs(ty - (g[0, 0] * 21 + g[0, 1])) < 0.05


def test_feature_map_and_alignment_of_a_2x_context():
    fm = feature_map(centred_map(2.0, 508, 1), pad=99, stride=32)
    torch.testing.assert_close(fm[0, 0], torch.tensor([0.5, (127 + 49.5) / 32]))
    h = w = 23  # pool5 of a 508 px patch; the context map holds its own cell coordinates
    ramp = torch.stack(torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij"))[None]
    out = align_context(ramp, fm, (h, w))[0]
    want = 0.5 * (torch.arange(h) + 0.5) + (127 + 49.5) / 32
    torch.testing.assert_close(out[0, :, 5], want, rtol=0, atol=1e-5)  # rows: the central 11.5 cells
    torch.testing.assert_close(out[1, 5, :], want, rtol=0, atol=1e-5)
    g = feature_map(global_map([(0, 1940)], 508, (2448, 2448)), pad=99, stride=32)  # a far-right patch
    out = align_context(ramp, g, (h, w))[0]
    a = 508 / 2448
    assert float(out[1, 3, 10]) == pytest.approx(a * 10.5 + (1940 * a + 99 * (1 - a)) / 32, abs=1e-5)


def test_relative_positions_against_a_direct_loop():
    fmap = feature_map(centred_map(3.0, 64, 1), pad=0, stride=32)  # pool5 2 x 2 over 2 x 2
    r = relative_positions(fmap, (2, 2), (2, 2))[0]
    a, beta = fmap[0, :, 0], fmap[0, :, 1]
    for qi in range(4):
        for ki in range(4):
            dy = ((ki // 2 + 0.5) - beta[0]) / a[0] - (qi // 2 + 0.5)
            dx = ((ki % 2 + 0.5) - beta[1]) / a[1] - (qi % 2 + 0.5)
            torch.testing.assert_close(r[qi, ki], torch.stack([dy, dx, dy * dy + dx * dx]))
    r0 = relative_positions(feature_map(identity_map(1), 99, 32), (3, 3), (3, 3))[0]
    assert r0[4, 4].abs().sum() == 0 and r0[0, 8].tolist() == [2.0, 2.0, 8.0]


# -- ALE ----------------------------------------------------------------------------------------

def test_ale_on_off():
    on, off = tiny("full", ale=True), tiny("full", ale=False)
    assert "ale" in on.parts() and "ale" not in off.parts() and off.ale is None
    assert on.lcc["self"].gpe and not off.lcc["self"].gpe  # gpe follows ale: ale=False is the ICCV model
    assert tiny("full", ale=False, gpe=True).lcc["medium"].gpe
    state = {k: v for k, v in on.state_dict().items() if not k.startswith("ale.")}
    off_gpe = tiny("full", ale=False, gpe=True)
    off_gpe.load_state_dict(state)
    x = scene()
    with torch.no_grad():
        for m in (on, off_gpe):
            m.lcc["medium"].gamma.fill_(0.5)
        a, b = on.eval()(x).logits, off_gpe.eval()(x).logits
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # ALE's gate starts at 0
        on.ale.gamma.fill_(1.0)
        c = on(x).logits
    assert not torch.allclose(a, c, atol=1e-4)
    assert [len(tiny("full", ale_order=k).ale.local) + 2 * len(tiny("full", ale_order=k).ale.medium)
            for k in (1, 2, 3)] == [1, 4, 7]  # Fig. 13 (c), (d), (e)


# -- roles --------------------------------------------------------------------------------------

def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_role_round_trip_and_errors():
    local, medium, large = tiny("local", seed=10), tiny("medium", seed=11), tiny("large", seed=12)
    m2 = tiny("medium", seed=13)
    m2.load_role("local", local.state_dict())
    assert _same(m2.fcn, local.fcn) and not _same(m2.lcc, medium.lcc)
    full = tiny("full", seed=14)
    fresh = tiny("full", seed=14)
    full.load_role("medium", medium.state_dict())
    full.load_role("large", large.state_dict())
    assert _same(full.fcn, medium.fcn) and _same(full.enc_medium, medium.fcn.trunk)
    assert _same(full.enc_large, large.fcn.trunk) and not _same(full.enc_large, medium.fcn.trunk)
    assert _same(full.lcc, fresh.lcc) and _same(full.mcf, fresh.mcf)  # no correlation carries over
    with pytest.raises(ValueError, match="not a medium-context"):
        full.load_role("medium", local.state_dict())
    with pytest.raises(ValueError, match="takes no 'global'"):
        full.load_role("global", medium.state_dict())
    with pytest.raises(ValueError, match="takes no 'local'"):
        full.load_role("local", local.state_dict())
    wide = tiny("medium", width=48).state_dict()
    with pytest.raises(ValueError, match="misshaped fcn.conv6.weight"):
        full.load_role("medium", wide)
    partial = {k: v for k, v in medium.state_dict().items() if k != "fcn.trunk.features.0.bias"}
    with pytest.raises(ValueError, match="missing fcn.trunk.features.0.bias"):
        full.load_role("medium", partial)
    dg = FCtL(3, **{**TINY, "large_context": "global"}, stage="full")
    dg.load_role("local", local.state_dict())
    dg.load_role("large", tiny("local", seed=15).state_dict())  # the thumbnail FCN-8s: no correlation
    assert _same(dg.fcn, local.fcn)


def test_cpu_preset_is_fctl():
    model = FCtL(2, **PRESET_KWARGS["fctl-cpu"])
    assert model.min_side == 256 and model.backbone_name == "vgg11/8"
    assert set(model.parts()) == {"trunk", "conv6", "conv7", "heads", "fctl", "ale", "enc_medium", "enc_large"}
    assert len(PatchGrid(512, 512, 256).boxes()) == 9 and PatchGrid(512, 512, 256).xs == [0, 128, 256]


# -- the shipped stage configs ------------------------------------------------------------------

@pytest.mark.parametrize("chain", ["riverworld", "deepglobe"])
def test_stage_configs_chain(chain):
    from pathlib import Path

    from elegantviz.config import load_config

    paths = sorted((Path(__file__).parents[1] / "elegantviz" / "configs").glob(f"fctl-{chain}-*.yaml"))
    cfgs = [load_config(p) for p in paths]
    stages = [c.model.overrides["stage"] for c in cfgs]
    assert stages == ["local", "medium", "large", "full"]
    out_of = {s: c.out_dir for s, c in zip(stages, cfgs)}
    for cfg in cfgs:
        with torch.device("meta"):
            model = FCtL(7, **{**PRESET_KWARGS[cfg.model.name], **cfg.model.overrides})
        assert set(model.required_roles) <= set(cfg.model.init) <= set(model.init_roles), cfg.out_dir
        for role, path in cfg.model.init.items():
            assert path == f"{out_of[role]}/best.pt"  # each role is the stage of its name
        assert cfg.optim.optimizer == "adam" and cfg.optim.schedule == "poly" and cfg.optim.power == 0.9
    if chain == "riverworld":
        assert sum(c.iters for c in cfgs) == 2000 and {c.model.name for c in cfgs} == {"fctl-cpu"}
    else:
        assert {c.optim.lr for c in cfgs} == {5e-5} and {c.optim.accumulate for c in cfgs} == {6}
        assert all(c.model.overrides["large_context"] == "global" for c in cfgs)


def test_channels_last_gives_the_same_logits():
    a, b = tiny("full", seed=5), tiny("full", seed=5, channels_last=True)
    assert b.fcn.trunk.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for m in (a, b):
            m.lcc["medium"].gamma.fill_(0.5)
            m.ale.gamma.fill_(0.5)
        torch.testing.assert_close(a.eval()(scene()).logits, b.eval()(scene()).logits, rtol=1e-4, atol=1e-4)
