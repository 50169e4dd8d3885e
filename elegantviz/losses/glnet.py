"""GLNet's training losses by stage, as the official code sums them for one scene (baselines.md 2.2).

    stage "global"        focal(global)
    stage "global2local"  sum over sub-batches of [focal(local) + focal(ensemble) + 0.15 * fmreg]
    stage "local2global"  focal(global) + sum over sub-batches of focal(ensemble)

Every focal term is :func:`~elegantviz.losses.focal.focal_loss` (gamma 3; ``gamma=0`` is
cross-entropy, the digest's acceptable simplification, as a flag) at the logits' own 1/4
resolution, the labels resized by nearest neighbour: the whole scene's labels for the global
logits (the thumbnail's 1/4 grid), each patch's crop ``labels[:, y:y+p, x:x+p]`` for the patch
logits. The official code calls ``backward()`` once per sub-batch of patches, each on that
sub-batch's mean, so the patch terms are sums over sub-batches of per-sub-batch means (their
logged values grow with the number of sub-batches); with one scene per step this is the
official loss exactly. ``fmreg`` is the mean squared difference of the local ps3 and the crop of
the (frozen) global ps3, computed by the model per sub-batch (so that the 512-channel maps of all
patches never need to be held at once) and weighted here.
"""

from __future__ import annotations

from typing import Any

import torch

from .focal import focal_loss, patch_labels

__all__ = ["GLNET_TERMS", "FMREG_WEIGHT", "glnet_loss"]

# stage -> the terms its loss returns (the model's ``loss_terms`` for that stage)
GLNET_TERMS: dict[str, tuple[str, ...]] = {
    "global": ("global",),
    "global2local": ("local", "ensemble", "fmreg"),
    "local2global": ("global", "ensemble"),
}
FMREG_WEIGHT = 0.15  # official option.py --lamb_fmreg


def glnet_loss(out: Any, labels: torch.Tensor, ignore_index: int | None = 255, gamma: float = 3.0,
               fmreg_weight: float = FMREG_WEIGHT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, terms) of a GLNet training output (``GLNetOutput``) against (1, H, W) labels;
    ``terms`` are the unweighted values (detached), keyed as ``GLNET_TERMS[out.stage]``."""
    if labels.dim() == 2:
        labels = labels.unsqueeze(0)
    if labels.shape[0] != 1:
        raise ValueError(f"GLNet trains on one scene at a time, got labels for {labels.shape[0]}")
    names = GLNET_TERMS[out.stage]
    terms: dict[str, torch.Tensor] = {}
    if "global" in names:
        terms["global"] = focal_loss(out.global_logits, labels, gamma, ignore_index)
    for name, maps in (("local", out.local_logits), ("ensemble", out.ensemble_logits)):
        if name in names:
            terms[name] = sum(focal_loss(logits, patch_labels(labels, boxes, out.patch_size), gamma, ignore_index)
                              for logits, boxes in zip(maps, out.boxes, strict=True))
    if "fmreg" in names:
        terms["fmreg"] = sum(out.fmreg)
    total = sum((fmreg_weight if k == "fmreg" else 1.0) * v for k, v in terms.items())
    return total, {k: terms[k].detach() for k in names}
