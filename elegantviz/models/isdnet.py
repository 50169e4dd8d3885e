"""ISDNet (Guo et al., CVPR'22, isdnet.txt): a deep branch on the 1/4 image and a shallow branch on
the full image's Laplacian residuals, fused by two RAF modules; one whole-image pass.

Deep branch: ResNet-18 with a deep stem at output stride 8 (timm) on the image downsampled 4x
(nearest, as the official code), ASPP to 128 channels (``deep_feat``, 1/32 of the image) and the
deep logits. Shallow branch: :class:`~.stdc.ShallowNet` on the two Laplacian residuals (the
coarser one upsampled bilinearly), 2 x bands channels at full resolution, giving 1/8 and 1/16
features. RAF at 1/16 (shallow 1/16 with deep_feat), then at 1/8 (shallow 1/8 with that), then
the 1/8 main head. Training adds the two auxiliary heads on the RAFs' context features, the
super-resolution decoder on deep_feat (it reconstructs the residual image; its 1/2 features
feed the structure-distillation loss) and the FCN auxiliary head on ResNet stage 3. The losses
are in :mod:`elegantviz.losses.isdnet`.

Where this differs from the official code, on purpose:
- ``backbone='resnet18d'``: timm's ResNet-18-D has V1c's deep stem and the same 11,195,744
  parameters, plus average-pool downsampling in its shortcuts; it is the one with ImageNet
  weights in timm (``pretrained=True``). timm also dilates both convs of a dilated BasicBlock,
  mmseg only the first: the receptive field is a little wider.
- the pooled 1x1 paths (RAF's channel attention, ASPP's image pool) use GroupNorm (see
  :mod:`.raf`), so batch 1 trains; ``pooled_norm='batch'`` is the official BatchNorm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..autocast import compute_dtype, no_autocast
from .elegantseg import SegOutput
from .laplacian import LaplacianPyramid
from .raf import RAF, ConvBNReLU, PooledNorm, pooled_norm_layer
from .stdc import ShallowNet, load_stdc_weights

__all__ = ["ISDNet", "ISDOutput", "ASPP", "SegHead", "SRDecoder", "MIN_SIDE"]

MIN_SIDE = 64  # px: the deep branch runs at 1/32 of the image; BatchNorm trains at batch 1 on its 2 x 2 cells


@dataclass
class ISDOutput(SegOutput):
    """What ISDNet's training losses need besides the main logits (training mode only).

    ``aux_logits`` is the deep branch's, at 1/32; every logit map stays at its own stride (the
    losses resize them to the labels, as the official code does), ``stride`` is the main logits'."""

    aux8: torch.Tensor | None = None  # auxiliary head on RAF-8's context features (1/8)
    aux16: torch.Tensor | None = None  # auxiliary head on RAF-16's context features (1/16)
    fcn: torch.Tensor | None = None  # FCN auxiliary head on ResNet stage 3 (1/32)
    sr: torch.Tensor | None = None  # the residual image reconstructed at 1/2
    residual: torch.Tensor | None = None  # its target: residual 0 + residual 1 upsampled (full size)
    deep_feat: torch.Tensor | None = None  # 128 x 1/32
    sr_feat: torch.Tensor | None = None  # 128 x 1/2, the SR decoder's features
    loss_kind: str = "isdnet"  # which training loss (elegantviz.losses.training_loss)


class SegHead(nn.Sequential):
    """ISDNet's heads: dropout (the main head's, from mmseg's ``cls_seg``; the auxiliary heads have
    none), 3x3 conv-BN-ReLU to ``mid``, 1x1 classifier."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__(nn.Dropout2d(dropout), ConvBNReLU(in_channels, mid_channels, 3),
                         nn.Conv2d(mid_channels, num_classes, 1))


def _mmseg_classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """mmseg's ``cls_seg``: dropout, then a 1x1 conv initialised N(0, 0.01)."""
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


class FCNAux(nn.Sequential):
    """mmseg's FCNHead as ISDNet's auxiliary head on ResNet stage 3: 3x3 conv-BN-ReLU, then ``cls_seg``."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__(ConvBNReLU(in_channels, channels, 3), *_mmseg_classifier(channels, num_classes, dropout))


class ASPP(nn.Module):
    """DeepLabV3's ASPP (mmseg ``ASPPHead``): image pool + one 1x1 and three dilated 3x3 branches,
    concatenated, 3x3 bottleneck to ``channels``. ``forward`` -> (logits, bottleneck features)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dilations: Sequence[int] = (1, 12, 24, 36),
                 pooled_norm: PooledNorm = "group", dropout: float = 0.1):
        super().__init__()
        pool_conv = nn.Conv2d(in_channels, channels, 1, bias=pooled_norm == "none")
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), pool_conv, pooled_norm_layer(pooled_norm, channels),
                                        nn.ReLU(inplace=True))
        self.branches = nn.ModuleList(ConvBNReLU(in_channels, channels, 1 if d == 1 else 3, dilation=d)
                                      for d in dilations)
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3)
        self.classifier = _mmseg_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        feat = self.bottleneck(torch.cat([pooled, *(b(x) for b in self.branches)], dim=1))
        return self.classifier(feat), feat


