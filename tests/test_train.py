import json

import numpy as np
import pytest
import torch

from elegantviz.config import TrainConfig, config_from_dict, list_configs, load_config
from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.engine.train import Trainer, lr_factor, load_model
from elegantviz.errors import InputError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    paths = []
    for i in range(3):
        synthesize_riverworld(root / f"s{i}.zarr", height=96, width=80, seed=i, tile=64, progress=False)
        paths.append(str(root / f"s{i}.zarr"))
    return paths


def small_config(scenes, out, **kw) -> TrainConfig:
    d = {
        "data": {"train": scenes[:2], "val": scenes[2:], "mode": "holistic"},
        "model": {"name": "elegantseg-cpu", "overrides": {"dim": 16, "hidden_dim": 16}},
        "optim": {"warmup_iters": 2, "warmup_lr": 0.001, "milestones": [0.5]},
        "memory": {"policy": "none"},
        "iters": 4, "val_every": 2, "ckpt_every": 2, "log_every": 1, "out_dir": str(out),
    }
    d.update(kw)
    return config_from_dict(d)


def test_schedule_is_warmup_then_step_decay():
    cfg = config_from_dict({"iters": 100, "optim": {"lr": 0.01, "warmup_iters": 10, "warmup_lr": 5e-5,
                                                    "milestones": [0.5, 0.8], "gamma": 0.1}})
    lrs = [0.01 * lr_factor(i, cfg) for i in (0, 9, 10, 49, 50, 79, 80, 99)]
    np.testing.assert_allclose(lrs, [5e-5, 5e-5, 1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])


def test_config_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml.optim: unknown key\(s\) \['lrr'\]"):
        load_config(bad)
    assert {"riverworld-cpu", "fbp", "deepglobe", "inria"} <= set(list_configs())
    assert load_config("fbp").model.name == "elegantseg-s"


def test_resume_continues_exactly(scenes, tmp_path):
    straight = Trainer(small_config(scenes, tmp_path / "a"), progress=False)
    straight.fit()
    half = Trainer(small_config(scenes, tmp_path / "b", iters=2), progress=False)
    half.fit()
    resumed = Trainer(small_config(scenes, tmp_path / "b"), progress=False)
    resumed.resume()
    assert resumed.iteration == 2
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    log = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert any("val" in r and 0 <= r["val"]["miou"] <= 1 for r in log)


def test_training_lowers_the_loss_and_checkpoints_load(scenes, tmp_path):
    cfg = small_config(scenes, tmp_path / "run", iters=12, val_every=12, ckpt_every=6)
    trainer = Trainer(cfg, progress=False)
    first = trainer.step()["loss"]
    trainer.iteration = 0
    best = trainer.fit()
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if "loss" in l]
    assert log[-1]["loss"] < first
    model, table, norm, cfg2, ck = load_model(best)
    assert table.names[3] == "river" and len(norm.mean) == 4 and ck["bands"] == ["red", "green", "blue", "nir"]
    assert not (tmp_path / "run" / "last.pt.tmp").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable elegantviz checkpoint"):
        load_model(tmp_path / "junk.pt")


@pytest.mark.parametrize("policy", ["checkpoint", "disk", "checkpoint+disk"])
def test_memory_policies_train_exactly_like_the_plain_step(scenes, tmp_path, policy):
    plain = Trainer(small_config(scenes, tmp_path / "plain", iters=1), progress=False)
    plain.step()
    cfg = small_config(scenes, tmp_path / policy, iters=1)
    cfg.memory.policy = policy
    cfg.memory.spill_dir, cfg.memory.threshold = str(tmp_path / "spill"), "1KiB"
    other = Trainer(cfg, progress=False)
    other.step()
    for (name, a), b in zip(plain.model.state_dict().items(), other.model.state_dict().values()):
        assert torch.equal(a, b), (policy, name)
    stats = other.meter.as_dict()
    if "disk" in policy:
        assert stats["spilled_disk_bytes"] > 0 and not any((tmp_path / "spill").iterdir())


def test_band_policy_trains_like_the_plain_step(scenes, tmp_path):
    """Banding sums in another order: the same update up to float32 rounding (exactness itself is
    tested in float64 in test_offload_banded)."""
    start = Trainer(small_config(scenes, tmp_path / "start", iters=1), progress=False).model.state_dict()
    start = {k: v.clone() for k, v in start.items()}
    plain = Trainer(small_config(scenes, tmp_path / "plain", iters=1), progress=False)
    plain.step()
    cfg = small_config(scenes, tmp_path / "band", iters=1)
    cfg.memory.policy = "checkpoint+band+disk"
    cfg.memory.spill_dir, cfg.memory.threshold = str(tmp_path / "spill"), "1KiB"
    band = Trainer(cfg, progress=False)
    assert band.policy.band and band.policy.offload == "disk"
    band.step()
    names = [n for n, p in plain.model.named_parameters()]
    moved_plain = torch.cat([(plain.model.state_dict()[n] - start[n]).flatten() for n in names])
    moved_band = torch.cat([(band.model.state_dict()[n] - start[n]).flatten() for n in names])
    assert moved_plain.norm() > 0
    assert (moved_band - moved_plain).norm() < 1e-3 * moved_plain.norm()
    assert band.meter.as_dict()["spilled_disk_bytes"] > 0 and not any((tmp_path / "spill").iterdir())


def test_auto_policy_refuses_a_budget_nothing_fits(scenes, tmp_path):
    from elegantviz.offload import MemoryBudgetError

    cfg = small_config(scenes, tmp_path / "auto")
    cfg.memory.policy, cfg.memory.budget = "auto", "1MB"
    with pytest.raises(MemoryBudgetError, match="does not fit"):
        Trainer(cfg, progress=False)
