"""Training losses: ElegantSeg's BAE (:mod:`.bae`), ISDNet's (:mod:`.isdnet`), and GLNet's and FCtL's
focal losses by training stage (:mod:`.glnet`, :mod:`.fctl`, on :mod:`.focal`).

:func:`training_loss` picks the one a model's output asks for (its ``loss`` attribute; ElegantSeg's
outputs have none), so the trainer runs any model family unchanged; :func:`loss_terms` names the
terms a model's loss logs before any forward (ranks average them by name).
"""

from __future__ import annotations

from typing import Any

import torch

from .bae import (BoundaryAwareLoss, banded_bae_loss, boundary_mask, boundary_weights, elegantseg_loss, label_sobel,
                  sobel_kernels, weighted_cross_entropy)
from .fctl import fctl_loss
from .focal import focal_loss
from .glnet import glnet_loss
from .isdnet import ISD_WEIGHTS, affinity_l1, isdnet_loss, resized_ce

__all__ = [
    "sobel_kernels", "label_sobel", "boundary_mask", "boundary_weights", "weighted_cross_entropy", "elegantseg_loss",
    "banded_bae_loss", "BoundaryAwareLoss", "ISD_WEIGHTS", "isdnet_loss", "affinity_l1", "resized_ce", "training_loss",
    "loss_terms", "focal_loss", "glnet_loss", "fctl_loss",
]

FAMILY_LOSSES = {"isdnet": isdnet_loss, "glnet": glnet_loss, "fctl": fctl_loss}  # (out, labels, ignore_index)

TERMS = {"elegantseg": ("seg", "aux"), "isdnet": tuple(ISD_WEIGHTS)}


def loss_terms(model: Any) -> tuple[str, ...]:
    """The logged terms of ``model``'s training loss: its own ``loss_terms`` where they depend on
    its training stage (GLNet, FCtL), else those of its ``loss_kind`` (ElegantSeg's by default)."""
    own = getattr(model, "loss_terms", None)
    return tuple(own) if own is not None else TERMS[getattr(model, "loss_kind", "elegantseg")]


def training_loss(out: Any, labels: torch.Tensor, loss_cfg: Any, ignore_index: int | None = 255
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, scalar terms) of a training forward's output; ``loss_cfg`` is the config's ``loss``
    (w_bd, w_aux, sobel_ksize: BAE's; ISDNet's weights are the official code's)."""
    kind = getattr(out, "loss_kind", "elegantseg")
    if kind in FAMILY_LOSSES:
        return FAMILY_LOSSES[kind](out, labels, ignore_index)
    if kind != "elegantseg":
        raise ValueError(f"no training loss for model outputs of kind {kind!r}")
    total, terms = elegantseg_loss(out, labels, loss_cfg.w_bd, loss_cfg.w_aux, loss_cfg.sobel_ksize, ignore_index,
                                   return_terms=True, class_weights=getattr(loss_cfg, "class_weights", None))
    return total, {k: terms[k] for k in ("seg", "aux")}
