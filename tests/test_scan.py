"""The global sweep path (models/scan.py) against an independent element-by-element recurrence,
its zero start, its reach across the whole map, and the executors that cannot run it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elegantviz.errors import InputError
from elegantviz.models.elegantseg import ElegantSeg
from elegantviz.models.scan import GlobalSweep, sweep_down


def brute_sweep(x: np.ndarray, gates: np.ndarray, border: np.ndarray, direction: str) -> np.ndarray:
    """The recurrence by explicit indices in the sweep's own direction (no flips, no transposes):
    ``x`` (c, H, W), ``gates`` (3, c, H, W) with k = 0, 1, 2 the neighbours -1, 0, +1 across."""
    c, h, w = x.shape
    out = np.zeros_like(x)
    if direction in ("down", "up"):
        steps, across = (range(h) if direction == "down" else range(h - 1, -1, -1)), w
        at = lambda t, i: (slice(None), t, i)  # noqa: E731
    else:
        steps, across = (range(w) if direction == "right" else range(w - 1, -1, -1)), h
        at = lambda t, i: (slice(None), i, t)  # noqa: E731
    prev = None
    for t in steps:
        for i in range(across):
            g = [gates[(k, *at(t, i))] for k in range(3)]
            carried = np.zeros(c)
            for k, j in enumerate((i - 1, i, i + 1)):
                if 0 <= j < across:
                    carried += g[k] * (border if prev is None else out[at(prev, j)])
            out[at(t, i)] = (1 - sum(g)) * x[at(t, i)] + carried
        prev = t
    return out


def test_sweep_down_equals_the_recurrence_element_by_element():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 6, 5))
    raw = np.tanh(rng.normal(size=(2, 3, 3, 6, 5)))
    gates = raw / np.maximum(np.abs(raw).sum(1, keepdims=True), 1.0)
    border = rng.normal(size=3)
    got = sweep_down(torch.from_numpy(x), torch.from_numpy(gates), torch.from_numpy(border)).numpy()
    for n in range(2):
        np.testing.assert_allclose(got[n], brute_sweep(x[n], gates[n], border, "down"), rtol=1e-12, atol=1e-12)


def test_the_four_directions_each_equal_their_own_recurrence():
    torch.manual_seed(0)
    m = GlobalSweep(8, hidden=4).double().eval()
    with torch.no_grad():
        m.border.normal_()
        m.gamma.fill_(1.0)
    x = torch.randn(1, 8, 7, 9, dtype=torch.float64)
    y = m.norm(x)
    values = m.values(y).view(1, 4, 4, 7, 9)
    raw = torch.tanh(m.gates(y)).view(1, 4, 3, 4, 7, 9)
    gates = raw / raw.abs().sum(2, keepdim=True).clamp(min=1.0)
    swept = [torch.from_numpy(brute_sweep(values[0, d].detach().numpy(), gates[0, d].detach().numpy(),
                                          m.border[d].detach().numpy(), direction))
             for d, direction in enumerate(m.DIRECTIONS)]
    want = x + m.out(torch.cat(swept)[None])
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


def test_zero_start_then_the_whole_map_is_in_reach():
    torch.manual_seed(0)
    m = GlobalSweep(8, hidden=4).eval()
    x = torch.randn(1, 8, 32, 32)
    assert torch.equal(m(x), x)  # gamma starts at 0: adding the path leaves a model unchanged
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x.requires_grad_(True)
    m(x)[0, :, -1, -1].sum().backward()  # the far corner's output ...
    assert x.grad[0, :, 0, 0].abs().sum() > 0  # ... depends on the first pixel, 31 rows and columns away


def test_elegantseg_with_a_sweep_keeps_its_activations_at_scale_and_refuses_tiles():
    torch.manual_seed(0)
    model = ElegantSeg(num_classes=5, backbone="hrnet_w18_small", in_chans=4, dim=32, hidden_dim=32,
                       global_path="sweep")
    with torch.no_grad():
        model.sweep.gamma.fill_(1.0)
    model.eval()
    scale = {}
    handles = [mod.register_forward_hook(lambda _m, i, o, name=name: scale.__setitem__(name, (
        float(i[0].abs().mean()), float(o.abs().mean())))) for name, mod in (("sweep", model.sweep),)]
    model(torch.randn(1, 4, 128, 128))
    for h in handles:
        h.remove()
    before, after = scale["sweep"]
    assert 0.2 < after / before < 5, scale  # gated and normalised: no growth along 32 rows
    from elegantviz.inference.tiles import forward_halo_tiles

    with pytest.raises(InputError, match="global path"):
        forward_halo_tiles(model, torch.randn(1, 4, 128, 128), tile=64)
