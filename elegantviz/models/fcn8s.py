"""VGG FCN-8s, FCtL's local branch (baselines.md 3.1), from timm's VGG.

:class:`VGGTrunk` is VGG's convolutional part up to pool5 with every max-pool in ``ceil_mode``;
it is the trainable trunk of the local branch and, frozen, each FCtL context encoder (the
official ``MiniFCN8``). :class:`FCN8s` adds conv6 (7 x 7, fc6), conv7 (1 x 1, fc7), the class
scores of conv7, pool4 and pool3 and the decoder, and splits into ``encode`` (pool3, pool4, pool5)
and ``decode`` (scores -> full-resolution logits) so FCtL can rework pool5 in between.

Two decoders (``decoder``):
- ``"fcn8s"`` (the official one): VGG's first conv padded by 100, emulated by zero-padding the
  input by 99 and keeping the first conv's padding 1 (the same output, pixel for pixel: the
  digest's acceptable form); conv6 unpadded; three frozen bilinear transposed convolutions
  (x2 k4, x2 k4, x8 k16) with the skips scaled (``0.01 * pool4``, ``1e-4 * pool3``) and cropped
  at offsets 5, 9 and 31. A 508 px patch gives pool5 23 x 23 and 508 x 508 logits. The frozen
  upsampling kernels are (non-persistent) buffers applied per class (groups = K), the same
  numbers as the official diagonal (K, K, k, k) kernels without their K^2 zero weights.
- ``"bilinear"`` (the digest's other acceptable simplification, the CPU variant's): no padding,
  conv6 padded by 3, bilinear upsampling to pool4, pool3 and the input, the same scaled skips.
  A 256 px patch gives pool5 8 x 8 instead of 15 x 15: a third of the trunk's cost.

``skip_scales`` are the pool4 / pool3 factors (official 0.01 and 1e-4, FCN-8s "at once" for an
ImageNet trunk); a trunk trained from scratch (the CPU variant) needs 1 and 1, or its pool3 and
pool4 scores start 1e4 and 100 times too small to carry the fine detail.

Not kept: torchvision's / timm's classifier (the official wrapper keeps and never uses it:
264.2 M parameters in its state dict for 140.6 M used). timm's VGG is built on the meta device
and only the trunk (and fc6/fc7 when they are used) is materialised, unless pretrained weights
are loaded (``pretrained=True`` -> ``<backbone>.tv_in1k``, torchvision's ImageNet weights).
``width_div`` divides every VGG width (no pretrained weights then): the CPU variant's trunk.
"""

from __future__ import annotations

from typing import Literal

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vgg import VGG, cfgs

__all__ = ["Decoder", "FCN8s", "VGGTrunk", "bilinear_kernel"]

Decoder = Literal["fcn8s", "bilinear"]


def _default_device() -> torch.device:
    return torch.empty(0).device  # the device of `with torch.device(...)`, else the CPU


