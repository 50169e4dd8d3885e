"""GLNet against independent computations: the official code's parameter counts and FLOPs (full size,
on the meta device), what each stage trains, the linear FPN, shapes on a non-square scene (3 and 4
bands), the loss terms against a hand-written focal loss, a few training steps, the load_role round
trip, the global crops fed to the local branch and the ensemble, the overlap-averaged canvases and
the summed patch logits against direct loops, and the memory devices (checkpointing, recomputing
the local pass) against the plain computation. GLNet has no zero-initialised gate to check."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from elegantviz.losses.glnet import FMREG_WEIGHT, GLNET_TERMS, glnet_loss
from elegantviz.models.fpn import FPNLayers, GlobalFPN, LocalFPN
from elegantviz.models.glnet import PRESET_KWARGS, STAGE_ROLES, GLNet, GLNetOutput
from elegantviz.models.patch_grid import PatchGrid

# a GLNet small enough for tests: half-width-of-half ResNet-18, FPN width 16, 64 px patches and thumbnail
TINY = {"backbone": "resnet18", "backbone_kwargs": {"channels": (8, 16, 32, 64), "stem_width": 8}, "fpn_width": 16,
        "patch_size": 64, "global_size": 64, "sub_batch": 4, "min_overlap": 16}
H, W = 96, 160  # 2 x 3 patches (ys 0, 32; xs 0, 48, 96), thumbnail 40 x 64
GROUPS = ("global_branch.backbone", "global_branch.fpn.plain", "global_branch.fpn.ext", "global_branch.fpn.classify",
          "local_branch", "ensemble", "global_fixed")


def _count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _scramble(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of unit scale (the official N(0, 0.01) FPN init leaves every output near 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 1 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def tiny(stage: str, k: int = 3, c: int = 3, seed: int = 0, **kw) -> GLNet:
    torch.manual_seed(seed)
    return GLNet(k, c, stage=stage, **{**TINY, **kw})


def chain(k: int = 3, c: int = 3, **kw) -> tuple[GLNet, GLNet, GLNet]:
    """Stage 1 -> 2 -> 3 through load_role, every model with weights of its own."""
    m1 = _scramble(tiny("global", k, c, **kw), 1)
    m2 = _scramble(tiny("global2local", k, c, **kw), 2)
    m2.load_role("global", m1.state_dict())
    m3 = _scramble(tiny("local2global", k, c, **kw), 3)
    m3.load_role("global", m1.state_dict())
    m3.load_role("local", m2.state_dict())
    return m1, m2, m3


def _scene(c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, H, W, generator=g)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    labels = ((xx // 40 + yy // 32) % 3)[None]
    x[:, 0] += labels[0].float()  # the classes are visible
    return x, labels


# ---- the official code's sizes --------------------------------------------------------------------
def test_parameter_counts_match_the_official_code():
    """Digest 2.5 (7 classes, RGB), and each part from the layer widths of the official modules."""
    with torch.device("meta"):
        m = GLNet(7, 3, stage="local2global", **PRESET_KWARGS["glnet"])
        m1 = GLNet(7, 3, stage="global", **PRESET_KWARGS["glnet"])
        m2 = GLNet(7, 3, stage="global2local", **PRESET_KWARGS["glnet"])
    parts = {k: _count(*v) for k, v in m.parts().items()}
    c = (256, 512, 1024, 2048)
    plain = sum(_conv(x, 256, 1) for x in c) + 4 * _conv(256, 256, 3) + 4 * _conv(256, 128, 3)
    ext = sum(_conv(2 * x, 256, 1) for x in c) + 4 * _conv(512, 256, 3) + 4 * _conv(512, 128, 3) + _conv(1024, 512, 3)
    assert parts == {"resnet_global": 23_508_032, "fpn_global": plain + _conv(512, 7, 3), "fpn_global_ext": ext,
                     "resnet_local": 23_508_032, "fpn_local": ext + _conv(512, 7, 3), "ensemble": _conv(1024, 7, 3),
                     "global_fixed": 23_508_032 + plain + _conv(512, 7, 3)}
    mio = {k: round(v / 1e6, 2) for k, v in parts.items()}
    assert mio == {"resnet_global": 23.51, "fpn_global": 4.56, "fpn_global_ext": 13.77, "resnet_local": 23.51,
                   "fpn_local": 13.80, "ensemble": 0.06, "global_fixed": 28.06}
    assert round(parts["ensemble"] / 1e3, 1) == 64.5
    assert round((parts["fpn_global"] + parts["fpn_global_ext"]) / 1e6, 2) == 18.32
    assert _count(m) == sum(parts.values())
    assert round((_count(m) - parts["global_fixed"]) / 1e6, 2) == 79.20  # the official `fpn` module
    assert round(_count(m) / 1e6, 1) == 107.3  # resident at stage-3 inference
    assert _count(m1) == parts["global_fixed"]  # stage 1: the global model alone
    assert set(m2.parts()) == {"resnet_global", "fpn_global", "resnet_local", "fpn_local", "ensemble"}
    assert m.min_side == 508 and m.backbone_name == "resnet50.tv_in1k"


def test_flops_match_the_official_figures():
    """Digest 2.5 (2 x MAC at 508): thumbnail 85.6, a local patch 279.9, the global pass with _ext 279.9,
    the ensemble 2.1 per patch; a 1016 px scene (3 x 3 patches) is their sum."""
    from torch.utils.flop_counter import FlopCounterMode

    def gflops(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    with torch.device("meta"):
        m = GLNet(7, 3, stage="local2global", **PRESET_KWARGS["glnet"]).eval()
        x, g = torch.empty(1, 3, 508, 508), m.global_fixed
        _, pyr, ps3 = g.fpn(g.backbone(x))
        local_ps3 = m.local_pass(x, pyr, [(0, 0)], (2448, 2448))[2]
        parts = {"thumbnail": gflops(lambda: g.fpn(g.backbone(x))),
                 "patch": gflops(lambda: m.local_pass(x, pyr, [(0, 0)], (2448, 2448))),
                 "ext": gflops(lambda: m.global_branch.fpn(m.global_branch.backbone(x), pyr)),
                 "ensemble": gflops(lambda: m.ensemble_logits(local_ps3, ps3, [(0, 0)], (2448, 2448)))}
        total = gflops(lambda: m(torch.empty(1, 3, 1016, 1016)))
    assert {k: round(v, 1) for k, v in parts.items()} == {"thumbnail": 85.6, "patch": 279.9, "ext": 279.9,
                                                         "ensemble": 2.1}
    assert total == pytest.approx(parts["thumbnail"] + 9 * parts["patch"] + parts["ext"] + 9 * parts["ensemble"])
    assert round((parts["thumbnail"] + 36 * parts["patch"] + parts["ext"] + 36 * parts["ensemble"]) / 1e3, 1) == 10.5


# ---- what each stage trains ---------------------------------------------------------------------
@pytest.mark.parametrize("stage, trained", [
    ("global", {"global_branch.backbone", "global_branch.fpn.plain", "global_branch.fpn.classify"}),
    ("global2local", {"local_branch", "ensemble"}),
    ("local2global", {"global_branch.backbone", "global_branch.fpn.ext", "global_branch.fpn.classify", "ensemble"}),
])
def test_each_stage_trains_exactly_its_parts(stage, trained):
    m = tiny(stage).train()
    grad: dict[str, set] = {}
    for name, p in m.named_parameters():
        group = next(g for g in GROUPS if name.startswith(g + "."))
        grad.setdefault(group, set()).add(p.requires_grad)
    assert all(len(v) == 1 for v in grad.values())  # a part is trained or frozen as a whole
    assert {g for g, v in grad.items() if True in v} == trained
    for name, mod in m.named_modules():
        group = next((g for g in GROUPS if name == g or name.startswith(g + ".")), None)
        if group is not None:
            assert mod.training == (group in trained or group not in grad), name  # frozen parts stay in eval
    assert m.loss_terms == GLNET_TERMS[stage]
    assert m.init_roles == m.required_roles == STAGE_ROLES[stage]


@pytest.mark.parametrize("stage", ["global2local", "local2global"])
def test_a_training_step_leaves_the_frozen_parts_as_they_were(stage):
    m = chain()[1 if stage == "global2local" else 2].train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=5e-4)  # frozen parameters included, as the trainer
    x, labels = _scene()
    glnet_loss(m(x, upsample=False), labels)[0].backward()
    opt.step()
    after = m.state_dict()
    frozen = [g for g in GROUPS if all(not p.requires_grad for n, p in m.named_parameters() if n.startswith(g + "."))]
    for k in before:
        moved = not torch.equal(before[k], after[k])
        if any(k.startswith(g + ".") for g in frozen):
            assert not moved, k  # weights and BatchNorm statistics
    assert not torch.equal(before["ensemble.weight"], after["ensemble.weight"])


def test_the_fpn_is_linear_and_initialised_as_the_official_code():
    """No norm and no activation: f(a x) - f(0) = a (f(x) - f(0)); convs N(0, 0.01), bias 0."""
    m = GLNet(5, 3, stage="local2global", **PRESET_KWARGS["glnet-cpu"])
    for fpn in (m.global_branch.fpn, m.local_branch.fpn):
        assert {type(mod) for mod in fpn.modules()} <= {GlobalFPN, LocalFPN, FPNLayers, torch.nn.ModuleList,
                                                        torch.nn.Conv2d}
    weights = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if ".fpn." in n and n.endswith("weight")]
                        + [m.ensemble.weight.detach().flatten()])
    biases = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if ".fpn." in n and n.endswith("bias")])
    assert abs(float(weights.std()) - 0.01) < 5e-4 and abs(float(weights.mean())) < 5e-4
    assert torch.count_nonzero(biases) == 0
    layers = _scramble(FPNLayers((8, 16, 32, 64), 16, fold=1), 0).double()
    c = [torch.randn(1, ch, s, s, dtype=torch.float64) for ch, s in zip((8, 16, 32, 64), (16, 8, 4, 2))]
    f = lambda xs: layers(xs)[1]  # noqa: E731
    zero = f([torch.zeros_like(t) for t in c])
    torch.testing.assert_close(f([2.5 * t for t in c]) - zero, 2.5 * (f(c) - zero))


# ---- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [3, 4])
def test_shapes_in_eval_and_training_on_a_non_square_scene(c):
    x, _ = _scene(c)
    models = chain(k=5, c=c)
    assert models[0].thumbnail_size(H, W) == (40, 64) and models[0].thumbnail_size(W, H) == (64, 40)
    assert len(PatchGrid(H, W, 64, 16)) == 6
    for m in models:
        with torch.no_grad():
            out = m.eval()(x, return_evidence=True)
        assert out.logits.shape == (1, 5, H, W) and out.logits.dtype == torch.float32 and out.stride == 1
        assert out.aux_logits is None and out.evidence is None
        views = {"global"} if m.stage == "global" else {"global", "local"}
        assert set(out.views) == views
        assert all(v.shape == (1, H, W) and v.dtype == torch.int64 for v in out.views.values())
        tr = m.train()(x, upsample=False)
        assert isinstance(tr, GLNetOutput) and tr.loss_kind == "glnet" and tr.stage == m.stage
        if m.stage in ("global", "local2global"):
            assert tr.global_logits.shape == (1, 5, 10, 16)  # 1/4 of the 40 x 64 thumbnail
        if m.stage != "global":
            assert [len(b) for b in tr.boxes] == [4, 2] and tr.patch_size == 64
            assert [t.shape for t in tr.ensemble_logits] == [(4, 5, 16, 16), (2, 5, 16, 16)]
        if m.stage == "global2local":
            assert [t.shape for t in tr.local_logits] == [(4, 5, 16, 16), (2, 5, 16, 16)]
            assert [t.shape for t in tr.fmreg] == [(), ()]


def test_thumbnail_fit_and_size_limits():
    sq = tiny("global", global_fit="square")
    assert sq.thumbnail_size(H, W) == (64, 64)
    with torch.no_grad():
        assert sq.eval()(_scene()[0]).logits.shape == (1, 3, H, W)
    m = tiny("global")
    assert m.min_side == 64
    with pytest.raises(ValueError, match="at least 64 px"):
        m(torch.zeros(1, 3, 60, 200))
    with pytest.raises(ValueError, match="one whole scene"):
        m(torch.zeros(2, 3, 64, 64))
    for bad in ({"stage": "joint"}, {"global_size": 66}, {"global_fit": "wide"}):
        with pytest.raises(ValueError):
            GLNet(3, 3, **{**TINY, **bad})
    cpu = GLNet(5, 4, stage="global", **PRESET_KWARGS["glnet-cpu"])
    assert cpu.min_side == 256 and PatchGrid(512, 512, cpu.patch_size).ys == [0, 128, 256]  # 3 x 3 patches


# ---- the loss -----------------------------------------------------------------------------------
def _focal(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Focal loss, gamma 3, labels taken at the centres of the 4 x 4 cells (nearest to 1/4)."""
    lab = labels[:, 2::4, 2::4]
    pt = logits.softmax(1).gather(1, lab[:, None])[:, 0].clamp(1e-7, 1 - 1e-7)
    return (-((1 - pt) ** 3) * pt.log()).mean()


