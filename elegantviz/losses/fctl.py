"""FCtL's training loss (baselines.md 3.4): focal loss, gamma = 3, on every patch's full-resolution logits.

The official code runs each 508 px patch through the network and takes the focal loss of its
508 x 508 logits against the patch's labels; the patches of a scene are processed in sub-batches
with gradients accumulated, so the optimiser step sees the mean over the patches. Here the model's
training forward returns all the patches' logits of a scene at once (:class:`FCtLOutput
<elegantviz.models.fctl.FCtLOutput>`: ``patch_logits`` (B, K, p, p) and their ``boxes``), and this
loss crops the labels ``labels[:, y:y+p, x:x+p]`` for each box itself. Every patch has the same
pixel count, so the mean over the labelled pixels of all patches is the official mean of the
per-patch means wherever no pixel is ignored (with nodata, patches weigh by their labelled pixels).

One term, the same at every stage (``loss_terms == ("focal",)``).
"""

from __future__ import annotations

from typing import Any

import torch

from .focal import focal_loss, patch_labels

__all__ = ["FCTL_TERMS", "fctl_loss"]

FCTL_TERMS = ("focal",)


def fctl_loss(out: Any, labels: torch.Tensor, ignore_index: int | None = 255, gamma: float = 3.0
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, {"focal": value}) of an FCtL training output against (n, H, W) scene labels.

    ``out.patch_logits`` is (n * len(out.boxes), K, p, p), ``out.boxes`` the (top, left) of each
    patch in scene pixels and ``out.patch`` its side p. The logits stay at full patch resolution
    (FCN-8s decodes to the input size), so no resizing happens (but for ``boxes=None``)."""
    logits = out.patch_logits
    p = int(out.patch)
    boxes = None if out.boxes is None else list(out.boxes)
    target = patch_labels(labels, boxes, p)
    mismatch = boxes is not None and tuple(target.shape[-2:]) != tuple(logits.shape[-2:])
    if target.shape[0] != logits.shape[0] or mismatch:
        raise ValueError(f"FCtL loss: {logits.shape[0]} patch logits of {tuple(logits.shape[-2:])} against "
                         f"{target.shape[0]} label crops of {tuple(target.shape[-2:])}")
    loss = focal_loss(logits, target, gamma=gamma, ignore_index=ignore_index)
    return loss, {"focal": loss.detach()}
