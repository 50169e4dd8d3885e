"""BAE: boundary-aware enhancement loss (ElegantSeg Algorithm 1, EHSNet Eqs. (6)-(9)).

The Sobel operator (kernel size b = 5) is run on the label mask, not the image; where its
response is non-zero the pixel is a boundary pixel and its cross-entropy weight is 1 + w_bd.
The same weight map multiplies the main and the auxiliary cross-entropy:
``loss = CE_w(seg) + w_aux * CE_w(aux)`` with w_aux = 0.4.

Ignored pixels (``ignore_index``) are excluded from the boundary computation this way: inside
the Sobel window of a pixel p, every ignored neighbour takes p's own label, so an ignored
neighbour never makes an edge, and a valid neighbour of another class still does. Because
Sobel kernels sum to zero this is two plain convolutions,

    G(p) = (K * (V M))(p) - M(p) (K * V)(p),     V = valid mask, M = labels,

exact in integers. The image border is mirrored (reflect-101, OpenCV's default for Sobel and
scipy.ndimage's ``mode='mirror'``), so the frame of the image is no boundary either. Ignored
pixels themselves get weight 0: they are out of the loss.

Torch only (no scipy at run time); the tests compare with scipy.ndimage.
"""

from __future__ import annotations

from math import comb
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "sobel_kernels",
    "label_sobel",
    "boundary_mask",
    "boundary_weights",
    "weighted_cross_entropy",
    "elegantseg_loss",
    "BoundaryAwareLoss",
]


def sobel_kernels(ksize: int = 5, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """(2, 1, k, k) Sobel kernels d/dx, d/dy as OpenCV builds them (``getDerivKernels``).

    Smoothing: binomial coefficients of order k - 1 ([1, 4, 6, 4, 1] for k = 5); derivative:
    binomial of order k - 3 convolved with [-1, 0, 1] ([-1, -2, 0, 2, 1] for k = 5).
    """
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError(f"ksize must be odd and >= 3, got {ksize}")
    smooth = torch.tensor([comb(ksize - 1, i) for i in range(ksize)], dtype=torch.float64)
    inner = [comb(ksize - 3, i) for i in range(ksize - 2)]
    deriv = torch.tensor([(inner[i - 2] if i >= 2 else 0) - (inner[i] if i < ksize - 2 else 0)
                          for i in range(ksize)], dtype=torch.float64)
    kx = torch.outer(smooth, deriv)  # rows smooth (y), columns differentiate (x)
    return torch.stack([kx, kx.T]).unsqueeze(1).to(dtype=dtype, device=device)


def _as_batch(labels: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if labels.dim() == 2:
        return labels.unsqueeze(0), True
    if labels.dim() != 3:
        raise ValueError(f"labels must be (H, W) or (N, H, W), got {tuple(labels.shape)}")
    return labels, False


def label_sobel(labels: torch.Tensor, ksize: int = 5, ignore_index: int | None = 255) -> torch.Tensor:
    """Sobel gradient magnitude of a label mask, ignored pixels excluded (see module doc).

    ``labels`` (N, H, W) or (H, W) integer class ids -> float32 magnitude of the same shape
    (0 at ignored pixels).
    """
    lab, squeeze = _as_batch(labels)
    m = lab.to(torch.float32).unsqueeze(1)
    valid = (lab != ignore_index).unsqueeze(1) if ignore_index is not None else torch.ones_like(m, dtype=torch.bool)
    v = valid.to(torch.float32)
    k = sobel_kernels(ksize, torch.float32, lab.device)
    p = ksize // 2
    mode = "reflect" if min(lab.shape[-2:]) > p else "replicate"  # reflect needs pad < size
    vm = F.pad(torch.cat([v * m, v], dim=0), (p, p, p, p), mode=mode)
    n = lab.shape[0]
    g = F.conv2d(vm, k)  # (2N, 2, H, W)
    # Integer sums: rounding removes whatever the convolution algorithm's float error was.
    g = (g[:n] - m * g[n:]).round()
    mag = torch.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2) * valid[:, 0]
    return mag[0] if squeeze else mag


def boundary_mask(labels: torch.Tensor, ksize: int = 5, ignore_index: int | None = 255) -> torch.Tensor:
    """Bool map: Sobel of the mask non-zero (boundary pixels), never at ignored pixels."""
    return label_sobel(labels, ksize, ignore_index) > 0


def boundary_weights(
    labels: torch.Tensor, ksize: int = 5, w_bd: float = 1.0, ignore_index: int | None = 255
) -> torch.Tensor:
    """BAE weight map: 1 + w_bd on boundary pixels, 1 elsewhere, 0 on ignored pixels (float32)."""
    w = 1.0 + w_bd * boundary_mask(labels, ksize, ignore_index).to(torch.float32)
    if ignore_index is not None:
        w = w * (labels != ignore_index)
    return w


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, ignore_index: int | None = 255
) -> torch.Tensor:
    """sum(w * CE) / number of non-ignored pixels.

    Dividing by the pixel count (not by sum(w)) is what makes boundary pixels weigh more: with
    w = 1 everywhere this is ``F.cross_entropy(..., ignore_index=...)``. Logits of another size
    than the labels are resized bilinearly first.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    target = labels.long()
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=-100 if ignore_index is None else ignore_index)
    count = (labels != ignore_index).sum() if ignore_index is not None else torch.tensor(labels.numel())
    return (ce * weights).sum() / count.clamp(min=1).to(ce.dtype)


def elegantseg_loss(
    out: Any,
    labels: torch.Tensor,
    w_bd: float = 1.0,
    w_aux: float = 0.4,
    ksize: int = 5,
    ignore_index: int | None = 255,
    return_terms: bool = False,
):
    """Total BAE loss of a model output (anything with ``logits`` and ``aux_logits``).

    ``seg + w_aux * aux``, both weighted by :func:`boundary_weights`. With ``return_terms``
    returns ``(total, {'seg': ..., 'aux': ..., 'weights': ...})``.
    """
    weights = boundary_weights(labels, ksize, w_bd, ignore_index)
    seg = weighted_cross_entropy(out.logits, labels, weights, ignore_index)
    aux = weighted_cross_entropy(out.aux_logits, labels, weights, ignore_index)
    total = seg + w_aux * aux
    if return_terms:
        return total, {"seg": seg.detach(), "aux": aux.detach(), "weights": weights}
    return total


class BoundaryAwareLoss(nn.Module):
    """Module form of :func:`elegantseg_loss`."""

    def __init__(self, w_bd: float = 1.0, w_aux: float = 0.4, ksize: int = 5, ignore_index: int | None = 255):
        super().__init__()
        self.w_bd, self.w_aux, self.ksize, self.ignore_index = w_bd, w_aux, ksize, ignore_index

    def forward(self, out: Any, labels: torch.Tensor) -> torch.Tensor:
        return elegantseg_loss(out, labels, self.w_bd, self.w_aux, self.ksize, self.ignore_index)

    def extra_repr(self) -> str:
        return f"w_bd={self.w_bd}, w_aux={self.w_aux}, ksize={self.ksize}, ignore_index={self.ignore_index}"