def test_loss_terms_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (1, 128, 192), generator=g)
    boxes = [[(0, 0), (0, 64)], [(64, 128)]]
    patch = lambda b: torch.stack([labels[0, y : y + 64, x : x + 64] for y, x in b])  # noqa: E731
    loc = [torch.randn(len(b), 4, 16, 16, generator=g) for b in boxes]
    ens = [torch.randn(len(b), 4, 16, 16, generator=g) for b in boxes]
    glob = torch.randn(1, 4, 32, 48, generator=g)
    fm = [torch.tensor(0.3), torch.tensor(0.5)]
    base = {"aux_logits": None, "boxes": boxes, "patch_size": 64}
    total, terms = glnet_loss(GLNetOutput(glob, stage="global", global_logits=glob, **base), labels)
    assert list(terms) == ["global"] and float(total) == pytest.approx(float(_focal(glob, labels)), rel=1e-5)
    out2 = GLNetOutput(ens[0], stage="global2local", local_logits=loc, ensemble_logits=ens, fmreg=fm, **base)
    total, terms = glnet_loss(out2, labels)
    want = {"local": sum(_focal(t, patch(b)) for t, b in zip(loc, boxes)),
            "ensemble": sum(_focal(t, patch(b)) for t, b in zip(ens, boxes)), "fmreg": 0.8}
    assert list(terms) == ["local", "ensemble", "fmreg"]
    assert {k: float(v) for k, v in terms.items()} == pytest.approx({k: float(v) for k, v in want.items()}, rel=1e-5)
    assert float(total) == pytest.approx(float(want["local"] + want["ensemble"]) + FMREG_WEIGHT * 0.8, rel=1e-5)
    out3 = GLNetOutput(ens[0], stage="local2global", global_logits=glob, ensemble_logits=ens, **base)
    total, terms = glnet_loss(out3, labels)
    assert list(terms) == ["global", "ensemble"]
    assert float(total) == pytest.approx(float(_focal(glob, labels) + want["ensemble"]), rel=1e-5)


