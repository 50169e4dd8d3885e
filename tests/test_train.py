import json

import numpy as np
import pytest
import torch

from elegantviz.config import TrainConfig, config_from_dict, list_configs, load_config
from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.engine.checkpoints import NonFiniteError, load_model
from elegantviz.engine.train import Trainer, lr_factor
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
    isd = load_config("isdnet-deepglobe")  # the official recipe
    assert (isd.model.name, isd.data.crop_size, isd.optim.optimizer, isd.optim.schedule, isd.optim.accumulate,
            isd.iters) == ("isdnet", 1224, "sgd", "poly", 8, 80000)
    assert load_config("isdnet-riverworld").model.name == "isdnet-cpu"


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
    trained = load_model(best)
    assert trained.classes.names[3] == "river" and len(trained.norm.mean) == 4
    assert trained.bands == ["red", "green", "blue", "nir"] and trained.in_chans == 4
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


def _nan_on(calls: set[int]):
    """training_loss that returns NaN on the given (1-based) calls."""
    from elegantviz.losses import training_loss

    count = {"n": 0}

    def loss(*args, **kwargs):
        count["n"] += 1
        total, terms = training_loss(*args, **kwargs)
        return (total * float("nan") if count["n"] in calls else total), terms

    return loss


def test_a_nan_loss_or_gradient_never_reaches_the_weights(scenes, tmp_path, monkeypatch):
    monkeypatch.setattr("elegantviz.engine.train.training_loss", _nan_on({3}))
    trainer = Trainer(small_config(scenes, tmp_path / "run", iters=4), progress=False)
    trainer.step(), trainer.step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    terms = trainer.step()  # NaN loss
    assert terms["skipped"] and trainer.iteration == 2 and trainer.skipped == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a finite loss whose gradient is NaN is skipped as well
    handle = trainer.model.head[-1].weight.register_hook(lambda g: g * float("nan"))
    assert trainer.step()["skipped"] and trainer.skipped == 2
    handle.remove()
    trainer.fit()
    assert trainer.iteration == 4
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(1 for r in log if r.get("skipped")) == 2
    assert [r["skipped_total"] for r in log if "lr" in r][-1] == 2
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / "run" / name, weights_only=False)
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_training_stops_after_nan_steps_in_a_row_naming_the_last_checkpoint(scenes, tmp_path, monkeypatch):
    monkeypatch.setattr("elegantviz.engine.train.training_loss", _nan_on(set(range(3, 100))))
    cfg = small_config(scenes, tmp_path / "run", iters=6, ckpt_every=2, val_every=100)
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(NonFiniteError, match=r"iteration 3: 3 steps in a row .* last good checkpoint is .*last.pt"):
        trainer.fit()
    assert trainer.iteration == 2 and trainer.skipped == 3
    # a checkpoint of non-finite weights is refused and nothing is written
    with torch.no_grad():
        trainer.model.head[-1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"bad.pt: refusing .* \(model.head.4.weight\) at iteration 2"):
        trainer.save("bad.pt")
    assert not (tmp_path / "run" / "bad.pt").exists()


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_schedules_warm_up_linearly_and_decay_to_min_lr(schedule):
    cfg = config_from_dict({"iters": 110, "optim": {"lr": 0.01, "schedule": schedule, "warmup": "linear",
                                                    "warmup_iters": 10, "warmup_lr": 0.001, "min_lr": 1e-4}})
    lrs = [0.01 * lr_factor(i, cfg) for i in range(111)]
    np.testing.assert_allclose(lrs[:11], np.linspace(0.001, 0.01, 11))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[110] == pytest.approx(1e-4)
    mid = 1e-4 + (0.01 - 1e-4) * (0.5**0.9 if schedule == "poly" else 0.5)
    assert lrs[60] == pytest.approx(mid)


