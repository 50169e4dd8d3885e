"""ISDNet's training losses, as the official code sums them (baselines.md 4.2).

    total = CE(main) + CE(deep) + CE(aux 1/8) + CE(aux 1/16)
            + 0.1 * MSE(SR image, residual image) + 1.0 * L1(affinity(deep_feat), affinity(SR feats))
            + 0.4 * CE(FCN aux on ResNet stage 3)

Every CE resizes its logits bilinearly to the labels and averages over the labelled pixels
(mmseg 0.16 divided by all pixels, ignored ones included: the same where nothing is ignored). The SR image is
resized bilinearly to the residual image (residual 0 + upsampled residual 1). The structure
distillation compares the HW x HW self-similarities of deep_feat and of the SR decoder's
features (resized bilinearly to deep_feat's size), each feature L2-normalised per channel over
the positions (the official code's choice, eps 1e-6); the SR side is detached, so it teaches
the deep branch only. The affinity is computed in row blocks, each recomputed in backward, so
its HW x HW matrices never exist whole (at a 6800 x 7200 scene deep_feat has 47,700 positions:
9 GB per matrix).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from elegantviz.autocast import no_autocast

__all__ = ["ISD_WEIGHTS", "isdnet_loss", "affinity_l1", "resized_ce"]

# term -> weight (official: decode, refine, aux_1, aux_2 at 1; recon 0.1; fa 1; FCN aux 0.4)
ISD_WEIGHTS = {"seg": 1.0, "deep": 1.0, "aux8": 1.0, "aux16": 1.0, "sr": 0.1, "sd": 1.0, "fcn": 0.4}


def resized_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = 255) -> torch.Tensor:
    """Cross-entropy of logits resized bilinearly to the labels (mean over non-ignored pixels)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ign = -100 if ignore_index is None else ignore_index
    ce = F.cross_entropy(logits.float(), labels.long(), reduction="sum", ignore_index=ign)
    count = (labels != ignore_index).sum() if ignore_index is not None else torch.tensor(labels.numel())
    return ce / count.clamp(min=1).to(ce.dtype)


def _normalised(feat: torch.Tensor, eps: float) -> torch.Tensor:
    flat = feat.flatten(2).float()  # (n, c, hw)
    return flat / (flat.norm(dim=2, keepdim=True) + eps)


def _block_l1(a: torch.Tensor, b: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    return (a[..., i0:i1].transpose(1, 2) @ a - b[..., i0:i1].transpose(1, 2) @ b).abs().sum(dtype=torch.float64)


def affinity_l1(seg_feat: torch.Tensor, sr_feat: torch.Tensor, eps: float = 1e-6,
                block_bytes: int = 64 << 20) -> torch.Tensor:
    """Mean |S(seg) - S(sr)| over the n x HW x HW entries, S(f) = f^T f of the normalised
    features; gradients reach ``seg_feat`` only. Row blocks of at most ``block_bytes`` each."""
    if sr_feat.shape[-2:] != seg_feat.shape[-2:]:
        sr_feat = F.interpolate(sr_feat, size=seg_feat.shape[-2:], mode="bilinear", align_corners=False)
    with no_autocast(seg_feat):  # similarities of unit vectors: bf16 would leave 2 digits
        a = _normalised(seg_feat, eps)
        b = _normalised(sr_feat.detach(), eps)
        n, _, hw = a.shape
        rows = max(1, block_bytes // (4 * n * hw))
        total = a.new_zeros((), dtype=torch.float64)
        for i0 in range(0, hw, rows):
            i1 = min(i0 + rows, hw)
            if a.requires_grad:
                total = total + checkpoint(_block_l1, a, b, i0, i1, use_reentrant=False)
            else:
                total = total + _block_l1(a, b, i0, i1)
        return (total / (n * hw * hw)).float()


def isdnet_loss(out: Any, labels: torch.Tensor, ignore_index: int | None = 255,
                weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, terms) of an :class:`~elegantviz.models.isdnet.ISDOutput` against (n, H, W) labels;
    ``terms`` are the unweighted values (detached), keyed as :data:`ISD_WEIGHTS`."""
    if labels.dim() == 2:
        labels = labels.unsqueeze(0)
    w = {**ISD_WEIGHTS, **(weights or {})}
    sr = out.sr
    if sr.shape[-2:] != out.residual.shape[-2:]:
        sr = F.interpolate(sr, size=out.residual.shape[-2:], mode="bilinear", align_corners=False)
    terms = {
        "seg": resized_ce(out.logits, labels, ignore_index),
        "deep": resized_ce(out.aux_logits, labels, ignore_index),
        "aux8": resized_ce(out.aux8, labels, ignore_index),
        "aux16": resized_ce(out.aux16, labels, ignore_index),
        "sr": F.mse_loss(sr.float(), out.residual.float()),
        "sd": affinity_l1(out.deep_feat, out.sr_feat),
        "fcn": resized_ce(out.fcn, labels, ignore_index),
    }
    total = sum(w[k] * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}
