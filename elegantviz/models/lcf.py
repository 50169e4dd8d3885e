"""FCtL's locality-aware context fusion (LCF, baselines.md 3.3; fctl.txt 3.3): the correlations
(LCC) of the local pool5 with itself and with each context's pool5, and their adaptive
multi-context fusion (MCF); plus the context geometry both LCF and ALE (:mod:`.ale`) rely on.

**Geometry.** A context is the ``mul * p`` square centred on a patch, cut from the zero-padded
scene and resized to ``p`` (or, DeepGlobe's global context, the whole scene resized to ``p``). A
patch pixel u (continuous, per axis) then lands at context pixel ``a * u + b`` (:func:`centred_map`,
:func:`global_map`: (B, 2, 2) tensors [[a_y, b_y], [a_x, b_x]]). A trunk's pool5 cell f sits at
pixel ``stride * f - pad`` (:class:`~.fcn8s.VGGTrunk`), so local feature f maps to context
feature ``a * f + (b + pad * (1 - a)) / stride`` (:func:`feature_map`).

**LCC** (:class:`Correlation`), one per context, as the official code: Q = W_q x, K = W_k y (1 x 1
convs with bias), V = W_v y (no bias), A = softmax over the keys of Q^T K (no 1 / sqrt(d)),
out = gamma * V A^T with gamma a scalar initialised to 0, the convs N(0, 0.01) with zero bias.
``center=True`` subtracts each channel's spatial mean from Q and K first (the DeepGlobe branch).
``gpe=True`` adds the journal's gated positional embeddings (fctl.txt Eq. 2):
A = Norm(sigmoid(z) softmax(Q^T K) + (1 - sigmoid(z)) softmax(r W_r)). The paper leaves r's form
and the inits open; here, as ConViT (its ref. [62]), r = (dy, dx, dy^2 + dx^2) is the offset from
the query to the key in local pool5 cells, the key's position taken through the geometry above
(so a context token sits where its pixels are in the scene), W_r starts at (0, 0, -1) (attend to
the same place), z at 0 (an even mix), and Norm divides each row by its sum.

**MCF** (:class:`MultiContextFusion`), as the official code: a 1 x 1 conv per branch (H_i), one
1 x 1 conv over their concatenation (squeeze-and-split: 3c -> 3c), a 1 x 1 conv + sigmoid per
branch, a softmax across the branches (per channel and position), and sum_i w_i * out_i; the
caller adds it to pool5 (the residual). Its convs keep PyTorch's default init (the official
code does not re-initialise them). With gamma = 0 every out_i is 0: pool5 passes unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..autocast import no_autocast

__all__ = [
    "Correlation",
    "MultiContextFusion",
    "centred_map",
    "feature_map",
    "global_map",
    "identity_map",
    "relative_positions",
]


def identity_map(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """The patch itself as its context (the self-correlation): a = 1, b = 0."""
    m = torch.zeros(batch, 2, 2, device=device)
    m[:, :, 0] = 1.0
    return m


def centred_map(mul: float, patch: int, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """Patch pixel -> context pixel for the ``mul * patch`` square centred on the patch, resized to
    ``patch``: a = 1 / mul, b = patch * (1 - 1 / mul) / 2 on both axes."""
    m = torch.empty(batch, 2, 2, device=device)
    m[:, :, 0] = 1.0 / mul
    m[:, :, 1] = patch * (1 - 1.0 / mul) / 2
    return m


def global_map(boxes: Sequence[tuple[int, int]], patch: int, scene_hw: tuple[int, int],
               device: torch.device | None = None) -> torch.Tensor:
    """Patch pixel -> thumbnail pixel for the whole (H, W) scene resized to ``patch`` x ``patch``:
    a = p / H, b = top * p / H (rows); a = p / W, b = left * p / W (columns)."""
    (H, W), m = scene_hw, torch.empty(len(boxes), 2, 2, device=device)
    for i, (y, x) in enumerate(boxes):
        m[i, 0, 0], m[i, 0, 1] = patch / H, y * patch / H
        m[i, 1, 0], m[i, 1, 1] = patch / W, x * patch / W
    return m


def feature_map(pixel_map: torch.Tensor, pad: int, stride: int) -> torch.Tensor:
    """The pixel map (B, 2, 2) seen on the trunks' pool5 grids: local cell f -> context cell a f + beta."""
    a, b = pixel_map[..., 0], pixel_map[..., 1]
    return torch.stack([a, (b + pad * (1 - a)) / stride], dim=-1)


