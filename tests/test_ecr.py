"""ECR against independent computations: explicit attention, brute-force sorting."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from elegantviz.models.ecr import ECR, efficient_attention, logit_margin, num_hard, select_hard


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _explicit(hard, feats, norm):
    """(rho_q(Q)^T rho_k(K)) V with the m x N attention map built in full."""
    n_pos = feats.shape[-1]
    if norm == "softmax":
        q, k = hard.softmax(dim=1), feats.softmax(dim=2)
    else:
        q, k = hard / math.sqrt(n_pos), feats / math.sqrt(n_pos)
    attn = torch.einsum("ndm,ndp->nmp", q, k)  # (n, m, N)
    return torch.einsum("nmp,ndp->ndm", attn, feats)


@pytest.mark.parametrize("norm", ["softmax", "scaling"])
def test_efficient_equals_explicit_attention(norm):
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 300, dtype=torch.float64)
    hard = feats[:, :, torch.randperm(300)[:30]]
    att, *_ = efficient_attention(hard, feats, norm)
    ref = _explicit(hard, feats, norm)
    assert torch.allclose(att, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    att32, *_ = efficient_attention(hard.float(), feats.float(), norm)
    assert ((att32.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


@pytest.mark.parametrize("norm", ["softmax", "scaling"])
def test_attention_gradients_equal_explicit_attention(norm, monkeypatch):
    """The key context's own backward (sliced over positions, keys not kept) against autograd
    through the explicit m x N attention, and gradcheck in float64."""
    from elegantviz.models import ecr

    monkeypatch.setattr(ecr, "CONTEXT_CHUNKS", 3)  # 3 uneven slices of 101 positions
    torch.manual_seed(3)
    feats = torch.randn(2, 6, 101, dtype=torch.float64, requires_grad=True)
    hard = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 6, 9, dtype=torch.float64)
    att, *_ = efficient_attention(hard, feats, norm)
    got = torch.autograd.grad(att, (hard, feats), grad)
    ref = torch.autograd.grad(_explicit(hard, feats, norm), (hard, feats), grad)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda h, f: efficient_attention(h, f, norm)[0],
                                    (hard[:1, :, :3], feats[:1, :, :20]))


def test_attention_under_bf16_autocast_runs_in_float32():
    """Autocast (bf16 on CUDA, here on the CPU) must not reach the key context's own backward."""
    torch.manual_seed(4)
    feats = torch.randn(1, 8, 60, requires_grad=True)
    hard = torch.randn(1, 8, 5, requires_grad=True)
    ref = torch.autograd.grad(efficient_attention(hard, feats)[0].sum(), feats)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        att = efficient_attention(hard, feats.bfloat16())[0]
    got = torch.autograd.grad(att.float().sum(), feats)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_scaling_is_dot_product_attention_over_n():
    torch.manual_seed(1)
    feats = torch.randn(1, 8, 50, dtype=torch.float64)
    hard = feats[:, :, :7]
    att, *_ = efficient_attention(hard, feats, "scaling")
    q, k, v = hard[0].T, feats[0].T, feats[0].T  # (m, d), (N, d), (N, d)
    ref = (q @ k.T) @ v / 50
    assert torch.allclose(att[0].T, ref, rtol=1e-10, atol=1e-12)


def test_margin_is_top1_minus_top2():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 4, 3)
    s = logits.sort(dim=1, descending=True).values
    assert torch.equal(logit_margin(logits), s[:, 0] - s[:, 1])


@settings(max_examples=40, deadline=None)
@given(n_pos=st.integers(1, 400), ratio=st.floats(0.001, 1.0), seed=st.integers(0, 2**16), levels=st.integers(1, 1000))
def test_hard_region_equals_brute_force_sort(n_pos, ratio, seed, levels):
    g = torch.Generator().manual_seed(seed)
    # few levels -> many ties; many levels -> (almost) distinct margins
    margin = torch.randint(0, levels, (2, n_pos), generator=g).float()
    idx = select_hard(margin, ratio)
    k = num_hard(n_pos, ratio)
    assert idx.shape == (2, k)
    for row in range(2):
        chosen = idx[row]
        assert chosen.unique().numel() == k
        order = sorted(range(n_pos), key=lambda i: margin[row, i].item())  # brute force
        ref_values = sorted(margin[row, i].item() for i in order[:k])
        assert sorted(margin[row, chosen].tolist()) == ref_values  # same multiset of margins
        if len(set(margin[row].tolist())) == n_pos:  # distinct: the very same pixels
            assert set(chosen.tolist()) == set(order[:k])


def _ecr_inputs(seed, n=2, d=8, c=4, h=9, w=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, h, w, generator=g), torch.randn(n, c, h, w, generator=g)


def _explicit_projected(ecr, hard, feats, norm):
    """The projected form with the explicit map: the queries are W_q F_R, the attended values go
    through W_o and the residual scale."""
    n_pos = feats.shape[-1]
    q = ecr.query @ hard
    q = q.softmax(dim=1) if norm == "softmax" else q / math.sqrt(n_pos)
    k = feats.softmax(dim=2) if norm == "softmax" else feats / math.sqrt(n_pos)
    attn = torch.einsum("ndm,ndp->nmp", q, k)
    attended = torch.einsum("nmp,ndp->ndm", attn, feats)
    return ecr.gamma * (ecr.out @ attended + ecr.out_bias)


