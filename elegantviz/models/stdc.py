"""ISDNet's shallow branch: the first two stages of STDC-1 (Fan et al., CVPR'21), written here.

STDC is not in timm and its ImageNet weights (``STDCNet813M_73.91.tar``) are not on PyPI, so the
network starts from random weights or from a file the user gives (``load_stdc_weights``: the
official file's first convolution is widened to the input's channels by repeating it, as ISDNet's
code does for its 6 Laplacian channels: so ImageNet weights fit 3 x k bands only).

Layout (``ShallowNet(in_chans=6)``): ConvX 6->32 /2, ConvX 32->64 /2, then two CatBottleneck
stages: [64->256 /2, 256->256] gives the 1/8 features, [256->512 /2, 512->512] the 1/16 ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["ConvX", "CatBottleneck", "ShallowNet", "load_stdc_weights"]


class ConvX(nn.Sequential):
    """conv (no bias; Kaiming normal, fan out, as STDC's ``init_params``) - BN - ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class CatBottleneck(nn.Module):
    """STDC's block: a 1x1 conv to out/2, then 3x3 convs halving the width (out/4, out/8, out/8
    for 4 convs); the outputs of all of them concatenated give ``out_channels``. With stride 2 a
    depthwise 3x3 /2 conv sits after the first conv and its skip is a 3x3 /2 average pool."""

    def __init__(self, in_channels: int, out_channels: int, block_num: int = 4, stride: int = 1):
        super().__init__()
        if block_num < 2:
            raise ValueError(f"block_num must be at least 2, got {block_num}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        widths = [out_channels // 2] + [out_channels // 2 ** (i + 1) for i in range(1, block_num - 1)]
        widths.append(widths[-1])  # the last conv keeps the width: the widths sum to out_channels
        self.convs = nn.ModuleList([ConvX(in_channels, widths[0], kernel_size=1)])
        self.convs.extend(ConvX(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.stride = stride
        if stride == 2:
            half = out_channels // 2
            avd = nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False)
            nn.init.kaiming_normal_(avd.weight, mode="fan_out")
            self.avd = nn.Sequential(avd, nn.BatchNorm2d(half))
            self.skip = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.convs[0](x)
        outs = []
        y = first
        for i, conv in enumerate(self.convs[1:]):
            y = conv(self.avd(first) if i == 0 and self.stride == 2 else y)
            outs.append(y)
        head = self.skip(first) if self.stride == 2 else first
        return torch.cat([head, *outs], dim=1)


class ShallowNet(nn.Module):
    """``forward(x)`` -> (features at 1/8, features at 1/16) of the full-resolution input."""

    def __init__(self, in_chans: int = 6, base: int = 64, layers: tuple[int, ...] = (2, 2), block_num: int = 4):
        super().__init__()
        self.stem = nn.Sequential(ConvX(in_chans, base // 2, 3, 2), ConvX(base // 2, base, 3, 2))
        stages = []
        width = base
        for i, n in enumerate(layers):
            out = base * 4 * 2**i
            blocks = [CatBottleneck(width if j == 0 else out, out, block_num, 2 if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            width = out
        self.stages = nn.ModuleList(stages)
        self.out_channels = [base * 4 * 2**i for i in range(len(layers))]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return tuple(feats)


def load_stdc_weights(net: ShallowNet, path: str | Path) -> None:
    """Load an STDC checkpoint (the official ``STDCNet813M_73.91.tar`` or a state dict of this
    module) into ``net``; keys that do not belong to the first two stages are ignored, and a first
    convolution with fewer input channels than ``net`` is repeated along them (ISDNet's cat[v, v])."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = net.state_dict()
    official = _official_names(net)
    loaded = {}
    for k, v in state.items():
        name = official.get(k.removeprefix("module."), k.removeprefix("module."))
        if name not in own:
            continue
        if v.dim() == 4 and v.shape[1] < own[name].shape[1] and own[name].shape[1] % v.shape[1] == 0:
            v = v.repeat(1, own[name].shape[1] // v.shape[1], 1, 1)
        if v.shape != own[name].shape:
            raise ValueError(f"{path}: {k} is {tuple(v.shape)}, the shallow branch's {name} is "
                             f"{tuple(own[name].shape)}")
        loaded[name] = v
    if not loaded:
        raise ValueError(f"{path}: holds no weights of STDC's first two stages")
    missing = [k for k in own if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:  # another layout (STDC-2, another base width): a half-loaded branch would pass unnoticed
        raise ValueError(f"{path}: fills {len(loaded)} of the shallow branch's tensors; missing "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    net.load_state_dict(loaded, strict=False)


_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(names: dict[str, str], theirs: str, ours: str) -> None:
    names[f"{theirs}.conv.weight"] = f"{ours}.0.weight"
    names.update({f"{theirs}.bn.{p}": f"{ours}.1.{p}" for p in _BN})


def _official_names(net: ShallowNet) -> dict[str, str]:
    """STDCNet813's key names (features.i.conv / .bn, features.i.conv_list.j.*, avd_layer.0/1) -> ours."""
    names: dict[str, str] = {}
    blocks = [(f"stem.{k}", None) for k in range(len(net.stem))]
    blocks += [(f"stages.{i}.{j}", block) for i, stage in enumerate(net.stages) for j, block in enumerate(stage)]
    for f, (ours, block) in enumerate(blocks):
        if block is None:  # a ConvX
            _conv_bn(names, f"features.{f}", ours)
            continue
        for j in range(len(block.convs)):
            _conv_bn(names, f"features.{f}.conv_list.{j}", f"{ours}.convs.{j}")
        if block.stride == 2:
            names[f"features.{f}.avd_layer.0.weight"] = f"{ours}.avd.0.weight"
            names.update({f"features.{f}.avd_layer.1.{p}": f"{ours}.avd.1.{p}" for p in _BN})
    return names
