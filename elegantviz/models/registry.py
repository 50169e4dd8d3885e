"""Named model presets, ``build_model`` and the table behind ``elegantviz models``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from . import fctl, glnet
from .elegantseg import ElegantSeg
from .fctl import FCtL
from .glnet import GLNet
from .isdnet import ISDNet

__all__ = ["Preset", "PRESETS", "FAMILIES", "ModelInfo", "build_model", "list_models", "print_models",
           "count_flops"]


FAMILIES: dict[str, type[torch.nn.Module]] = {"elegantseg": ElegantSeg, "isdnet": ISDNet, "glnet": GLNet,
                                              "fctl": FCtL}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = "elegantseg"  # a key of FAMILIES


_PAPER = dict(context="mlk", dim=256, hidden_dim=256, output_stride=4)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("elegantseg-s", "ElegantSeg, HRNet-W18, d=256, stride 4 (paper)", dict(_PAPER, backbone="hrnet_w18")),
    Preset("elegantseg-m", "ElegantSeg, HRNet-W32, d=256, stride 4 (paper)", dict(_PAPER, backbone="hrnet_w32")),
    Preset("elegantseg-l", "ElegantSeg, HRNet-W48, d=256, stride 4 (paper)", dict(_PAPER, backbone="hrnet_w48")),
    Preset("ehsnet", "EHSNet, HRNet-W18, LRD, d=k=256, stride 8 (paper)",
           dict(backbone="hrnet_w18", context="lrd", dim=256, hidden_dim=256, output_stride=8)),
    # The backbone is 90 % of this preset's FLOPs; d = 64 and stride 8 keep MLK, ECR and the
    # heads small enough that a 1024^2 scene trains in about 3 GB on a 2-core CPU.
    Preset("elegantseg-cpu", "ElegantSeg for CPU: HRNet-W18-small-v2, d=64, stride 8",
           dict(backbone="hrnet_w18_small_v2", context="mlk", dim=64, hidden_dim=64, output_stride=8)),
    Preset("isdnet", "ISDNet: ResNet-18 (deep stem, OS 8) on the 1/4 image + STDC on Laplacian residuals, 2 RAF",
           dict(), family="isdnet"),
    # Half the fusion width and half the STDC width: the shallow branch, the only part at full
    # resolution, costs a quarter; the backbone (at 1/4 of the image) is unchanged.
    Preset("isdnet-cpu", "ISDNet for CPU: fusion width 64 (r 8), STDC base 32",
           dict(channels=64, r=8, stdc_base=32), family="isdnet"),
    Preset("glnet", "GLNet: 2 x ResNet-50 + FPN, 508 px patches and thumbnail, global<->local sharing",
           glnet.PRESET_KWARGS["glnet"], family="glnet"),
    Preset("glnet-cpu", "GLNet for CPU: 2 x half-width ResNet-18 + FPN 32, 256 px patches and thumbnail",
           glnet.PRESET_KWARGS["glnet-cpu"], family="glnet"),
    Preset("fctl", "FCtL (journal): VGG16 FCN-8s on 508 px patches, 2x/3x contexts, LCC + MCF + ALE",
           fctl.PRESET_KWARGS["fctl"], family="fctl"),
    Preset("fctl-cpu", "FCtL for CPU: VGG-11 at 1/8 width, conv6/7 256, 256 px patches, LCC + MCF + ALE",
           fctl.PRESET_KWARGS["fctl-cpu"], family="fctl"),
]}

# Measured by benchmarks/models.py: HRNet runs faster in channels_last on CPU (see notes).
DEFAULT_CHANNELS_LAST = True


def build_model(name: str, num_classes: int, in_chans: int = 3, **overrides: Any) -> torch.nn.Module:
    """Build preset ``name`` (see :data:`PRESETS`); keyword ``overrides`` replace preset values
    (any argument of the preset's class, e.g. ``pretrained=True``, ``output_stride=8``)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(PRESETS)}") from None
    kwargs = dict(preset.kwargs)
    if preset.family == "elegantseg":
        kwargs.setdefault("channels_last", DEFAULT_CHANNELS_LAST)
    kwargs.update(overrides)
    model = FAMILIES[preset.family](num_classes=num_classes, in_chans=in_chans, **kwargs)
    if getattr(model, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backbone: str
    output_stride: int
    params: int
    gflops: float | None  # forward GFLOPs (multiply-add = 2) at size x size, direct convolutions (None: too small)
    description: str


def count_flops(model: torch.nn.Module, size: int | tuple[int, int] = 1024, in_chans: int = 3) -> int:
    """Forward FLOPs of ``model`` on a 1 x in_chans x size x size (or x h x w) input (torch's flop counter).

    Depthwise convolutions are counted as direct convolutions (the counter knows no FFT).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.empty(1, in_chans, h, w, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@lru_cache(maxsize=None)
def _info(name: str, num_classes: int, in_chans: int, size: int, flops: bool) -> ModelInfo:
    # On the meta device nothing is allocated or computed: instant even for W48 at 1024^2.
    family = PRESETS[name].family
    meta = dict(depthwise_impl="direct", channels_last=False) if family == "elegantseg" else {}
    with torch.device("meta"):
        model = build_model(name, num_classes, in_chans, **meta).eval()
    params = sum(p.numel() for p in model.parameters())
    fits = size >= getattr(model, "min_side", 0)  # a patch model takes no scene under its patch: "-"
    gflops = count_flops(model, size, in_chans) / 1e9 if flops and fits else None
    backbone = (getattr(model, "backbone_name", None) or getattr(model.backbone, "name", None)
                or model.backbone.default_cfg.get("architecture", "?"))
    return ModelInfo(name, backbone, model.output_stride, params, gflops, PRESETS[name].description)


def list_models(num_classes: int = 24, in_chans: int = 4, size: int = 1024, flops: bool = True) -> list[ModelInfo]:
    """One row per preset: parameters and forward GFLOPs at ``size`` x ``size`` (cached)."""
    return [_info(name, num_classes, in_chans, size, flops) for name in PRESETS]


def print_models(args: Any = None) -> int:
    """Print the preset table; ``args`` may carry ``num_classes``, ``in_chans``, ``size``.

    Meant for the ``elegantviz models`` command; returns the exit status (0).
    """
    num_classes = getattr(args, "num_classes", None) or 24
    in_chans = getattr(args, "in_chans", None) or 4
    size = getattr(args, "size", None) or 1024
    rows = list_models(num_classes, in_chans, size)
    print(f"{'name':<16}{'backbone':<20}{'stride':>6}{'params (M)':>12}{f'GFLOPs@{size}':>14}  description")
    for r in rows:
        gf = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        print(f"{r.name:<16}{r.backbone:<20}{r.output_stride:>6}{r.params / 1e6:>12.2f}{gf:>14}  {r.description}")
    print(f"({num_classes} classes, {in_chans} bands; depthwise convolutions counted as direct; "
          f"-: a {size} px scene is smaller than the model's patch or thumbnail)")
    return 0
