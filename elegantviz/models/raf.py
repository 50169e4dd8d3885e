"""ISDNet's relational-aware fusion (RAF, isdnet.txt Sec. 3.3; module for module as the official code).

Each input goes through a 3x3 conv-BN-ReLU to ``channels`` and a channel attention (global
average pool, then a 1x1 conv and a norm, no activation). The two attention vectors, cut into
``r`` groups, give an r x r channel affinity; two MLPs turn it into corrections of each
attention, weighed by scalars g1, g2 that start at 0 (so at initialisation RAF is plain
channel attention, and the affinity is learned in gradually).

Batch 1: the official 1x1 conv + BatchNorm on the pooled (n, c, 1, 1) vector cannot train on
one image ("Expected more than 1 value per channel"); ISDNet's Inria config only ran because
SyncBN pooled 4 GPUs. Holistic training here is batch 1, so ``pooled_norm='group'`` (the default)
normalises that vector with GroupNorm over groups of 16 channels: the same parameters (a scale
and a shift per channel), no dependence on the batch. ``'batch'`` is the official form.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNReLU", "pooled_norm_layer", "ChannelAttention", "RAF", "PooledNorm"]

PooledNorm = Literal["group", "batch", "none"]
GROUP_WIDTH = 16  # channels per GroupNorm group on pooled vectors


def pooled_norm_layer(kind: PooledNorm, channels: int) -> nn.Module:
    """The norm of a 1x1 conv on a globally pooled vector (see the module docstring)."""
    if kind == "group":  # groups of about GROUP_WIDTH channels, as many as divide the channels
        return nn.GroupNorm(math.gcd(channels, max(1, channels // GROUP_WIDTH)), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown pooled norm {kind!r}; choose group, batch or none")


class ConvBNReLU(nn.Sequential):
    """mmcv's ConvModule: conv without bias (Kaiming normal, fan out, as mmcv initialises it), BN,
    then ReLU unless ``relu=False``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 relu: bool = True):
        pad = dilation * (kernel_size // 2)
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(out_channels), *([nn.ReLU(inplace=True)] if relu else []))


class ChannelAttention(nn.Module):
    """``forward(x)`` -> (features, attention logits of shape (n, channels, 1, 1))."""

    def __init__(self, in_channels: int, channels: int, pooled_norm: PooledNorm = "group"):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 3)
        self.att = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=pooled_norm == "none"),
                                 pooled_norm_layer(pooled_norm, channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.conv(x)
        return feat, self.att(feat.mean(dim=(2, 3), keepdim=True))


def _mlp(dim: int, channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))


class RAF(nn.Module):
    """Fuse shallow (detail) features ``s`` with context features ``c`` at ``s``'s resolution.

    ``forward(s, c)`` -> (recalibrated s features, recalibrated and resized c features, fused
    output); all three have ``channels`` channels. The second feeds ISDNet's auxiliary heads.
    """

    def __init__(self, shallow_channels: int, context_channels: int, channels: int = 128, r: int = 16,
                 pooled_norm: PooledNorm = "group"):
        super().__init__()
        if channels % r:
            raise ValueError(f"channels ({channels}) must be a multiple of r ({r})")
        self.r = r
        self.spatial_att = ChannelAttention(shallow_channels, channels, pooled_norm)
        self.context_att = ChannelAttention(context_channels, channels, pooled_norm)
        self.spatial_mlp = _mlp(r * r, channels)
        self.context_mlp = _mlp(r * r, channels)
        self.g1 = nn.Parameter(torch.zeros(()))  # 0-d: under bf16 autocast a (1,) tensor would promote
        self.g2 = nn.Parameter(torch.zeros(()))  # the recalibrated maps to float32
        self.context_head = ConvBNReLU(channels, channels, 3)
        self.smooth = ConvBNReLU(channels, channels, 3, relu=False)

    def affinity(self, s_att: torch.Tensor, c_att: torch.Tensor) -> torch.Tensor:
        """(n, r * r): the products of the r groups of one attention with those of the other."""
        n, c = s_att.shape[:2]
        s = s_att.reshape(n, self.r, c // self.r)
        k = c_att.reshape(n, self.r, c // self.r)
        return torch.bmm(s, k.transpose(1, 2)).reshape(n, -1)

    def forward(self, s: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s_feat, s_att = self.spatial_att(s)
        c_feat, c_att = self.context_att(c)
        a = self.affinity(s_att, c_att)
        s_fix = F.relu(self.spatial_mlp(a))[..., None, None]
        c_fix = F.relu(self.context_mlp(a))[..., None, None]
        s_feat = s_feat * torch.sigmoid(s_att + self.g1 * s_fix)
        c_feat = c_feat * torch.sigmoid(c_att + self.g2 * c_fix)
        c_feat = F.interpolate(c_feat, size=s_feat.shape[-2:], mode="bilinear", align_corners=False)
        c_feat = self.context_head(c_feat)
        return s_feat, c_feat, self.smooth(s_feat + c_feat)
