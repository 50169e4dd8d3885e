"""ISDNet learns: a short CPU run of the riverworld recipe after which its main head (the 1/8
fusion of the shallow and the deep branch) finds water on its training scene at least as well as
its auxiliary head on the fused context, RAF's affinity gates have opened, and activations keep
their scale."""

import numpy as np
import pytest
import torch

from elegantviz.config import config_from_dict
from elegantviz.data.synthetic import POND, RIVER, synthesize_riverworld
from elegantviz.engine.train import Trainer


def _water_iou(pred: np.ndarray, labels: np.ndarray) -> float:
    gt, pr = (labels == RIVER) | (labels == POND), (pred == RIVER) | (pred == POND)
    return float((gt & pr).sum() / max(1, (gt | pr).sum()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn-isd")
    paths = [synthesize_riverworld(root / f"s{i}.zarr", height=256, seed=100 + i, tile=256, progress=False,
                                   water_width=(16.0, 28.0)).url for i in range(2)]  # wide rivers
    cfg = config_from_dict({
        "data": {"train": paths, "val": []},
        "model": {"name": "isdnet-cpu"},
        "optim": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup": "linear",
                  "warmup_iters": 12, "warmup_lr": 2e-4, "head_lr_mult": 1, "grad_clip": 5.0},
        "memory": {"policy": "none"}, "iters": 120, "val_every": 10**6, "ckpt_every": 10**6, "log_every": 10**6,
        "precise_bn": 2, "out_dir": str(root / "run"), "seed": 0})
    trainer = Trainer(cfg, progress=False)
    while trainer.iteration < cfg.iters:
        assert not trainer.step().get("skipped")
    return trainer


def _scene(trained, i):
    scene = trained.train_scenes[i]
    img, _ = trained.norm.apply(np.asarray(scene.image(0).compute()), scene.nodata)
    return torch.from_numpy(img)[None], np.asarray(scene.label("gt", 0).compute())


def test_main_head_learns_water_as_the_auxiliary_head_does(trained):
    """The reference is the auxiliary head on RAF-8's context features (1/8, training-only; the deep
    branch alone, at 1/32 of a 256 px scene, cannot resolve 16-28 px rivers)."""
    model = trained.precise_model().eval()  # BatchNorm statistics of whole scenes, as validation uses
    x, labels = _scene(trained, 0)
    ctx = {}
    model.fuse8.register_forward_hook(lambda mod, i, o: ctx.__setitem__("8", o[1]))
    with torch.no_grad():
        out = model(x)
        aux = model.aux8_head(ctx["8"])
    aux = torch.nn.functional.interpolate(aux, size=labels.shape, mode="bilinear", align_corners=False)
    main = _water_iou(out.logits.argmax(1)[0].numpy(), labels)
    aux = _water_iou(aux.argmax(1)[0].numpy(), labels)
    gates = [float(g.detach().abs()) for raf in (model.fuse16, model.fuse8) for g in (raf.g1, raf.g2)]
    print(f"water IoU: main head {main:.3f}, auxiliary head {aux:.3f}; |g| of the RAF gates {gates}")
    assert aux > 0.5, aux  # the run itself learned
    assert main >= 0.6 and main >= aux - 0.05, (main, aux)
    # learned in: 120 AdamW steps of at most 2e-3 whose signs were random would walk about 0.02
    assert max(gates) > 0.03, gates


def test_activations_stay_in_scale_after_training(trained):
    model = trained.precise_model().eval()
    scale = {}
    for name in ("fuse16", "fuse8"):
        getattr(model, name).register_forward_hook(lambda mod, i, o, name=name: scale.__setitem__(
            name, (float(i[0].abs().mean()), float(o[2].abs().mean()))))
    x, _ = _scene(trained, 1)
    with torch.no_grad():
        model(x)
    print({name: round(out / inp, 3) for name, (inp, out) in scale.items()})
    for name, (inp, out) in scale.items():
        assert 0.2 < out / inp < 10, (name, inp, out)  # 2.0 after this run