@pytest.mark.parametrize("stage", ["global", "global2local", "local2global"])
def test_the_training_loss_decreases(stage):
    m = chain()[("global", "global2local", "local2global").index(stage)].train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    x, labels = _scene()
    losses = []
    for _ in range(8):
        total, terms = glnet_loss(m(x, upsample=False), labels)
        assert tuple(terms) == m.loss_terms and all(t.dim() == 0 and not t.requires_grad for t in terms.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


# ---- load_role ----------------------------------------------------------------------------------
def test_load_role_round_trip_and_refusals():
    m1, m2, m3 = chain()
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    for k, v in s1.items():
        assert torch.equal(s2[k], v) and torch.equal(s3[k], v), k  # stage 1's global branch, plain path
        assert torch.equal(s3[k.replace("global_branch.", "global_fixed.", 1)], v), k
    for k, v in s2.items():
        if k.startswith(("local_branch.", "ensemble.")):
            assert torch.equal(s3[k], v), k
    fresh = tiny("local2global", seed=7)
    ext = {k: v for k, v in fresh.state_dict().items() if ".fpn.ext." in k}
    assert ext and all(k not in s1 for k in ext)  # the _ext layers start from their own init
    with pytest.raises(ValueError, match="takes no 'local' checkpoint"):
        m2.load_role("local", s2)
    with pytest.raises(ValueError, match="takes no 'global' checkpoint"):
        m1.load_role("global", s1)
    with pytest.raises(ValueError, match=r"missing \d+ keys \(global_branch\."):
        m3.load_role("global", {k: v for k, v in s1.items() if "backbone" not in k})
    with pytest.raises(ValueError, match="misshaped global_branch.fpn.classify.weight"):
        m2.load_role("global", tiny("global", k=4).state_dict())  # 4 classes, not 3
    with pytest.raises(ValueError, match="missing .*local_branch"):
        m3.load_role("local", s1)
    assert torch.equal(m3.state_dict()["ensemble.weight"], s2["ensemble.weight"])  # a refused load changes nothing


# ---- the method: crops, canvases, summed logits ---------------------------------------------------
def _footprint(y: int, x: int, hw: tuple[int, int], patch: int = 64) -> tuple[int, int, int, int]:
    h, w = hw
    ph, pw = round(h * patch / H), round(w * patch / W)
    return min(round(y / H * h), h - ph), min(round(x / W * w), w - pw), ph, pw


def _capture(module: torch.nn.Module, store: list, pre: bool = False):
    if pre:
        return module.register_forward_pre_hook(lambda mod, args: store.append(args))
    return module.register_forward_hook(lambda mod, args, out: store.append(out))


def test_the_local_branch_and_the_ensemble_get_the_global_crops_of_their_patch():
    m = chain()[1].eval()
    x, _ = _scene()
    glob, fed, ens_in = [], [], []
    _capture(m.global_branch.fpn, glob)
    _capture(m.local_branch.fpn, fed, pre=True)
    _capture(m.ensemble, ens_in, pre=True)
    with torch.no_grad():
        m(x)
    (_, gpyr, gps3), boxes = glob[0], PatchGrid(H, W, 64, 16).boxes()
    assert len(fed) == 2
    for sub, ((c, crops), (ens,)) in enumerate(zip(fed, ens_in)):
        for i, (y, x0) in enumerate(boxes[4 * sub : 4 * sub + 4]):
            for gmap, crop, local in zip(gpyr.maps(), crops.maps(), [*c, *c, *c, *c]):
                t, l, ph, pw = _footprint(y, x0, gmap.shape[-2:])
                want = F.interpolate(gmap[:, :, t : t + ph, l : l + pw], size=local.shape[-2:], mode="bilinear")
                torch.testing.assert_close(crop[i : i + 1], want)
            t, l, ph, pw = _footprint(y, x0, gps3.shape[-2:])
            want = F.interpolate(gps3[:, :, t : t + ph, l : l + pw], size=(16, 16), mode="bilinear")
            torch.testing.assert_close(ens[i : i + 1, 32:], want)  # [local ps3 (32) | global ps3 crop (32)]


def test_canvases_views_and_summed_logits_against_direct_loops():
    m = chain()[2].eval()
    x, _ = _scene()
    local_out, canv, ens_out, glob_out = [], [], [], []
    _capture(m.local_branch.fpn, local_out)
    _capture(m.global_branch.fpn, canv, pre=True)
    _capture(m.ensemble, ens_out)
    _capture(m.global_branch.fpn, glob_out)
    with torch.no_grad():
        out = m(x, return_evidence=True)
    boxes = PatchGrid(H, W, 64, 16).boxes()
    counts = torch.zeros(H, W)
    for y, x0 in boxes:
        counts[y : y + 64, x0 : x0 + 64] += 1
    canvases = canv[0][1]
    local_maps = [torch.cat(parts) for parts in zip(*(o[1].maps() for o in local_out))]  # per map, all 6 patches
    for canvas, maps in zip(canvases.maps(), local_maps):
        want = torch.zeros_like(canvas)
        for i, (y, x0) in enumerate(boxes):
            t, l, ph, pw = _footprint(y, x0, canvas.shape[-2:])
            want[:, :, t : t + ph, l : l + pw] += F.interpolate(maps[i : i + 1], size=(ph, pw), mode="bilinear")
        want /= F.interpolate(counts[None, None], size=canvas.shape[-2:], mode="bilinear")
        torch.testing.assert_close(canvas, want)
    summed, local_sum = torch.zeros(1, 3, H, W), torch.zeros(1, 3, H, W)
    ens, loc = torch.cat(ens_out), torch.cat([o[0] for o in local_out])
    for i, (y, x0) in enumerate(boxes):
        summed[:, :, y : y + 64, x0 : x0 + 64] += ens[i].repeat_interleave(4, 1).repeat_interleave(4, 2)
        local_sum[:, :, y : y + 64, x0 : x0 + 64] += loc[i].repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(out.logits, summed)  # nearest upsampling, summed over the overlaps
    assert torch.equal(out.views["local"], local_sum.argmax(1))
    g = glob_out[0][0]  # (1, 3, 10, 16) at 1/4 of the 40 x 64 thumbnail
    rows, cols = (torch.arange(H) * 10 // H), (torch.arange(W) * 16 // W)
    assert torch.equal(out.views["global"], g[:, :, rows][:, :, :, cols].argmax(1))


def test_recomputing_the_local_pass_and_reporting_progress():
    m = chain()[2].eval()
    x, _ = _scene()
    seen = []
    with torch.no_grad():
        kept = m(x, progress=seen.append).logits
        m.keep_local_ps3 = False
        again = m(x).logits
    torch.testing.assert_close(again, kept, rtol=0, atol=0)
    assert seen == [4, 2]
    for stage_model in chain()[:2]:
        seen = []
        with torch.no_grad():
            stage_model.eval()(x, progress=seen.append)
        assert sum(seen) == 6


def test_checkpointing_the_sub_batches_trains_exactly_like_the_plain_step():
    """Stage 2: same loss, same gradients; BatchNorm statistics move once per sub-batch, as plain."""
    x, labels = _scene()
    runs = []
    for ckpt in (False, True):
        m = chain()[1]
        m.checkpoint = ckpt
        m.train()
        total, terms = glnet_loss(m(x, upsample=False), labels)
        total.backward()
        runs.append((float(total.detach()), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None},
                     {k: v.clone() for k, v in m.state_dict().items()}))
    (l0, g0, s0), (l1, g1, s1) = runs
    assert l0 == l1 and g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7)
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=0, atol=0)
    tracked = s1["local_branch.backbone.bn1.num_batches_tracked"]
    assert int(tracked) == 2  # two sub-batches (4 + 2 patches)