def _vgg(backbone: str, in_chans: int, pretrained: bool, width_div: int) -> VGG:
    """timm's VGG, real only when its pretrained weights are loaded (else on meta, to be
    materialised part by part: fc6 alone is 102.8 M parameters)."""
    if backbone not in cfgs:
        raise ValueError(f"FCtL needs a VGG backbone ({', '.join(cfgs)}), got {backbone!r}")
    if pretrained:
        if width_div != 1:
            raise ValueError("pretrained VGG weights exist only for the full widths (width_div=1)")
        return timm.create_model(f"{backbone}.tv_in1k", pretrained=True, in_chans=in_chans, num_classes=0)
    cfg = [v if v == "M" else max(1, int(v) // width_div) for v in cfgs[backbone]]
    return VGG(cfg, num_classes=0, in_chans=in_chans, device="meta")


def _materialise(module: nn.Module, device: torch.device) -> nn.Module:
    """A meta-built module moved to ``device`` with timm VGG's own init (Kaiming fan-out, bias 0);
    a real one (pretrained) as it is, and a meta one left on meta when the model is built there."""
    if next(module.parameters()).device.type != "meta" or device.type == "meta":
        return module
    module = module.to_empty(device=device)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return module


class VGGTrunk(nn.Module):
    """VGG conv1_1 .. pool5 with ceil-mode pools; ``forward`` -> (pool3, pool4, pool5).

    ``pad`` (99 for the official decoder, else 0) zero-pads the input first; with the first
    conv's own padding 1 that is the official padding 100. ``stride`` 32. A pool5 cell f
    (continuous, cell centres at c + 0.5) sits at image pixel ``stride * f - pad``: the
    geometry the context alignment of :mod:`.ale` and the positional embeddings use."""

    stride = 32

    def __init__(self, features: nn.Sequential, pad: int = 99):
        super().__init__()
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 5:
            raise ValueError(f"a VGG trunk has 5 max-pools, got {len(pools)}")
        for i in pools:
            features[i].ceil_mode = True
        self.features = features
        self.pad = pad
        self._cuts = (pools[2] + 1, pools[3] + 1)
        widths = [[m.out_channels for m in features[:i] if isinstance(m, nn.Conv2d)][-1] for i in pools]
        self.channels = (widths[4], widths[3], widths[2])  # pool5, pool4, pool3

    @classmethod
    def build(cls, backbone: str = "vgg16", in_chans: int = 3, pretrained: bool = False, width_div: int = 1,
              pad: int = 99) -> VGGTrunk:
        vgg = _vgg(backbone, in_chans, pretrained, width_div)
        return cls(_materialise(vgg.features, _default_device()), pad)

    @property
    def out_channels(self) -> int:
        """pool5's channels (512 for VGG16)."""
        return self.channels[0]

    def feature_size(self, size: int) -> int:
        """pool5's side for a ``size`` px input (ceil-mode pools)."""
        s = size + 2 * self.pad
        for _ in range(5):
            s = -(-s // 2)
        return s

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        a, b = self._cuts
        pool3 = self.features[:a](x)
        pool4 = self.features[a:b](pool3)
        return pool3, pool4, self.features[b:](pool4)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The (size, size) bilinear upsampling kernel of FCN (``get_upsampling_weight``'s diagonal)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    k1 = 1 - (og - centre).abs() / factor
    return (k1[:, None] * k1[None, :]).float()


class FrozenUp(nn.Module):
    """A frozen bilinear ConvTranspose2d (k = 2 * factor, stride = factor, no padding), per class."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.channels, self.factor = channels, factor
        k = bilinear_kernel(2 * factor)
        self.register_buffer("weight", k.expand(channels, 1, *k.shape).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight.to(x.dtype), stride=self.factor, groups=self.channels)


class FCN8s(nn.Module):
    """VGG FCN-8s: ``encode(x)`` -> (pool3, pool4, pool5); ``decode(pool3, pool4, pool5, size)`` ->
    (n, K, size, size) logits; ``forward(x)`` both. ``width`` is conv6/conv7's (4096: fc6/fc7)."""

    def __init__(self, num_classes: int, in_chans: int = 3, backbone: str = "vgg16", pretrained: bool = False,
                 width: int = 4096, width_div: int = 1, decoder: Decoder = "fcn8s", dropout: float = 0.5,
                 skip_scales: tuple[float, float] = (0.01, 1e-4)):
        super().__init__()
        self.skip_scales = (float(skip_scales[0]), float(skip_scales[1]))
        if decoder not in ("fcn8s", "bilinear"):
            raise ValueError(f"decoder must be 'fcn8s' or 'bilinear', got {decoder!r}")
        self.decoder = decoder
        vgg = _vgg(backbone, in_chans, pretrained, width_div)
        dev = _default_device()
        self.trunk = VGGTrunk(_materialise(vgg.features, dev), pad=99 if decoder == "fcn8s" else 0)
        c5, c4, c3 = self.trunk.channels
        if width == vgg.pre_logits.fc1.out_channels and c5 == vgg.pre_logits.fc1.in_channels:
            self.conv6 = _materialise(vgg.pre_logits.fc1, dev)  # fc6 as a 7 x 7 conv (pretrained: ImageNet's)
            self.conv7 = _materialise(vgg.pre_logits.fc2, dev)  # fc7 as a 1 x 1 conv
        else:
            self.conv6 = nn.Conv2d(c5, width, 7)
            self.conv7 = nn.Conv2d(width, width, 1)
        if decoder == "bilinear":
            self.conv6.padding = (3, 3)
        del vgg
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(width, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        if decoder == "fcn8s":
            self.up2, self.up4, self.up8 = FrozenUp(num_classes, 2), FrozenUp(num_classes, 2), FrozenUp(num_classes, 8)

    def heads(self) -> list[nn.Module]:
        return [self.score_fr, self.score_pool4, self.score_pool3]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.trunk(x)

    def decode(self, pool3: torch.Tensor, pool4: torch.Tensor, pool5: torch.Tensor, size: tuple[int, int]
               ) -> torch.Tensor:
        x = self.drop6(F.relu(self.conv6(pool5)))
        x = self.drop7(F.relu(self.conv7(x)))
        score = self.score_fr(x)
        s4 = self.score_pool4(self.skip_scales[0] * pool4)
        s3 = self.score_pool3(self.skip_scales[1] * pool3)
        if self.decoder == "bilinear":
            up = F.interpolate(score, size=s4.shape[-2:], mode="bilinear", align_corners=False) + s4
            up = F.interpolate(up, size=s3.shape[-2:], mode="bilinear", align_corners=False) + s3
            return F.interpolate(up, size=size, mode="bilinear", align_corners=False)
        up = self.up2(score)
        h, w = up.shape[-2:]
        up = self.up4(s4[:, :, 5 : 5 + h, 5 : 5 + w] + up)
        h, w = up.shape[-2:]
        up = self.up8(s3[:, :, 9 : 9 + h, 9 : 9 + w] + up)
        return up[:, :, 31 : 31 + size[0], 31 : 31 + size[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x), x.shape[-2:])