def test_optimizer_choice_and_clipping(scenes, tmp_path):
    cfg = small_config(scenes, tmp_path / "run", iters=1)
    cfg.optim.optimizer, cfg.optim.grad_clip = "adamw", 1e-3
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    # norms and biases take no weight decay
    no_decay = [g for g in trainer.optimizer.param_groups if g["name"].endswith("no-decay")]
    assert no_decay and all(g["weight_decay"] == 0 for g in no_decay)
    terms = trainer.step()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert terms["grad_norm"] > 1e-3 and float(torch.cat([g.flatten() for g in grads]).norm()) <= 1e-3 * 1.001
    cfg.optim.optimizer = "lion"
    with pytest.raises(InputError, match="optim.optimizer: unknown optimizer 'lion'"):
        Trainer(cfg, progress=False)


def test_precise_bn_is_the_average_of_whole_scene_statistics_and_resume_stays_exact(scenes, tmp_path):
    from elegantviz.engine.precise_bn import recompute_bn_stats

    cfg = small_config(scenes, tmp_path / "run", iters=2, precise_bn=2)
    trainer = Trainer(cfg, progress=False)
    trainer.step()
    live = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    precise = trainer.precise_model()
    assert all(torch.equal(v, live[k]) for k, v in trainer.model.state_dict().items())  # untouched
    # independent: each scene's batch statistics at the first norm, averaged
    bn = precise.backbone.body.bn1
    images = [trainer._whole_scene(s)[0] for s in trainer.train_scenes[:2]]
    seen = []
    h = trainer.model.backbone.body.bn1.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    trainer.model.eval()
    with torch.no_grad():
        for x in images:
            trainer.model(x, upsample=False)
    h.remove()
    mean = torch.stack([t.mean(dim=(0, 2, 3)) for t in seen]).mean(0)
    var = torch.stack([t.var(dim=(0, 2, 3), unbiased=True) for t in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(bn.running_mean, trainer.model.backbone.body.bn1.running_mean)
    recompute_bn_stats(trainer.model, [])  # nothing to do: unchanged
    # best.pt holds the precise statistics, last.pt the live ones; resume from last.pt is exact
    trainer.fit()
    straight = Trainer(small_config(scenes, tmp_path / "straight", iters=2, precise_bn=2), progress=False)
    straight.fit()
    half = Trainer(small_config(scenes, tmp_path / "half", iters=1, precise_bn=2), progress=False)
    half.fit()
    resumed = Trainer(small_config(scenes, tmp_path / "half", iters=2, precise_bn=2), progress=False)
    resumed.resume()
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("data, message", [
    ({"iters": -5}, r"iters must be >= 1, got -5"), ({"iters": "ten"}, "iters must be int, got 'ten'"),
    ({"optim": {"lr": "abc"}}, "optim.lr must be a finite float"), ({"ckpt_every": 0}, "ckpt_every must be >= 1"),
    ({"data": {"level": 50}}, r"data.level must be in \[0, 20\]"), ({"optim": {"lr": 0}}, "optim.lr must be > 0"),
    ({"optim": {"schedule": "linear"}}, "optim.schedule must be one of step, poly, cosine"),
    ({"data": {"train": "a.zarr"}}, "data.train must be list"), ({"iters": True}, "iters must be int"),
    ({"loss": {"class_weights": [1, -2]}}, r"loss.class_weights must be a list of numbers >= 0"),
])
def test_config_values_are_checked_by_type_and_range(tmp_path, data, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=f"bad.yaml: {message}"):
        load_config(path)


def test_cli_numbers_are_checked_before_any_work(capsys):
    from elegantviz.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "riverworld-cpu", "--iters", "0"])
    assert e.value.code == 2 and "--iters: must be at least 1, got 0" in capsys.readouterr().err


# --- a run's folder and its inputs (issue 17) -----------------------------------------------------
def test_a_finished_run_is_never_overwritten_by_accident(scenes, tmp_path):
    from elegantviz.engine.train import train

    out = tmp_path / "run"
    train(small_config(scenes, out, iters=2), progress=False)
    best = (out / "best.pt").read_bytes()
    with pytest.raises(InputError, match="holds a training run .*--resume.*--overwrite"):
        train(small_config(scenes, out, iters=2, seed=5), progress=False)
    assert (out / "best.pt").read_bytes() == best
    with pytest.raises(InputError, match="contradict"):
        train(small_config(scenes, out, iters=2), resume=True, overwrite=True, progress=False)
    old_log = (out / "log.jsonl").read_text().splitlines()
    train(small_config(scenes, out, iters=2, seed=5), progress=False, overwrite=True)
    new_log = (out / "log.jsonl").read_text().splitlines()
    assert len(new_log) == len(old_log) and new_log != old_log  # the new run's log alone, not appended
    assert (out / "best.pt").read_bytes() != best


