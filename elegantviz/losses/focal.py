"""The focal loss GLNet and FCtL train with (gamma = 3, no alpha), at the logits' own resolution.

As the official code: softmax, p_t clamped to [1e-7, 1 - 1e-7], -(1 - p_t)^gamma * log(p_t),
averaged over the pixels; the labels are resized to the logits by nearest neighbour. The one
difference: pixels labelled ``ignore_index`` (nodata) are left out, where the official code has
no ignore label (its datasets have none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from elegantviz.autocast import no_autocast

__all__ = ["focal_loss", "labels_at", "patch_labels"]


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, H, W) class ids resized to ``size`` by nearest neighbour (as PIL's NEAREST: the cell's centre)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(labels.dtype)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 3.0, ignore_index: int | None = 255
               ) -> torch.Tensor:
    """Mean focal loss of (n, k, h, w) logits against (n, H, W) labels (resized to h x w)."""
    labels = labels_at(labels, logits.shape[-2:]).long()
    with no_autocast(logits):
        logp = F.log_softmax(logits.float(), dim=1)
        keep = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
        target = torch.where(keep, labels, torch.zeros_like(labels))
        pt = logp.gather(1, target[:, None])[:, 0].exp().clamp(1e-7, 1 - 1e-7)
        loss = -((1 - pt) ** gamma) * pt.log()
        return loss[keep].sum() / keep.sum().clamp(min=1)


def patch_labels(labels: torch.Tensor, boxes: list[tuple[int, int]] | None, patch: int) -> torch.Tensor:
    """(n * len(boxes), p, p) label crops of (n, H, W) ``labels`` at each (top, left) box, image-major
    (every box of image 0, then of image 1, ...), the order the model emits its patch logits in.
    ``boxes=None`` (DeepGlobe's global-thumbnail stage): the whole labels, which the focal loss
    resizes to the logits by nearest neighbour as the official code."""
    if labels.dim() == 2:
        labels = labels.unsqueeze(0)
    if boxes is None:
        return labels
    return torch.stack([labels[i, y : y + patch, x : x + patch] for i in range(labels.shape[0]) for y, x in boxes])
