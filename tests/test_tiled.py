"""Tiled (bounded-memory) holistic inference equals the plain whole-image forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elegantviz.inference import tile_grid
from elegantviz.inference.tiles import backbone_halos, forward_halo_tiles, predict_halo_tiles
from elegantviz.models import build_model
from elegantviz.models.receptive import reach

VARIANTS = {
    # (preset overrides, image size, tile, feature tile): sizes that are not multiples of 32
    # exercise the padding; small feature tiles split the feature passes too
    "stride8": (dict(dim=16, hidden_dim=16), (180, 220), 64, 8),
    "stride4": (dict(output_stride=4, dim=16, hidden_dim=16), (240, 250), 128, 20),
}


def _model(overrides: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("elegantseg-cpu", 5, 4, **overrides).eval()
    # random BN statistics, so that the normalisation is not the identity
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # ECR's residual open and its projections away from the identity, MLK's units weighing in,
    # so that the tiled ECR update and the units are really compared (at init both are ~identity)
    with torch.no_grad():
        if model.ecr is not None:
            model.ecr.gamma.uniform_(0.5, 1.5)
            model.ecr.query.add_(0.3 * torch.randn_like(model.ecr.query))
            model.ecr.out.add_(0.3 * torch.randn_like(model.ecr.out))
            model.ecr.out_bias.uniform_(-0.5, 0.5)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.uniform_(0.5, 1.0)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def case(request):
    overrides, (h, w), tile, feature_tile = VARIANTS[request.param]
    model = _model(overrides)
    x = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x, return_evidence=True)
    out = forward_halo_tiles(model, x, tile=tile, maps_dtype=torch.float32, return_logits=True, feature_tile=feature_tile)
    return ref, out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def test_tiled_logits_and_prediction_equal_plain(case):
    ref, out = case
    assert out.logits.shape == ref.logits.shape
    assert _rel(out.logits, ref.logits) < 1e-4
    assert _rel(out.aux_logits, ref.aux_logits) < 1e-4
    top2 = ref.logits.topk(2, dim=1).values[0]
    clear = (top2[0] - top2[1]) > 1e-4 * ref.logits.abs().max()  # not a (near) tie
    plain = ref.logits.argmax(1)[0]
    assert torch.equal(out.pred.long()[clear], plain[clear])
    assert (out.pred.long() != plain).float().mean() < 1e-3


def test_tiled_evidence_equals_plain(case):
    ref, out = case
    ev, tev = ref.evidence, out.evidence()
    assert tev.feature_size == ev.feature_size and tev.output_stride == ev.output_stride
    assert _rel(tev.margin, ev.margin) < 1e-4
    assert set(tev.hard_indices[0].tolist()) == set(ev.hard_indices[0].tolist())
    assert torch.equal(out.hard_mask(), ev.hard_mask()[0])
    assert _rel(tev.keys, ev.keys) < 1e-4
    assert _rel(tev.context, ev.context) < 1e-4
    order_t, order_p = tev.hard_indices[0].argsort(), ev.hard_indices[0].argsort()
    assert _rel(tev.queries[..., order_t], ev.queries[..., order_p]) < 1e-4
    n = ev.feature_size[0] * ev.feature_size[1]
    assert _rel(out.attention, ev.attention_map(0) * n) < 1e-4


def test_seg_output_round_trip(case):
    ref, out = case
    seg = out.seg_output()
    assert seg.logits is out.logits and seg.evidence.keys.shape == ref.evidence.keys.shape


def test_halo_too_small_differs(monkeypatch):
    """The halos are what makes tiling exact: without them the tiles' zero borders leak in."""
    model = _model(dict(dim=16, hidden_dim=16), seed=4)
    x = torch.randn(1, 4, 128, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x, return_evidence=True)
    monkeypatch.setattr(tile_grid, "tile_halo", lambda depth: 0)
    bad = forward_halo_tiles(model, x, tile=64, maps_dtype=torch.float32, return_logits=True)
    assert _rel(bad.aux_logits, ref.aux_logits) > 1e-2