class SRDecoder(nn.Module):
    """deep_feat (1/32) -> x4, x2, x2 nearest upsamplings with 3x3 convs -> features at 1/2 and the
    reconstructed residual image (``out_channels`` bands). ``forward`` -> (image, features)."""

    def __init__(self, channels: int = 128, out_channels: int = 3, ups: Sequence[int] = (4, 2, 2)):
        super().__init__()
        self.ups = tuple(ups)
        self.convs = nn.ModuleList([ConvBNReLU(channels, channels // 2), ConvBNReLU(channels // 2, channels // 2),
                                    ConvBNReLU(channels // 2, channels)])
        self.head = nn.Sequential(ConvBNReLU(channels, channels // 2, 3), nn.Conv2d(channels // 2, out_channels, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for up, conv in zip(self.ups, self.convs):
            x = conv(F.interpolate(x, scale_factor=up, mode="nearest"))
        return self.head(x), x


class ISDNet(nn.Module):
    """ISDNet; ``forward(images)`` -> :class:`SegOutput` (logits at the input size, or at 1/8 with
    ``upsample=False``); in training mode an :class:`ISDOutput` with everything the losses need."""

    output_stride = 8
    min_side = MIN_SIDE
    loss_kind = "isdnet"  # elegantviz.losses.loss_terms
    gives_evidence = False  # no margin, hard region or attention: predict writes the labels alone

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        backbone: str = "resnet18d",
        pretrained: bool = False,
        stdc_weights: str | None = None,
        channels: int = 128,
        down_ratio: int = 4,
        aspp_dilations: Sequence[int] = (1, 12, 24, 36),
        stdc_base: int = 64,
        stdc_layers: Sequence[int] = (2, 2),
        r: int = 16,
        pooled_norm: PooledNorm = "group",
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_classes, self.in_chans, self.down_ratio = num_classes, in_chans, down_ratio
        self.backbone = timm.create_model(backbone, pretrained=pretrained, features_only=True, output_stride=8,
                                          out_indices=(3, 4), in_chans=in_chans)
        c3, c4 = self.backbone.feature_info.channels()
        self.aspp = ASPP(c4, channels, num_classes, aspp_dilations, pooled_norm, dropout)
        self.fcn_head = FCNAux(c3, c3 // 4, num_classes, dropout)  # 256 -> 64 channels, as the official config
        self.pyramid = LaplacianPyramid(in_chans, levels=2)
        self.shallow = ShallowNet(2 * in_chans, stdc_base, tuple(stdc_layers))
        if stdc_weights:
            load_stdc_weights(self.shallow, stdc_weights)
        s8, s16 = self.shallow.out_channels
        self.fuse16 = RAF(s16, channels, channels, r, pooled_norm)
        self.fuse8 = RAF(s8, channels, channels, r, pooled_norm)
        self.head = SegHead(channels, channels // 2, num_classes, dropout)
        self.aux8_head = SegHead(channels, channels // 2, num_classes, dropout=0.0)
        self.aux16_head = SegHead(channels, channels // 2, num_classes, dropout=0.0)
        self.sr_decoder = SRDecoder(channels, in_chans)

    def parts(self) -> dict[str, list[nn.Module]]:
        """The parts the official code's parameter counts are given for (baselines.md 4.5)."""
        return {"backbone": [self.backbone], "aspp": [self.aspp], "shallow": [self.shallow], "raf16": [self.fuse16],
                "raf8": [self.fuse8], "sr_decoder": [self.sr_decoder], "fcn_aux": [self.fcn_head],
                "heads": [self.head, self.aux8_head, self.aux16_head]}

    def residuals(self, images: torch.Tensor) -> torch.Tensor:
        """The shallow branch's input: residual 0 and residual 1 (bilinearly upsampled), 2 x bands.
        In float32 (or float64) whatever the autocast: a residual is the difference of two close
        images, which bfloat16's 8 bits of mantissa would leave mostly rounding error."""
        with no_autocast(images):
            r0, r1 = self.pyramid(images.to(compute_dtype(images)))
            r1 = F.interpolate(r1, size=r0.shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([r0, r1], dim=1)

    def forward(self, images: torch.Tensor, return_evidence: bool = False, upsample: bool = True) -> SegOutput:
        size = images.shape[-2:]
        if min(size) < MIN_SIDE:
            raise ValueError(f"ISDNet needs at least {MIN_SIDE} px a side (its deep branch runs at 1/32), "
                             f"got {size[0]} x {size[1]}")
        small = F.interpolate(images, size=(size[0] // self.down_ratio, size[1] // self.down_ratio), mode="nearest")
        stage3, stage4 = self.backbone(small)
        deep_logits, deep_feat = self.aspp(stage4)
        residuals = self.residuals(images)
        feat8, feat16 = self.shallow(residuals)
        _, ctx16, fused16 = self.fuse16(feat16, deep_feat)
        _, ctx8, fused8 = self.fuse8(feat8, fused16)
        logits = self.head(fused8)
        if not self.training:  # the main logits alone, as the official inference (no auxiliary map)
            if upsample:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            return SegOutput(logits, None, None, 1 if upsample else self.output_stride)
        sr, sr_feat = self.sr_decoder(deep_feat)
        r0, r1 = residuals.split(self.in_chans, dim=1)
        return ISDOutput(logits, deep_logits, None, self.output_stride, aux8=self.aux8_head(ctx8),
                         aux16=self.aux16_head(ctx16), fcn=self.fcn_head(stage3), sr=sr, residual=r0 + r1,
                         deep_feat=deep_feat, sr_feat=sr_feat)
