"""Planner (sizes, policies, extrapolation, refusal) and meter."""

from __future__ import annotations

import copy

import pytest
import torch

from elegantviz.offload import MemoryBudgetError, MemoryMeter, Policy, parse_size, plan
from elegantviz.offload.host import HostOffload

timm = pytest.importorskip("timm")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return timm.create_model("hrnet_w18_small", features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                             in_chans=3).train()


@pytest.mark.parametrize("text, value", [
    ("12GB", 12 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("800M", 800 * 2**20), ("64 KiB", 65536),
    ("1000", 1000), (4096, 4096), ("2TB", 2 * 10**12), ("3g", 3 * 2**30),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12 parsecs", "GB", "-1GB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_cli_offers_every_policy():
    from elegantviz.cli import POLICY_CHOICES
    from elegantviz.offload import POLICY_NAMES

    assert set(POLICY_CHOICES) == {"auto", *POLICY_NAMES}


def test_policy_names_round_trip():
    for name in ("none", "checkpoint", "host", "disk", "checkpoint+disk", "checkpoint+host"):
        assert Policy.from_name(name).name == name
    with pytest.raises(ValueError):
        Policy.from_name("host+disk")
    with pytest.raises(ValueError):
        Policy.from_name("swap")


def test_policy_apply_leaves_the_model_as_it_was(net, tmp_path):
    model = copy.deepcopy(net)
    with Policy.from_name("checkpoint+disk", spill_dir=str(tmp_path)).apply(model) as hooks:
        assert hooks.folder.exists()
        sum(f.mean() for f in model(torch.randn(1, 3, 64, 64))).backward()
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert list(tmp_path.iterdir()) == []


def test_plan_picks_cheapest_fitting_policy_and_refuses_clearly(net):
    shape = (3, 2048, 2048)
    big = plan(net, shape, "1TB", "cpu", sizes=(64, 96), evaluate_all=True)
    assert big.policy.name == "none"
    needs = big.needs
    assert set(needs) == {"none", "disk", "checkpoint", "checkpoint+disk", "checkpoint+band", "checkpoint+band+disk"}
    assert needs["none"] > needs["checkpoint"] and needs["none"] > needs["disk"]
    lean = min(needs.values())
    # a budget between the policies (dry-run peaks at 64/96 px vary by up to a third between runs)
    budget = sorted(needs.values())[2]
    pick = plan(net, shape, budget, "cpu", sizes=(64, 96))
    assert pick.needs[pick.policy.name] <= budget and pick.policy.name != "none"
    assert list(pick.needs)[-1] == pick.policy.name  # tried cheapest first, stopped at the first fit
    assert plan(net, shape, "1TB", "cpu", sizes=(64, 96)).needs.keys() == {"none"}
    with pytest.raises(MemoryBudgetError, match=r"needs about .* budget is"):
        plan(net, shape, lean // 2, "cpu", sizes=(64, 96))
    # the model was not touched by the dry runs
    assert all(p.grad is None for p in net.parameters())
    assert int(net.stage2[0].branches[0][0].bn1.num_batches_tracked) == 0


def test_saved_bytes_extrapolate_linearly(net):
    """Measured at 64 and 96 px, predicted at 160 px, against the meter at 160 px."""
    p = plan(net, (3, 160, 160), "1TB", "cpu", sizes=(64, 96), threshold_bytes=0)
    predicted = p.measured["full"]["none:saved"]
    model = copy.deepcopy(net)
    meter = MemoryMeter()
    with meter.step(), HostOffload(threshold_bytes=0, meter=meter, keep=model):
        from elegantviz.offload.planner import default_loss

        default_loss(model(torch.randn(1, 3, 160, 160))).backward()
    actual = meter.last.saved_bytes
    assert abs(predicted - actual) < 0.1 * actual, (predicted, actual)


def test_meter_step_records_rss_and_counters():
    meter = MemoryMeter()
    with meter.step(tag="x") as stats:
        block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB touched
        meter.held(1000, "host")
        meter.spilled(500, "disk")
        del block
    meter.held(-1000, "host")
    d = meter.as_dict()
    assert stats.peak_rss_bytes - stats.start_rss_bytes > 50 << 20
    assert d["held_host_peak_bytes"] == 1000 and d["spilled_disk_bytes"] == 500 and d["tag"] == "x"
    assert d["peak_device_bytes"] is None
    with meter.step():
        pass
    assert meter.as_dict()["held_host_peak_bytes"] == 0 and len(meter.history) == 2


def test_plan_refuses_disk_policies_without_room_for_the_spill(net, monkeypatch):
    from elegantviz.offload import planner

    shape, spilling = (3, 2048, 2048), ("disk", "checkpoint+disk")
    lean = plan(net, shape, "1TB", "cpu", sizes=(64, 96), candidates=spilling, evaluate_all=True)
    spill = lean.measured["spill_bytes"]
    assert set(spill) == set(spilling) and spill["disk"] > spill["checkpoint+disk"] > 0
    monkeypatch.setattr(planner, "_disk_free", lambda spill_dir: spill["checkpoint+disk"] + 1)
    assert plan(net, shape, "1TB", "cpu", sizes=(64, 96), candidates=spilling).policy.name == "checkpoint+disk"
    monkeypatch.setattr(planner, "_disk_free", lambda spill_dir: spill["checkpoint+disk"] // 2)
    with pytest.raises(MemoryBudgetError, match=r"checkpoint\+disk would write .* to the spill folder"):
        plan(net, shape, "1TB", "cpu", sizes=(64, 96), candidates=spilling)
