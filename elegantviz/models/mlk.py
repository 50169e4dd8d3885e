"""MLK (ElegantSeg) and LRD (EHSNet): large-kernel context modules.

Both are ``1x1 conv (reduce to k) -> BN -> activation -> L units -> 1x1 conv (to d) -> BN``.
A unit is a 5x5 convolution f5 followed by parallel depthwise 7x7, 15x15 and 31x31 convolutions of f5
(f7, f15, f31) and a fusion:

- ``'concat'`` (LRD, EHSNet Eq. (1)): ``conv1x1(concat(f_in, f5, f7, f15, f31))``.
- ``'gate'`` (our MLK default): ``f_in * conv1x1(f5 + f7 + f15 + f31)``.
- ``'sum'``: ``conv1x1(f5 + f7 + f15 + f31)``.

Why 'gate' for MLK: ElegantSeg does not spell its fusion out, but the module it describes
(1x1 reduce, activation, a 5x5 conv feeding parallel large depthwise convs, fusion, 1x1 expand)
is step for step the attention block of SegNeXt's MSCA / VAN's large-kernel attention, whose
fusion is a sum, a 1x1 channel mix and a multiplication with the unit input. The sum keeps the
width at k (concat needs a (L+2)k -> k mix), the 1x1 mixes channels that depthwise convs never
mix, and VAN's ablation reports the multiplicative gate as helping. The sum of depthwise
convolutions of one input is one depthwise convolution with the summed (zero-padded) kernels,
so 'gate' and 'sum' run a single 31x31 convolution instead of three (exact, parameters unchanged).

The 5x5 convolution is a full convolution by default, as both papers write it (only the three
large kernels are called depthwise); ``depthwise5=True`` makes it depthwise as in SegNeXt,
which cuts the module's cost by about k/25 at no change to the large kernels.

Normalisation and residuals (added to the papers' description, which has neither). Trained as
written, the module blew activations up: on a riverworld scene, mean |x| was 3.0 entering MLK,
7.2 after the 1x1 reduce, 4,040 after the gated unit (max 81,200) and 5,460 leaving it; at random
init its output was already 707x its input, and ElegantSeg's main head learned only the two
majority classes while the auxiliary head on the same features found rivers and ponds. The
gate multiplies two unnormalised branches, so the scale squares in every unit. As SegNeXt's MSCA
and VAN's LKA do for this very block, we now

- normalise after the reduce (``conv1x1 -> BN -> act``), so the units see unit-scale input;
- put every unit in a pre-norm residual branch with a learnable per-channel layer scale,
  ``u <- u + gamma * unit(BN(u))`` with ``gamma = 1e-2`` at init (VAN's value): the gate then
  multiplies two unit-scale maps, and a unit starts near the identity;
- normalise after the expand (``conv1x1 -> BN``), so ECR and the main head get features of unit
  scale whatever the units learned.

Every added layer is a BatchNorm or a pointwise product, so the receptive field (``radius``) is
unchanged and the banded and tiled executors cover them as they cover the rest.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .depthwise import DepthwiseConv2d, DepthwiseImpl, depthwise_conv2d

__all__ = ["MLKUnit", "MLK", "LRD", "Fusion"]

Fusion = Literal["gate", "sum", "concat"]


class MLKUnit(nn.Module):
    """5x5 conv, parallel depthwise large-kernel convs of its output, and a fusion, inside a
    pre-norm residual branch: ``x + gamma * fusion(BN(x))``."""

    def __init__(
        self,
        dim: int,
        kernel_sizes: Sequence[int] = (7, 15, 31),
        fusion: Fusion = "gate",
        depthwise5: bool = False,
        depthwise_impl: DepthwiseImpl = "auto",
        layer_scale_init: float = 1e-2,
    ):
        super().__init__()
        if fusion not in ("gate", "sum", "concat"):
            raise ValueError(f"unknown fusion {fusion!r}")
        self.fusion = fusion
        self.depthwise_impl = depthwise_impl
        self.norm = nn.BatchNorm2d(dim)
        self.conv5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim if depthwise5 else 1)
        self.branches = nn.ModuleList(DepthwiseConv2d(dim, k, impl=depthwise_impl) for k in kernel_sizes)
        fuse_in = dim * (2 + len(kernel_sizes)) if fusion == "concat" else dim
        self.fuse = nn.Conv2d(fuse_in, dim, 1)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale_init)))

    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Identity plus every branch kernel, zero-padded to the largest: f5 + sum_k f_k in one conv."""
        kmax = max(b.kernel_size[0] for b in self.branches)
        ref = self.branches[0].weight
        weight = ref.new_zeros(ref.shape[0], 1, kmax, kmax)
        weight[:, :, kmax // 2, kmax // 2] = 1.0
        bias = ref.new_zeros(ref.shape[0])
        for b in self.branches:
            pad = (kmax - b.kernel_size[0]) // 2
            weight = weight + F.pad(b.weight, (pad, pad, pad, pad))
            if b.bias is not None:
                bias = bias + b.bias
        return weight, bias

    def attention(self, u: torch.Tensor) -> torch.Tensor:
        """The paper's unit on a normalised input ``u``: the residual branch before its scale."""
        f5 = self.conv5(u)
        if self.fusion == "concat":
            return self.fuse(torch.cat([u, f5, *(b(f5) for b in self.branches)], dim=1))
        weight, bias = self.merged_kernel()
        y = self.fuse(depthwise_conv2d(f5, weight, bias, self.depthwise_impl))
        return u * y if self.fusion == "gate" else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.attention(self.norm(x))


class MLK(nn.Module):
    """Multiple large kernel module: 1x1 reduce + BN + activation, ``num_units`` residual units,
    1x1 expand + BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        hidden_channels: int = 256,
        num_units: int = 1,
        kernel_sizes: Sequence[int] = (7, 15, 31),
        fusion: Fusion = "gate",
        depthwise5: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
        depthwise_impl: DepthwiseImpl = "auto",
        layer_scale_init: float = 1e-2,
    ):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.reduce_norm = nn.BatchNorm2d(hidden_channels)
        self.act = act_layer()
        self.units = nn.Sequential(*(
            MLKUnit(hidden_channels, kernel_sizes, fusion, depthwise5, depthwise_impl, layer_scale_init)
            for _ in range(num_units)
        ))
        self.expand = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(out_channels)
        self.out_channels = out_channels
        # Pixels an output reads on each side: per unit the 5x5 and, in parallel, the largest kernel.
        self.radius = num_units * (2 + max(kernel_sizes) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.reduce_norm(self.reduce(x)))
        return self.expand_norm(self.expand(self.units(x)))


class LRD(MLK):
    """EHSNet's long-range dependency module: one unit with concat fusion, Eq. (1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        hidden_channels: int = 256,
        kernel_sizes: Sequence[int] = (7, 15, 31),
        depthwise5: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
        depthwise_impl: DepthwiseImpl = "auto",
        layer_scale_init: float = 1e-2,
    ):
        super().__init__(in_channels, out_channels, hidden_channels, 1, kernel_sizes, "concat", depthwise5,
                         act_layer, depthwise_impl, layer_scale_init)
