"""The coarse global path (models/coarse.py): its pooling and upsampling stay on the block grid,
it reaches across a whole scene where the stride-8 MLK does not, it keeps the scale of its input,
and a model trained without it loads into one with it unchanged (``model.init: {base: ...}``)."""

import numpy as np
import pytest
import torch

from elegantviz.errors import InputError
from elegantviz.models.coarse import CoarseContext
from elegantviz.models.elegantseg import ElegantSeg
from elegantviz.models.mlk import MLK


def test_pooling_and_upsampling_keep_the_block_grid():
    path = CoarseContext(3, pool=4)
    seen = {}
    path.mlk = torch.nn.Identity()
    path.mlk.register_forward_hook(lambda _m, i, o: seen.__setitem__("coarse", i[0].detach()))
    with torch.no_grad():
        path.gamma.fill_(1.0)
        # constant inside each 4 x 4 block: the pooled map is the blocks' values, exactly
        blocks = torch.randn(1, 3, 3, 2)
        x = blocks.repeat_interleave(4, -2).repeat_interleave(4, -1)
        path(x)
        torch.testing.assert_close(seen["coarse"], blocks)
        # a size that is no multiple of the pool: partial windows average what they hold, and a
        # constant comes back constant at the input's size
        c = torch.full((1, 3, 10, 9), 0.7)
        out = path(c)
        assert out.shape == c.shape
        torch.testing.assert_close(out, 2 * c)


def test_the_path_reaches_across_a_scene_the_stride_8_mlk_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 64, 64, requires_grad=True)  # a 512 px scene at stride 8
    path, mlk = CoarseContext(16).eval(), MLK(16, 16, 16).eval()  # eval: batch statistics couple every pixel
    with torch.no_grad():
        for unit in (*path.mlk.units, *mlk.units):
            unit.layer_scale.fill_(1.0)  # as open as training makes them

    def reach(residual) -> float:
        """How much the far corner's output reads the first 40 x 40 pixels, against its own pixel."""
        x.grad = None
        residual(x)[0, :, -1, -1].sum().backward()
        g = x.grad[0].abs().sum(0)
        return float(g[:40, :40].max() / g[-2:, -2:].max())

    assert reach(lambda t: path.mlk(torch.nn.functional.avg_pool2d(t, 4))) > 1e-3  # reads 63 rows and columns away
    assert reach(mlk) < 1e-6  # the stride-8 MLK reads 17 pixels to each side (the rest is FFT round-off)
    with torch.no_grad():
        path.gamma.fill_(1.0)
    assert reach(lambda t: path(t) - t) > 1e-3  # and the path adds what it reads


def test_activations_keep_their_scale_at_initialisation():
    torch.manual_seed(0)
    path = CoarseContext(32).eval()
    x = 3.0 * torch.randn(1, 32, 48, 56)
    with torch.no_grad():
        assert torch.equal(path(x), x)  # zero residual: the model is unchanged
        path.gamma.fill_(1.0)
        ratio = float(path(x).abs().mean() / x.abs().mean())
    assert 0.5 < ratio < 3, ratio


def _small(path: str) -> ElegantSeg:
    return ElegantSeg(num_classes=5, backbone="hrnet_w18_small", in_chans=4, dim=32, hidden_dim=32,
                      output_stride=8, global_path=path)


def test_a_model_without_the_path_loads_into_one_with_it_unchanged():
    torch.manual_seed(0)
    base = _small("none").eval()
    with torch.no_grad():  # trained-looking BN statistics, so eval mode is not the identity
        for m in base.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    grown = _small("coarse").eval()
    grown.load_role("base", base.state_dict())
    x = torch.randn(1, 4, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(grown(x).logits, base(x).logits)
    state = base.state_dict()
    state.pop(next(k for k in state if k.startswith("head.")))
    with pytest.raises(ValueError, match="1 missing weights"):
        grown.load_role("base", state)
    with pytest.raises(ValueError, match="misshaped"):
        grown.load_role("base", _small_wide().state_dict())
    with pytest.raises(ValueError, match="takes no 'local'"):
        grown.load_role("local", base.state_dict())


def _small_wide() -> ElegantSeg:
    return ElegantSeg(num_classes=5, backbone="hrnet_w18_small", in_chans=4, dim=48, hidden_dim=48, output_stride=8)


def test_tiled_prediction_refuses_the_path():
    from elegantviz.inference.tiles import forward_halo_tiles

    with pytest.raises(InputError, match="global path .global_path: coarse"):
        forward_halo_tiles(_small("coarse"), torch.randn(1, 4, 128, 128), tile=64)


def test_shipped_model_starts_a_coarse_run_with_a_frozen_backbone(tmp_path):
    """`model.init: {base: <the shipped model>}` in a config with the path: the run starts from the
    shipped weights; with ``freeze_backbone`` a step changes what follows the backbone only."""
    from elegantviz.config import config_from_dict
    from elegantviz.data.synthetic import synthesize_riverworld
    from elegantviz.engine.train import Trainer
    from elegantviz.weights import shipped_checkpoint

    scene = synthesize_riverworld(tmp_path / "s.zarr", height=128, seed=3, progress=False).url

    def config(**loss):
        return config_from_dict({
            "data": {"train": [scene], "val": []}, "loss": loss, "iters": 1, "out_dir": str(tmp_path / "run"),
            "model": {"name": "elegantseg-cpu", "overrides": {"global_path": "coarse", "freeze_backbone": True},
                      "init": {"base": str(shipped_checkpoint())}},
            "optim": {"optimizer": "adamw", "lr": 1e-3, "warmup_iters": 0}, "precise_bn": 0})

    with pytest.raises(InputError, match=r"class_weights has 2 weights for the 5 classes of the scenes \(cropland"):
        Trainer(config(class_weights=[1.0, 2.0]), progress=False)
    trainer = Trainer(config(class_weights=[1, 1, 1, 3, 3]), progress=False)
    shipped = torch.load(shipped_checkpoint(), map_location="cpu", weights_only=False)["model"]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for k in ("head.cls.weight", "backbone.body.conv1.weight"):
        k = k if k in shipped else next(n for n in shipped if n.startswith(k.split(".")[0] + "."))
        np.testing.assert_array_equal(before[k].numpy(), shipped[k].float().numpy())
    assert float(before["coarse.gamma"].abs().max()) == 0.0
    assert not trainer.step().get("skipped")
    after = trainer.model.state_dict()
    assert trainer.model.backbone.training is False and trainer.model.head.training is True
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))  # BN statistics too
    assert float(after["coarse.gamma"].abs().max()) > 0
