"""GLNet and FCtL learn, stage by stage, through `train` and the shipped riverworld configs: each
stage starts from the one before (``model.init``), the final model finds water on its training
scenes, and GLNet's aggregated output reaches what its global-only branch reaches; then predict
writes their labels (and GLNet's global-only and local-only views) into the scene store. Small
sizes (256 px scenes, 128 px patches) keep it to about a minute."""

import numpy as np
import pytest
import torch

from elegantviz.config import load_config
from elegantviz.data.synthetic import POND, RIVER, synthesize_riverworld
from elegantviz.engine.checkpoints import load_model
from elegantviz.engine.predict import predict_scene
from elegantviz.engine.train import train
from elegantviz.errors import InputError
from elegantviz.io.store import open_scene

SMALL = {"patch_size": 128, "global_size": 128}
CHAINS = {
    "glnet": [("1-global", 60, {}), ("2-global2local", 30, {"global": 0}),
              ("3-local2global", 30, {"global": 0, "local": 1})],
    "fctl": [("1-local", 40, {}), ("2-medium", 20, {"local": 0}), ("3-large", 20, {"local": 0}),
             ("4-full", 30, {"medium": 1, "large": 2})],
}


def _water_iou(pred: np.ndarray, labels: np.ndarray) -> float:
    gt, pr = (labels == RIVER) | (labels == POND), (pred == RIVER) | (pred == POND)
    return float((gt & pr).sum() / max(1, (gt | pr).sum()))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines-scenes")
    return [synthesize_riverworld(root / f"s{i}.zarr", height=256, seed=100 + i, tile=256, progress=False,
                                  water_width=(16.0, 28.0)).url for i in range(2)]


def _chain(family, scenes, root):
    """Train every stage of ``family``'s shipped riverworld chain for a few steps; the checkpoints."""
    best = []
    for stage, iters, init in CHAINS[family]:
        cfg = load_config(f"{family}-riverworld-{stage}")
        overrides = {k: v for k, v in SMALL.items() if family == "glnet" or k == "patch_size"}
        cfg.data.train, cfg.data.val = scenes, scenes[:1]
        cfg.model.overrides.update(overrides)
        cfg.model.init = {role: str(best[i]) for role, i in init.items()}
        cfg.iters, cfg.val_every, cfg.ckpt_every, cfg.out_dir = iters, iters, iters, str(root / stage)
        best.append(train(cfg, progress=False))
    return best


@pytest.fixture(scope="module")
def glnet(scenes, tmp_path_factory):
    return _chain("glnet", scenes, tmp_path_factory.mktemp("glnet"))


@pytest.fixture(scope="module")
def fctl(scenes, tmp_path_factory):
    return _chain("fctl", scenes, tmp_path_factory.mktemp("fctl"))


def _scene(trained, url):
    scene = open_scene(url)
    img, _ = trained.norm.apply(np.asarray(scene.image(0).compute()), scene.nodata)
    return torch.from_numpy(img)[None], np.asarray(scene.label("gt").compute())


def test_glnet_aggregated_output_learns_what_its_global_branch_learns(glnet, scenes):
    trained = load_model(glnet[-1])
    model = trained.model
    assert model.stage == "local2global"
    x, labels = _scene(trained, scenes[0])
    with torch.no_grad():
        out = model(x, return_evidence=True)
    ious = {k: _water_iou(v[0].numpy(), labels) for k, v in out.views.items()}
    main = _water_iou(out.logits.argmax(1)[0].numpy(), labels)
    print(f"GLNet water IoU: aggregated {main:.3f}, views {ious}")
    assert set(ious) == {"global", "local"}
    assert ious["global"] > 0.5, ious  # the run itself learned
    assert main >= 0.6 and main >= ious["global"] - 0.05, (main, ious)
    scale = float(out.logits.std())
    assert 0.05 < scale < 500, scale  # summed over at most 4 overlapping patches: neither collapsed nor blown up


def test_fctl_full_model_learns_water_and_opens_its_gates(fctl, scenes):
    trained = load_model(fctl[-1])
    model = trained.model
    assert model.stage == "full"
    x, labels = _scene(trained, scenes[0])
    with torch.no_grad():
        main = _water_iou(model(x).logits.argmax(1)[0].numpy(), labels)
    gammas = {name: float(c.gamma.detach().abs()) for name, c in model.lcc.items()}
    print(f"FCtL water IoU {main:.3f}; |gamma| of the correlations {gammas}")
    assert main >= 0.6, main
    assert all(g > 0 for g in gammas.values()), gammas  # every correlation took part in training


def test_predict_writes_the_patch_models_labels_and_views(glnet, fctl, scenes, tmp_path):
    scene = synthesize_riverworld(tmp_path / "t.zarr", height=300, width=260, seed=7, tile=256, progress=False)
    predict_scene(glnet[-1], scene.url, name="glnet", progress=False)
    predict_scene(fctl[-1], scene.url, name="fctl", progress=False, tta=True)
    s = open_scene(scene.url)
    for part in ("glnet", "glnet-global", "glnet-local", "fctl", "error_glnet", "error_fctl"):
        assert part in s.labels, part
        assert s.label(part).shape == (300, 260)
    assert "fctl-global" not in s.labels
    # predicting glnet again with a stage-1 model (no local branch) removes the old run's local view
    predict_scene(glnet[0], scene.url, name="glnet", progress=False)
    assert "glnet-local" not in open_scene(scene.url).labels and "glnet" in open_scene(scene.url).labels


def test_a_stage_refuses_a_missing_role_and_another_familys_checkpoint(glnet, fctl, scenes, tmp_path):
    cfg = load_config("glnet-riverworld-2-global2local")
    cfg.data.train, cfg.data.val, cfg.iters, cfg.out_dir = scenes, [], 1, str(tmp_path / "run")
    cfg.model.overrides.update(SMALL)
    cfg.model.init = {}
    with pytest.raises(InputError, match="add model.init.global"):
        train(cfg, progress=False)
    cfg.model.init = {"global": str(fctl[0])}
    with pytest.raises(InputError, match="a checkpoint of a fctl model, not of glnet"):
        train(cfg, progress=False)
    cfg.model.init = {"global": str(glnet[0]), "medium": str(glnet[0])}
    with pytest.raises(InputError, match="unknown role 'medium'"):
        train(cfg, progress=False)


def test_scenes_smaller_than_the_patch_are_refused(glnet, tmp_path):
    small = synthesize_riverworld(tmp_path / "small.zarr", height=100, seed=3, tile=256, progress=False)
    with pytest.raises(InputError, match="too small"):
        predict_scene(glnet[-1], small.url, progress=False)


def test_training_refuses_scenes_and_crops_smaller_than_the_patch_or_the_thumbnail(scenes, tmp_path):
    cfg = load_config("glnet-riverworld-1-global")
    cfg.data.train, cfg.data.val, cfg.iters, cfg.out_dir = scenes, [], 1, str(tmp_path / "run")
    cfg.model.overrides.update({"patch_size": 128, "global_size": 300})  # a thumbnail larger than the 256 px scenes
    with pytest.raises(InputError, match=r"256 x 256 px at data.level 0 is smaller than this model takes \(300 px"):
        train(cfg, progress=False)
    cfg.model.overrides.update({"patch_size": 128, "global_size": 128})
    cfg.data.mode, cfg.data.crop_size = "sliced", 96
    with pytest.raises(InputError, match="data.crop_size 96 is smaller than this model takes"):
        train(cfg, progress=False)
