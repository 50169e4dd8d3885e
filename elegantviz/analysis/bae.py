"""How the BAE loss treats a prediction: weight maps and loss terms as ksize and w_bd move.

Thin wrappers over ``elegantviz.losses`` (the very functions training calls) that take and
return numpy, so notebook sliders and plots see what training sees.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _torch_labels(labels: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(labels).astype(np.int64))


def weight_map(labels: np.ndarray, ksize: int = 5, w_bd: float = 1.0, ignore_index: int | None = 255) -> np.ndarray:
    """(h, w) BAE weights of a label mask: 1 + w_bd on Sobel boundaries, 1 inside, 0 ignored."""
    from elegantviz.losses import boundary_weights

    return boundary_weights(_torch_labels(labels), ksize, w_bd, ignore_index).numpy()


def loss_terms(logits: np.ndarray, aux_logits: np.ndarray, labels: np.ndarray, ksize: int = 5, w_bd: float = 1.0,
               w_aux: float = 0.4, ignore_index: int | None = 255) -> dict[str, float]:
    """The BAE loss of one prediction, and how much of it the boundary pixels carry.

    ``logits`` and ``aux_logits`` are (c, h, w) (resized to the labels as in training).
    Returns total, seg and aux (what ``elegantseg_loss`` gives), the share of the weighted main
    term that comes from boundary pixels and the share of labelled pixels on a boundary.
    """
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F

    from elegantviz.losses import boundary_mask, elegantseg_loss

    out = SimpleNamespace(logits=torch.from_numpy(np.asarray(logits, np.float32))[None],
                          aux_logits=torch.from_numpy(np.asarray(aux_logits, np.float32))[None])
    lab = _torch_labels(labels)[None]
    total, terms = elegantseg_loss(out, lab, w_bd, w_aux, ksize, ignore_index, return_terms=True)
    seg_logits = out.logits
    if seg_logits.shape[-2:] != lab.shape[-2:]:
        seg_logits = F.interpolate(seg_logits, size=lab.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(seg_logits, lab, reduction="none", ignore_index=-100 if ignore_index is None else ignore_index)
    weighted = (ce * terms["weights"])[0]
    on_boundary = boundary_mask(lab, ksize, ignore_index)[0]
    labelled = int((lab != ignore_index).sum()) if ignore_index is not None else lab.numel()
    seg_sum = float(weighted.sum())
    return {
        "total": float(total),
        "seg": float(terms["seg"]),
        "aux": float(terms["aux"]),
        "boundary_loss_share": float(weighted[on_boundary].sum()) / seg_sum if seg_sum > 0 else 0.0,
        "boundary_pixel_share": float(on_boundary.sum()) / max(labelled, 1),
    }


def loss_sweep(logits: np.ndarray, aux_logits: np.ndarray, labels: np.ndarray, ksizes: Sequence[int],
               w_bds: Sequence[float], key: str = "total", **kw) -> np.ndarray:
    """(len(ksizes), len(w_bds)) array of one loss term over a grid of settings."""
    return np.array([[loss_terms(logits, aux_logits, labels, k, w, **kw)[key] for w in w_bds] for k in ksizes])