# ---- configs ------------------------------------------------------------------------------------
CONFIGS = Path(__file__).parents[1] / "elegantviz" / "configs"


@pytest.mark.parametrize("dataset", ["riverworld", "deepglobe"])
def test_stage_configs_chain_their_roles(dataset):
    files = sorted(CONFIGS.glob(f"glnet-{dataset}-*.yaml"))
    assert [f.stem.split("-", 3)[3] for f in files] == ["global", "global2local", "local2global"]
    cfgs = [yaml.safe_load(f.read_text()) for f in files]
    outs = {}
    for cfg, stage in zip(cfgs, ("global", "global2local", "local2global")):
        model = cfg["model"]
        assert model["overrides"]["stage"] == stage
        assert set(model.get("init", {})) == set(STAGE_ROLES[stage])
        source = {"global": "global", "local": "global2local"}
        for role, path in model.get("init", {}).items():
            assert path == f"{outs[source[role]]}/best.pt"
        outs[stage] = cfg["out_dir"]
        assert cfg["optim"]["optimizer"] == "adam" and cfg["optim"]["schedule"] == "poly"
        assert cfg["precise_bn"] == 0 and cfg["memory"] == {"policy": "none"}
    if dataset == "riverworld":
        assert sum(c["iters"] for c in cfgs) == 2000
        assert {c["model"]["name"] for c in cfgs} == {"glnet-cpu"}