def test_resume_takes_only_its_own_run(scenes, tmp_path):
    first = Trainer(small_config(scenes, tmp_path / "a", iters=2), progress=False)
    first.fit()
    other = Trainer(small_config(scenes, tmp_path / "b", iters=4, seed=9,
                                 optim={"lr": 0.5, "warmup_iters": 2, "warmup_lr": 0.001, "milestones": [0.5]}),
                    progress=False)
    with pytest.raises(InputError, match=r"written by another run \(config.optim, config.seed differ\)"):
        other.resume(tmp_path / "a" / "last.pt")
    same = Trainer(small_config(scenes, tmp_path / "a", iters=4), progress=False)  # longer: allowed
    same.resume()
    assert same.iteration == 2
    truncated = tmp_path / "a" / "cut.pt"
    truncated.write_bytes((tmp_path / "a" / "last.pt").read_bytes()[:5000])
    with pytest.raises(InputError, match="cut.pt: cannot read the checkpoint"):
        same.resume(truncated)
    from elegantviz.engine.checkpoints import export_model

    exported = export_model(tmp_path / "a" / "best.pt", tmp_path / "exported.pt")
    with pytest.raises(InputError, match="cannot be resumed from"):
        same.resume(exported)


def test_scenes_are_checked_before_the_first_step(scenes, tmp_path):
    from elegantviz.io.store import create_scene, open_scene

    src = open_scene(scenes[2])
    three = create_scene(tmp_path / "three.zarr", src.image()[:3], bands=src.bands[:3], classes=src.classes,
                         tile=64, progress=False, finalize=False)
    three.add_labels("gt", src.label("gt"), progress=False)
    three.finalize()
    with pytest.raises(InputError, match="three.zarr: validation scene has 3 bands, the training scenes .* have 4"):
        Trainer(small_config(scenes, tmp_path / "r1", data={"train": scenes[:2], "val": [three.url]}), progress=False)

    blank = create_scene(tmp_path / "blank.zarr", src.image(), bands=src.bands, classes=src.classes, tile=64,
                         progress=False, finalize=False)
    blank.add_labels("gt", np.full(src.shape[1:], 255, np.uint8), progress=False)
    blank.finalize()
    with pytest.raises(InputError, match="blank.zarr: labels/gt has no labelled pixel"):
        Trainer(small_config(scenes, tmp_path / "r2", data={"train": [scenes[0], blank.url]}), progress=False)
    one = np.full(src.shape[1:], 255, np.uint8)
    one[50, 40] = 1  # a single labelled pixel, lost by the mode pyramid: still a scene to learn from
    blank.add_labels("gt", one, progress=False, overwrite=True)
    Trainer(small_config(scenes, tmp_path / "r3", data={"train": [scenes[0], blank.url]}), progress=False)

    with pytest.raises(InputError, match=r"data.level 5 does not exist \(levels 0..0\)|data.level 5 does not exist"):
        Trainer(small_config(scenes, tmp_path / "r4", data={"train": scenes[:2], "level": 5}), progress=False)
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r4"))


def test_train_cli_refuses_a_finished_run_folder(scenes, tmp_path, capsys):
    from elegantviz.cli import main
    from elegantviz.config import save_config

    out = tmp_path / "run"
    cfg = small_config(scenes, out, iters=1)
    save_config(cfg, tmp_path / "c.yaml")
    assert main(["train", str(tmp_path / "c.yaml"), "-q"]) == 0
    best = (out / "best.pt").read_bytes()
    assert main(["train", str(tmp_path / "c.yaml"), "-q"]) == 2
    assert "holds a training run" in capsys.readouterr().err and (out / "best.pt").read_bytes() == best
    assert main(["train", str(tmp_path / "c.yaml"), "--overwrite", "-q"]) == 0