def _randomise(ecr, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ecr.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("form", ["paper", "projected"])
@pytest.mark.parametrize("norm", ["softmax", "scaling"])
def test_ecr_changes_only_hard_pixels_and_matches_reference(norm, form):
    feats, aux = _ecr_inputs(3)
    ecr = ECR(feats.shape[1], ratio=0.1, norm=norm, form=form)
    if form == "projected":
        _randomise(ecr)
    out, ev = ecr(feats, aux, return_evidence=True)
    n, d, h, w = feats.shape
    flat, oflat = feats.flatten(2), out.flatten(2)
    margin = logit_margin(aux).flatten(1)
    for b in range(n):
        hard = margin[b].argsort()[: num_hard(h * w, 0.1)]  # brute force (margins are distinct)
        assert set(ev.hard_indices[b].tolist()) == set(hard.tolist())
        outside = torch.ones(h * w, dtype=torch.bool)
        outside[hard] = False
        assert torch.equal(oflat[b][:, outside], flat[b][:, outside])
        fr = flat[b : b + 1, :, hard]
        if form == "paper":
            ref = fr + _explicit(fr, flat[b : b + 1], norm)
        else:
            ref = fr + _explicit_projected(ecr, fr, flat[b : b + 1], norm)
        assert torch.allclose(oflat[b][:, hard], ref[0], rtol=1e-5, atol=1e-5)
    # the two images have different hard regions, each its own
    assert set(ev.hard_indices[0].tolist()) != set(ev.hard_indices[1].tolist())


def test_projected_ecr_starts_as_the_identity_and_learns_its_scale():
    """gamma = 0 at init: the hard features pass unchanged, and the first gradient reaches gamma."""
    feats, aux = _ecr_inputs(6)
    feats.requires_grad_(True)
    ecr = ECR(feats.shape[1], ratio=0.2)
    out, _ = ecr(feats, aux)
    assert torch.equal(out, feats)
    (out * torch.randn_like(out)).sum().backward()
    assert ecr.gamma.grad.abs().sum() > 0
    # the paper's form adds a context of the features' own size to every hard pixel
    paper, ev = ECR(feats.shape[1], ratio=0.2, form="paper")(feats, aux, return_evidence=True)
    changed = (paper - feats).flatten(2).norm(dim=1)
    hard = ev.hard_mask().flatten(1)
    assert (changed[hard] > 0.1 * feats.flatten(2).norm(dim=1)[hard]).all()


def test_ratio_one_selects_everything():
    feats, aux = _ecr_inputs(4)
    out, ev = ECR(feats.shape[1], ratio=1.0, form="paper")(feats, aux, return_evidence=True)
    n, d, h, w = feats.shape
    assert ev.hard_indices.shape == (n, h * w)
    assert ev.hard_mask().all()
    flat = feats.flatten(2)
    ref = flat + _explicit(flat, flat, "softmax")
    assert torch.allclose(out.flatten(2), ref, rtol=1e-5, atol=1e-5)


def test_ties_do_not_crash():
    feats = torch.randn(2, 8, 6, 6)
    aux = torch.zeros(2, 3, 6, 6)  # every margin is 0
    out, ev = ECR(feats.shape[1], ratio=0.1)(feats, aux, return_evidence=True)
    assert out.shape == feats.shape and torch.isfinite(out).all()
    assert ev.hard_indices.shape == (2, num_hard(36, 0.1))
    assert ev.hard_mask().sum().item() == 2 * num_hard(36, 0.1)


def test_evidence_is_consistent():
    feats, aux = _ecr_inputs(5)
    feats.requires_grad_(True)
    ecr = ECR(feats.shape[1], ratio=0.2)
    _randomise(ecr)
    out, ev = ecr(feats, aux, return_evidence=True)
    n, d, h, w = feats.shape
    assert ev.margin.shape == (n, h, w) and ev.feature_size == (h, w)
    assert ev.keys.shape == (n, d, h, w) and ev.context.shape == (n, d, d)
    assert ev.queries.shape == (n, d, ev.hard_indices.shape[1])
    assert not ev.keys.requires_grad and not ev.context.requires_grad
    assert torch.allclose(ev.keys.flatten(2).sum(-1), torch.ones(n, d))  # softmax over positions
    assert torch.allclose(ev.queries.sum(1), torch.ones(n, ev.queries.shape[2]))  # softmax over channels
    # attention map of one hard pixel = its query against every key
    q0 = ev.queries[1][:, 0]
    assert torch.allclose(ev.attention_map(1, 0), torch.einsum("d,dhw->hw", q0, ev.keys[1]))
    out2, ev2 = ecr(feats, aux)
    assert ev2 is None and torch.equal(out, out2)


def test_aux_logits_at_other_resolution_are_resized():
    feats = torch.randn(1, 4, 10, 12)
    aux = torch.randn(1, 3, 40, 48)
    out, ev = ECR(4, 0.1)(feats, aux, return_evidence=True)
    assert ev.margin.shape == (1, 10, 12)


def test_invalid_ratio():
    with pytest.raises(ValueError):
        ECR(4, ratio=0.0)
    with pytest.raises(ValueError):
        ECR(4, ratio=1.5)