def test_forward_tiled_matches_forward_holistic():
    """The predictor's drop-in: same maps, dtypes and (up to rounding) values."""
    from elegantviz.inference.whole import predict_whole

    model = _model(dict(dim=16, hidden_dim=16), seed=2)
    image = np.random.default_rng(3).standard_normal((4, 100, 120)).astype(np.float32)
    whole = predict_whole(model, image, torch.device("cpu"))
    tiled = predict_halo_tiles(model, image, torch.device("cpu"), tile=32)
    a, b = whole.arrays(), tiled.arrays()
    assert set(a) == set(b) and whole.scalars() == tiled.scalars()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
    assert (a["labels"] != b["labels"]).mean() < 1e-3
    np.testing.assert_array_equal(a["hard"], b["hard"])
    for key in ("margin", "attention"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-4 * np.abs(a[key]).max())
    for key in ("keys", "queries"):  # float16 maps: compare at float16 precision
        np.testing.assert_allclose(b[key].astype(np.float32), a[key].astype(np.float32), rtol=2e-3,
                                   atol=1e-3 * np.abs(a[key].astype(np.float32)).max())


def test_backbone_halos_follow_the_receptive_fields():
    """W18: one module's radius is 8 3x3 convs of its coarsest branch, 64 / 128 / 256 px in
    stages 2 / 3 / 4, i.e. the issue's receptive fields 136 / 272 / 544 px (2 r + one cell)."""
    with torch.device("meta"):
        model = build_model("elegantseg-s", 24, 4, channels_last=False)
    halos = backbone_halos(model)
    assert halos["stem"] == 24
    for stage, (r, cell) in {2: (64, 8), 3: (128, 16), 4: (256, 32)}.items():
        radii = {v for k, v in halos.items() if k.startswith(f"stage{stage}.")}
        assert radii == {r} and 2 * r + cell == {2: 136, 3: 272, 4: 544}[stage]
    assert reach(model.context).depth == 2 + 15  # 5x5 then the 31x31 depthwise, feature px


def test_tiled_equals_plain_in_float64():
    """In float64 rounding vanishes: agreement to ~1e-12 shows that the tiling itself is exact
    (in float32, random-init activations of ~1e5 turn reassociation into ~1e-6..1e-3 relative
    differences of the logits, depending on cancellation)."""
    model = _model(dict(output_stride=4, dim=16, hidden_dim=16), seed=6).double()
    x = torch.randn(1, 4, 170, 180, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        ref = model(x, return_evidence=True)
    out = forward_halo_tiles(model, x, tile=64, maps_dtype=torch.float64, return_logits=True)
    ev, tev = ref.evidence, out.evidence()
    assert _rel(out.logits, ref.logits) < 1e-10 and _rel(out.aux_logits, ref.aux_logits) < 1e-10
    assert torch.equal(out.pred.long(), ref.logits.argmax(1)[0])
    assert torch.equal(out.hard_mask(), ev.hard_mask()[0])
    assert _rel(tev.context, ev.context) < 1e-10 and _rel(tev.keys, ev.keys) < 1e-8


def test_maps_stream_into_sinks(monkeypatch):
    """With ``maps_to`` the keys and queries go core by core into the sinks: no whole-scene tensor
    of them is allocated, every core is written, and they equal the in-memory maps."""
    model = _model(dict(output_stride=4, dim=16, hidden_dim=16), seed=8)
    x = torch.randn(1, 4, 150, 170, generator=torch.Generator().manual_seed(9))
    shapes, real_empty = [], torch.empty

    def empty(*size, **kw):
        shapes.append(tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size)
        return real_empty(*size, **kw)

    monkeypatch.setattr(torch, "empty", empty)
    ref = forward_halo_tiles(model, x, tile=64, feature_tile=12)
    whole = tuple(ref.keys.shape)
    assert whole in shapes  # the spy sees the in-memory maps
    shapes.clear()
    sinks = {}

    def maps_to(key, shape):
        sinks[key] = np.full(shape, np.nan, np.float16)
        return sinks[key]

    out = forward_halo_tiles(model, x, tile=64, feature_tile=12, maps_to=maps_to)
    monkeypatch.undo()
    assert whole not in shapes and set(sinks) == {"keys", "queries"}
    assert out.keys is sinks["keys"] and out.queries is sinks["queries"]
    for key in sinks:
        assert sinks[key].shape == whole and not np.isnan(sinks[key]).any(), key
        np.testing.assert_array_equal(sinks[key], getattr(ref, key).numpy())
    ev, tev = ref.evidence(), out.evidence()  # read back from the sinks
    assert torch.equal(tev.keys, ev.keys) and torch.equal(tev.queries, ev.queries)
    assert torch.equal(out.pred, ref.pred) and torch.equal(out.attention, ref.attention)
