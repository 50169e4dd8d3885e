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

At full scene size the upsampled logits dominate a training step's memory (24 classes at
6800x7200: 4.7 GB per logit map, and cross-entropy keeps as much again for backward). So when the
model hands over logits at its feature stride (``SegOutput.stride > 1``) the loss upsamples,
weighs and sums them band by band of rows, and recomputes each band in backward
(:class:`_BandedBAE`): nothing of input size is ever held but the labels. Every pixel's term is
the same arithmetic as the plain path; only the order of the final sums differs.

Torch only (no scipy at run time); the tests compare with scipy.ndimage.
"""

from __future__ import annotations

from math import comb
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from elegantviz.autocast import no_autocast

__all__ = [
    "sobel_kernels",
    "label_sobel",
    "boundary_mask",
    "boundary_weights",
    "weighted_cross_entropy",
    "elegantseg_loss",
    "banded_bae_loss",
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
    with no_autocast(lab):  # under bf16 autocast the sums would lose their integers
        g = F.conv2d(vm, k)  # (2N, 2, H, W)
    # Integer sums: rounding removes whatever the convolution algorithm's float error was.
    g = (g[:n] - m * g[n:]).round()
    mag = torch.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2) * valid[:, 0]
    return mag[0] if squeeze else mag


def boundary_mask(labels: torch.Tensor, ksize: int = 5, ignore_index: int | None = 255) -> torch.Tensor:
    """Bool map: Sobel of the mask non-zero (boundary pixels), never at ignored pixels."""
    return label_sobel(labels, ksize, ignore_index) > 0


def boundary_weights(
    labels: torch.Tensor, ksize: int = 5, w_bd: float = 1.0, ignore_index: int | None = 255,
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """BAE weight map: 1 + w_bd on boundary pixels, 1 elsewhere, 0 on ignored pixels (float32),
    times ``class_weights[label]`` when given (rare classes weigh more)."""
    w = 1.0 + w_bd * boundary_mask(labels, ksize, ignore_index).to(torch.float32)
    valid = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    if class_weights is not None:
        table = torch.as_tensor(class_weights, dtype=torch.float32, device=labels.device)
        w = w * table[torch.where(valid, labels.long(), 0)]
    return w * valid


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
    class_weights: Sequence[float] | None = None,
):
    """Total BAE loss of a model output (anything with ``logits`` and ``aux_logits``).

    ``seg + w_aux * aux``, both weighted by :func:`boundary_weights`. Logits at the model's
    feature stride (an output with ``stride > 1``) go through :func:`banded_bae_loss`. With
    ``return_terms`` returns ``(total, {'seg': ..., 'aux': ...})``, plus ``'weights'`` (the
    whole weight map) on the plain path.
    """
    stride = int(getattr(out, "stride", 1) or 1)
    if stride > 1:
        seg, aux = banded_bae_loss(out.logits, out.aux_logits, labels, stride, w_bd, ksize, ignore_index,
                                   class_weights=class_weights)
        weights = None
    else:
        weights = boundary_weights(labels, ksize, w_bd, ignore_index, class_weights)
        seg = weighted_cross_entropy(out.logits, labels, weights, ignore_index)
        aux = weighted_cross_entropy(out.aux_logits, labels, weights, ignore_index)
    total = seg + w_aux * aux
    if return_terms:
        terms = {"seg": seg.detach(), "aux": aux.detach()}
        if weights is not None:
            terms["weights"] = weights
        return total, terms
    return total


def _upsample_rows(band: torch.Tensor, stride: int, first: int, rows: tuple[int, int], width: int) -> torch.Tensor:
    """Input rows ``rows`` (and columns ``:width``) of the bilinear x``stride`` upsampling of the
    feature rows in ``band``, whose first row is feature row ``first``.

    The same interpolation as the model's: ``scale_factor=stride`` makes 1/stride the source step
    in both, and the band's one row of halo each side gives every output row both its sources.
    """
    up = F.interpolate(band.float(), scale_factor=stride, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)
    return up[..., rows[0] - first * stride: rows[1] - first * stride, :width]


class _BandedBAE(torch.autograd.Function):
    """(seg, aux) sums of the weighted cross-entropy of stride-s logits against input-size labels.

    Forward runs band by band without a graph; backward recomputes each band with one and adds
    its gradient into the feature rows it came from. Saved: the two logit maps and the labels.
    """

    @staticmethod
    def forward(ctx, logits, aux_logits, labels, stride, w_bd, ksize, ignore_index, band_rows, class_weights):
        ctx.save_for_backward(logits, aux_logits, labels)
        ctx.args = (stride, w_bd, ksize, ignore_index, band_rows, class_weights)
        seg = aux = 0.0
        for a, b, rows in _bands(logits.shape[-2], labels.shape[-2], stride, band_rows):
            s, x = _band_sums(logits[..., a:b, :], aux_logits[..., a:b, :], a, rows, labels, *ctx.args[:4],
                              class_weights)
            seg, aux = seg + s, aux + x
        return seg.float(), aux.float()

    @staticmethod
    def backward(ctx, g_seg, g_aux):
        logits, aux_logits, labels = ctx.saved_tensors
        stride, w_bd, ksize, ignore_index, band_rows, class_weights = ctx.args
        grads = [torch.zeros_like(logits), torch.zeros_like(aux_logits)]
        for a, b, rows in _bands(logits.shape[-2], labels.shape[-2], stride, band_rows):
            with torch.enable_grad():
                bands = [t[..., a:b, :].detach().requires_grad_() for t in (logits, aux_logits)]
                sums = _band_sums(*bands, a, rows, labels, stride, w_bd, ksize, ignore_index, class_weights)
                got = torch.autograd.grad(sums, bands, (g_seg.to(sums[0].dtype), g_aux.to(sums[1].dtype)))
            for g, part in zip(grads, got):
                g[..., a:b, :] += part
        return grads[0], grads[1], None, None, None, None, None, None, None


def _bands(feat_rows: int, label_rows: int, stride: int, band_rows: int):
    """(a, b, (r0, r1)): feature rows a:b (halo included) give input rows r0:r1."""
    for f0 in range(0, feat_rows, band_rows):
        f1 = min(f0 + band_rows, feat_rows)
        r0, r1 = f0 * stride, min(f1 * stride, label_rows)
        if r0 < r1:
            yield max(f0 - 1, 0), min(f1 + 1, feat_rows), (r0, r1)


def _band_sums(logits, aux_logits, first, rows, labels, stride, w_bd, ksize, ignore_index, class_weights=None):
    """Weighted CE sums (float64) of both logit bands over input rows ``rows``."""
    r0, r1 = rows
    p = ksize // 2
    h0, h1 = max(r0 - p, 0), min(r1 + p, labels.shape[-2])  # the Sobel window's halo
    lab = labels[..., h0:h1, :]
    w = boundary_weights(lab, ksize, w_bd, ignore_index, class_weights)[..., r0 - h0: r1 - h0, :]
    target = lab[..., r0 - h0: r1 - h0, :].long()
    ign = -100 if ignore_index is None else ignore_index
    sums = []
    for t in (logits, aux_logits):
        ce = F.cross_entropy(_upsample_rows(t, stride, first, rows, labels.shape[-1]), target,
                             reduction="none", ignore_index=ign)
        sums.append((ce * w).sum(dtype=torch.float64))
    return tuple(sums)


def banded_bae_loss(
    logits: torch.Tensor,
    aux_logits: torch.Tensor,
    labels: torch.Tensor,
    stride: int,
    w_bd: float = 1.0,
    ksize: int = 5,
    ignore_index: int | None = 255,
    band_bytes: int = 64 << 20,
    class_weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(seg, aux) weighted cross-entropies of logits at ``stride`` against input-size ``labels``.

    Equal to upsampling the logits by ``stride`` (bilinear, cropped to the labels, as
    ``ElegantSeg`` does) and calling :func:`weighted_cross_entropy` with
    :func:`boundary_weights`, but no tensor of input size x classes ever exists: rows are
    processed in bands (at least 32, each at most ``band_bytes`` of upsampled logits) and
    recomputed in backward.
    """
    if labels.dim() == 2:
        labels = labels.unsqueeze(0)
    n, c, hf, wf = logits.shape
    h, w = labels.shape[-2:]
    if labels.shape[0] != n or hf * stride < h or wf * stride < w or (hf - 1) * stride >= h:
        raise ValueError(f"logits {tuple(logits.shape)} at stride {stride} do not cover labels {tuple(labels.shape)}")
    # At least 32 bands, so band memory is a share of the scene (linear in pixels, as the planner
    # assumes), and none over band_bytes.
    band_rows = max(1, min(band_bytes // max(1, n * c * w * 4 * stride), -(-hf // 32)))
    seg, aux = _BandedBAE.apply(logits, aux_logits, labels, stride, w_bd, ksize, ignore_index, band_rows,
                                None if class_weights is None else tuple(class_weights))
    count = (labels != ignore_index).sum() if ignore_index is not None else torch.tensor(labels.numel())
    count = count.clamp(min=1).to(seg.dtype)
    return seg / count, aux / count


class BoundaryAwareLoss(nn.Module):
    """Module form of :func:`elegantseg_loss`."""

    def __init__(self, w_bd: float = 1.0, w_aux: float = 0.4, ksize: int = 5, ignore_index: int | None = 255):
        super().__init__()
        self.w_bd, self.w_aux, self.ksize, self.ignore_index = w_bd, w_aux, ksize, ignore_index

    def forward(self, out: Any, labels: torch.Tensor) -> torch.Tensor:
        return elegantseg_loss(out, labels, self.w_bd, self.w_aux, self.ksize, self.ignore_index)

    def extra_repr(self) -> str:
        return f"w_bd={self.w_bd}, w_aux={self.w_aux}, ksize={self.ksize}, ignore_index={self.ignore_index}"
