"""ElegantSeg (Algorithm 1 of elegantseg.txt) and EHSNet in one module.

backbone (HRNetV2) -> auxiliary head -> MLK or LRD -> ECR (guided by the auxiliary margin)
-> main head; both logits upsampled to the input size. The BAE loss lives in
:mod:`elegantviz.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import HRNetBackbone
from .coarse import CoarseContext
from .depthwise import DepthwiseImpl
from .ecr import ECR, AttentionNorm, ECRForm, Evidence, logit_margin
from .heads import FCNHead
from .mlk import LRD, MLK, Fusion
from .scan import GlobalSweep
from .state import state_mismatch

__all__ = ["ElegantSeg", "SegOutput", "Segment", "Evidence", "ContextModule"]

ContextModule = Literal["mlk", "lrd", "none"]
GlobalPath = Literal["none", "sweep", "coarse"]


@dataclass
class SegOutput:
    """Logits and auxiliary logits at input size, or at 1/``stride`` of it when the forward was
    asked not to upsample; evidence only when asked for."""

    logits: torch.Tensor  # (n, c, H, W), or (n, c, ceil(H / stride), ceil(W / stride))
    aux_logits: torch.Tensor | None  # None where a model has no auxiliary head at inference (ISDNet)
    evidence: Evidence | None = None
    stride: int = 1


class Segment(NamedTuple):
    """A local part of the network after the backbone (its attribute name and module)."""

    name: str
    module: nn.Module


class ElegantSeg(nn.Module):
    """ElegantSeg / EHSNet segmentation network.

    ``context='mlk'`` is ElegantSeg's multiple large kernel module, ``'lrd'`` EHSNet's
    long-range dependency module, ``'none'`` a 1x1 projection to ``dim`` (ablation);
    ``use_ecr=False`` skips ECR (ablation), ``ecr_form='paper'`` runs it as Algorithm 1 writes it
    (see :mod:`.ecr`). ``global_path`` adds a path across the whole scene (:mod:`.coarse`,
    :mod:`.scan`); ``freeze_backbone`` trains only what follows the backbone.
    ``channels_last=True`` runs the network in channels_last memory format (faster for HRNet on
    CPU; the model must also be moved with ``.to(memory_format=torch.channels_last)``, which
    :func:`build_model` does).
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        backbone: str = "hrnet_w18",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        output_stride: int = 4,
        context: ContextModule = "mlk",
        dim: int = 256,
        hidden_dim: int = 256,
        num_units: int = 1,
        kernel_sizes: Sequence[int] = (7, 15, 31),
        fusion: Fusion = "gate",
        depthwise5: bool = False,
        depthwise_impl: DepthwiseImpl = "auto",
        use_ecr: bool = True,
        hard_ratio: float = 0.1,
        attention_norm: AttentionNorm = "softmax",
        ecr_form: ECRForm = "projected",
        layer_scale_init: float = 1e-2,
        head_kernel_size: int = 1,
        dropout: float = 0.1,
        channels_last: bool = False,
        global_path: GlobalPath = "none",
        freeze_backbone: bool = False,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2 (the ECR margin needs two logits)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.channels_last = channels_last
        self.backbone = HRNetBackbone(backbone, in_chans, output_stride, pretrained, pretrained_file)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:  # fine-tuning what follows it on features already learned (its BN in eval mode)
            self.backbone.requires_grad_(False)
        c = self.backbone.out_channels
        self.aux_head = FCNHead(c, num_classes, c, head_kernel_size, dropout)
        if context == "mlk":
            self.context = MLK(c, dim, hidden_dim, num_units, kernel_sizes, fusion, depthwise5,
                               depthwise_impl=depthwise_impl, layer_scale_init=layer_scale_init)
        elif context == "lrd":
            self.context = LRD(c, dim, hidden_dim, kernel_sizes, depthwise5, depthwise_impl=depthwise_impl,
                               layer_scale_init=layer_scale_init)
        elif context == "none":
            self.context = nn.Conv2d(c, dim, 1)
        else:
            raise ValueError(f"unknown context module {context!r}")
        if global_path not in ("none", "sweep", "coarse"):
            raise ValueError(f"unknown global path {global_path!r}; choose none, sweep or coarse")
        self.global_path = global_path
        self.sweep = GlobalSweep(dim) if global_path == "sweep" else None
        self.coarse = CoarseContext(dim, kernel_sizes=kernel_sizes, depthwise_impl=depthwise_impl) \
            if global_path == "coarse" else None
        self.ecr = ECR(dim, hard_ratio, attention_norm, ecr_form) if use_ecr else None
        self.head = FCNHead(dim, num_classes, dim, head_kernel_size, dropout)

    init_roles = ("base",)

    def train(self, mode: bool = True) -> "ElegantSeg":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def load_role(self, role: str, state: dict[str, torch.Tensor]) -> None:
        """``base``: an ElegantSeg checkpoint of the same network, with or without the global path.
        Its weights are copied; a global path it lacks keeps its initialisation (a zero residual,
        so the model starts as the checkpoint's), which is how a path is added to a trained model."""
        if role != "base":
            raise ValueError(f"ElegantSeg takes no {role!r} checkpoint (it takes: base)")
        own = self.state_dict()
        missing, extra, misshaped, junk = state_mismatch(own, state, optional=("sweep.", "coarse."))
        shaped = [f"{k} {theirs} != {ours}" for k, theirs, ours in misshaped]
        faults = (("missing", missing), ("unexpected", extra), ("misshaped", shaped), ("non-tensor", junk))
        name, keys = next(((n, ks) for n, ks in faults if ks), (None, []))
        if keys:
            raise ValueError(f"{len(keys)} {name} weights ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        self.load_state_dict({**own, **state})

    def segments(self) -> list[Segment]:
        """The local parts that follow the backbone, in forward order: the auxiliary head, the
        context module and the main head. Each maps the stride-``output_stride`` features to a map
        of the same size, so banding and checkpointing can run each as one unit."""
        return [Segment("aux_head", self.aux_head), Segment("context", self.context), Segment("head", self.head)]

    def _upsample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # Feature pixel i covers input pixels [i*s, (i+1)*s): upsample by exactly s, then crop.
        s = self.output_stride
        h, w = logits.shape[-2:]
        up = F.interpolate(logits, size=(h * s, w * s), mode="bilinear", align_corners=False)
        return up[..., : size[0], : size[1]]

    def forward(self, images: torch.Tensor, return_evidence: bool = False, upsample: bool = True) -> SegOutput:
        """``upsample=False`` returns the logits at the output stride: the BAE loss upsamples them
        band by band itself, which at scene size saves two input-size x classes maps and their
        gradients (:func:`elegantviz.losses.banded_bae_loss`)."""
        size = images.shape[-2:]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(images)
        aux = self.aux_head(feats)
        x = self.context(feats)
        del feats  # 3 GB at 6800x7200: what backward needs of it is saved (or spilled) already
        if self.sweep is not None:
            x = self.sweep(x)
        if self.coarse is not None:
            x = self.coarse(x)
        evidence = None
        if self.ecr is not None:
            x, evidence = self.ecr(x, aux, return_evidence)
        elif return_evidence:
            with torch.no_grad():
                margin = logit_margin(aux.detach())
            evidence = Evidence(margin, margin.new_zeros(margin.shape[0], 0, dtype=torch.long), None, None, None,
                                tuple(margin.shape[-2:]))
        if evidence is not None:
            evidence.output_stride = self.output_stride
        logits = self.head(x)
        if not upsample:
            return SegOutput(logits, aux, evidence, self.output_stride)
        return SegOutput(self._upsample(logits, size), self._upsample(aux, size), evidence)