def relative_positions(fmap: torch.Tensor, q_hw: tuple[int, int], k_hw: tuple[int, int]) -> torch.Tensor:
    """(B, Nq, Nk, 3) offsets (dy, dx, dy^2 + dx^2) from each local pool5 cell to each context
    cell, in local cells (the context cell taken back to local coordinates through ``fmap``)."""
    dev = fmap.device
    qy, qx = torch.arange(q_hw[0], device=dev) + 0.5, torch.arange(q_hw[1], device=dev) + 0.5
    ky, kx = torch.arange(k_hw[0], device=dev) + 0.5, torch.arange(k_hw[1], device=dev) + 0.5
    a, beta = fmap[..., 0], fmap[..., 1]  # (B, 2): rows, columns
    ky = (ky[None] - beta[:, 0:1]) / a[:, 0:1]  # (B, hk) in local cells
    kx = (kx[None] - beta[:, 1:2]) / a[:, 1:2]
    dy = ky[:, None, :] - qy[None, :, None]  # (B, hq, hk)
    dx = kx[:, None, :] - qx[None, :, None]  # (B, wq, wk)
    n = fmap.shape[0]
    dy = dy[:, :, None, :, None].expand(n, q_hw[0], q_hw[1], k_hw[0], k_hw[1])
    dx = dx[:, None, :, None, :].expand(n, q_hw[0], q_hw[1], k_hw[0], k_hw[1])
    r = torch.stack([dy, dx, dy * dy + dx * dx], dim=-1)
    return r.reshape(n, q_hw[0] * q_hw[1], k_hw[0] * k_hw[1], 3)


class Correlation(nn.Module):
    """One locality-aware contextual correlation: ``forward(x, y, fmap)`` -> gamma * attn(x -> y),
    the shape of x. ``y`` may have batch 1 (the global context, shared by the patches)."""

    def __init__(self, channels: int, center: bool = False, gpe: bool = False):
        super().__init__()
        self.center, self.gpe = center, gpe
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))
        for conv in (self.query, self.key, self.value):
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if gpe:
            self.pos_weight = nn.Parameter(torch.tensor([0.0, 0.0, -1.0]))  # W_r
            self.pos_gate = nn.Parameter(torch.zeros(1))  # z

    def attention(self, x: torch.Tensor, y: torch.Tensor, fmap: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Nq, Nk) attention of the local cells over the context cells (rows sum to 1)."""
        n = x.shape[0]
        q = self.query(x).flatten(2)  # (B, C, Nq)
        k = self.key(y).flatten(2).expand(n, -1, -1)  # (B, C, Nk)
        if self.center:
            q = q - q.mean(dim=2, keepdim=True)
            k = k - k.mean(dim=2, keepdim=True)
        with no_autocast(q):  # unscaled logits reach the hundreds: bfloat16 would flatten the softmax
            attn = torch.softmax(q.float().transpose(1, 2) @ k.float(), dim=-1).to(q.dtype)
        if self.gpe:
            if fmap is None:
                raise ValueError("gated positional embeddings need the context's feature map (fmap)")
            r = relative_positions(fmap.to(x.dtype), x.shape[-2:], y.shape[-2:])
            pos = torch.softmax(r @ self.pos_weight.to(x.dtype), dim=-1)
            g = torch.sigmoid(self.pos_gate).to(x.dtype)
            attn = g * attn + (1 - g) * pos
            attn = attn / attn.sum(dim=-1, keepdim=True)
        return attn

    def forward(self, x: torch.Tensor, y: torch.Tensor, fmap: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        v = self.value(y).flatten(2).expand(n, -1, -1)  # (B, C, Nk)
        out = v @ self.attention(x, y, fmap).transpose(1, 2)  # (B, C, Nq)
        return self.gamma.to(x.dtype) * out.reshape(n, c, h, w)


class MultiContextFusion(nn.Module):
    """MCF: adaptive weights for the branches' locality-aware features, softmax-normalised across
    the branches; ``forward([out_1, out_2, out_3])`` -> sum_i w_i * out_i."""

    def __init__(self, channels: int, branches: int = 3):
        super().__init__()
        self.channels = channels
        self.inp = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(branches))
        self.trans = nn.Conv2d(branches * channels, branches * channels, 1)
        self.out = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(branches))

    def weights(self, outs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(branches, B, C, h, w) fusion weights, summing to 1 over the branches."""
        h = self.trans(torch.cat([conv(o) for conv, o in zip(self.inp, outs)], dim=1)).split(self.channels, dim=1)
        return torch.stack([torch.sigmoid(conv(hi)) for conv, hi in zip(self.out, h)]).softmax(dim=0)

    def forward(self, outs: Sequence[torch.Tensor]) -> torch.Tensor:
        w = self.weights(outs)
        return sum(w[i] * o for i, o in enumerate(outs))
