"""ECR: efficient class relation (ElegantSeg) / efficient cross-correlation (EHSNet).

Algorithm 1 of ElegantSeg: the margin between the two largest auxiliary logits measures how
sure the auxiliary head is; the ``ratio`` (a = 10 %) pixels with the smallest margin form the
hard region. Their features attend to the whole image with efficient attention (Shen et al.):

    keys    = rho_k(F)   softmax over positions          (d x N)
    queries = rho_q(F_R) softmax over channels           (d x m)
    context = keys @ F^T                                 (d x d)
    F_R    <- F_R + context^T @ queries                  (form='paper')

which equals ``(rho_q(Q)^T rho_k(K)) V`` with the explicit m x N attention map but never builds
it: memory is O(d^2 + d N) instead of O(m N). With ``norm='scaling'`` both are divided by
sqrt(N) and the result is plain dot-product attention scaled by 1/N.

Why the default ``form='projected'`` departs from Algorithm 1. Algorithm 1 has no parameters:
it adds one global context, of the features' own magnitude, to exactly the pixels the auxiliary
head is least sure of. On riverworld those are the water pixels (34 % of the river and 84 % of
the pond pixels were hard), the context is built mostly from land, and the main head, fed
``water + land context``, never learned water (river and pond IoU 0 while the auxiliary head on
the same features had 0.62 / 0.33; with the context module replaced by a 1x1 projection, too).
Attention residuals that train well start as the identity and learn how much context to take:
DANet's and FCtL's ``x + gamma * attention`` with gamma = 0 at init, OCRNet's and EANet's
projected queries and outputs. So here

    q    = rho_q(W_q F_R)                                W_q = I at init
    F_R <- F_R + gamma * (W_o context^T q + b_o)         W_o = I, b_o = 0, gamma = 0 at init

(gamma per channel). The keys stay the features themselves, so the keys, the context and the
streamed, tiled and offloaded code paths are unchanged; with keys = F a value projection
W_v F would give ``W_v context^T q``, a product the output projection already spans, so W_o does
both jobs. The stored queries (``Evidence.queries``, ``maps/queries``) are the projected ones,
so ``queries . keys`` is still the attention a pixel pays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..autocast import compute_dtype, no_autocast
from ..pages import drop_file_pages, spill_mapping

__all__ = ["ECR", "Evidence", "AttentionNorm", "ECRForm", "logit_margin", "select_hard", "num_hard",
           "efficient_attention", "key_context", "normalise", "CONTEXT_CHUNKS"]

AttentionNorm = Literal["softmax", "scaling"]
ECRForm = Literal["projected", "paper"]


@dataclass
class Evidence:
    """What ECR saw and did, detached, for the viewer and the scene store.

    ``hard_indices`` index the flattened (h * w) feature grid; ``keys`` are the normalised keys
    rho_k(F) at feature resolution, so the attention hard pixel q pays to pixel p is
    ``queries[:, q] . keys[:, p]``; ``context`` is the d x d matrix rho_k(F) F^T.
    ``keys``, ``queries`` and ``context`` are None when the model runs without ECR.
    """

    margin: torch.Tensor  # (n, h, w) top-1 minus top-2 auxiliary logit
    hard_indices: torch.Tensor  # (n, k) int64 into h * w
    keys: torch.Tensor | None  # (n, d, h, w)
    queries: torch.Tensor | None  # (n, d, k)
    context: torch.Tensor | None  # (n, d, d)
    feature_size: tuple[int, int]  # (h, w)
    output_stride: int = 1  # input pixels per feature pixel

    def hard_mask(self) -> torch.Tensor:
        """(n, h, w) bool map of the hard region."""
        n = self.margin.shape[0]
        mask = torch.zeros(n, self.feature_size[0] * self.feature_size[1], dtype=torch.bool,
                           device=self.margin.device)
        mask.scatter_(1, self.hard_indices, True)
        return mask.view(n, *self.feature_size)

    def attention_map(self, image: int = 0, hard: int | None = None) -> torch.Tensor:
        """(h, w) attention one hard pixel (``hard`` = its position in ``hard_indices``) or, by
        default, the mean hard pixel pays to every pixel."""
        if self.keys is None or self.queries is None:
            raise ValueError("no attention without ECR")
        q = self.queries[image]
        q = q.mean(dim=1) if hard is None else q[:, hard]
        return torch.einsum("d,dhw->hw", q, self.keys[image])


def logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> (n, h, w): largest minus second largest logit per pixel."""
    if logits.shape[1] < 2:
        raise ValueError("the margin needs at least two classes")
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def num_hard(num_pixels: int, ratio: float) -> int:
    """Size of the hard region: round(ratio * N), at least 1 pixel."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return min(num_pixels, max(1, int(round(ratio * num_pixels))))


def select_hard(margin: torch.Tensor, ratio: float) -> torch.Tensor:
    """(n, N) margins -> (n, k) indices of the k smallest per row (a partial top-k, no full sort)."""
    k = num_hard(margin.shape[1], ratio)
    return margin.topk(k, dim=1, largest=False, sorted=False).indices


def normalise(x: torch.Tensor, dim: int, norm: AttentionNorm, n: int) -> torch.Tensor:
    """rho of efficient attention: softmax along ``dim``, or division by sqrt(n) (n positions)."""
    if norm == "softmax":
        return x.softmax(dim=dim)
    if norm == "scaling":
        return x / math.sqrt(n)
    raise ValueError(f"unknown attention norm {norm!r}")


# The key context is built and differentiated in this many slices of positions: temporaries are
# a fixed share of the map (memory stays linear in pixels, as the planner assumes).
CONTEXT_CHUNKS = 16


class _KeyContext(torch.autograd.Function):
    """context = rho_k(F) @ F^T (n, d, d) without keeping rho_k(F) (n, d, N) for backward.

    Softmax keys come from a per-channel max and sum over positions, then everything runs over
    slices of positions. Backward needs no second reduction: with G = dL/dcontext,
    dF = G^T K + K * (G F - rowsum(G * context)) for softmax keys, dF = G^T K + G F / sqrt(N)
    for scaled ones. Autograd's version holds K, dK and two more (n, d, N) maps at once.
    Computed in float32 (or float64) whatever autocast says (a softmax over millions of
    positions needs it); the gradient comes back in the features' dtype.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, norm: str) -> torch.Tensor:
        n_pos = feats.shape[-1]
        dt = compute_dtype(feats)
        with no_autocast(feats):
            top = total = None
            softmax = norm == "softmax"
            if softmax:  # one pass: unnormalised keys, their sum and their context; divide at the end
                top = feats.amax(dim=2, keepdim=True).to(dt)
                total = torch.zeros_like(top)
            context = 0
            for f in _chunks(feats):
                f = f.to(dt)
                k = torch.exp(f - top) if softmax else f / math.sqrt(n_pos)
                if softmax:
                    total += k.sum(dim=2, keepdim=True)
                context = context + torch.bmm(k, f.transpose(1, 2))
            if softmax:
                context = context / total
        ctx.norm = norm
        ctx.save_for_backward(feats, context, *(() if top is None else (top, total)))
        return context

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        feats, context, *stats = ctx.saved_tensors
        top, total = stats if stats else (None, None)
        n_pos = feats.shape[-1]
        out = torch.empty_like(feats)
        mapping = spill_mapping(feats)  # read back from disk: give each slice's pages back when done
        with no_autocast(feats):
            grad = grad.to(context.dtype)
            row = (grad * context).sum(dim=2, keepdim=True) if ctx.norm == "softmax" else None
            start = 0
            for f in _chunks(feats):
                f = f.to(context.dtype)
                k = _keys(f, ctx.norm, n_pos, top, total)
                gk = torch.bmm(grad, f)  # dL/dkeys of this slice
                g = torch.bmm(grad.transpose(1, 2), k)
                g += k * (gk - row) if row is not None else gk / math.sqrt(n_pos)
                out[..., start: start + f.shape[-1]] = g
                if mapping is not None:
                    drop_file_pages(feats, start, start + f.shape[-1], dim=-1, mapping=mapping)
                start += f.shape[-1]
        return out, None


def _chunks(feats: torch.Tensor):
    step = max(1, -(-feats.shape[-1] // CONTEXT_CHUNKS))
    return feats.split(step, dim=2)


def _keys(f: torch.Tensor, norm: str, n_pos: int, top, total) -> torch.Tensor:
    if norm == "softmax":
        return torch.exp(f - top) / total
    return f / math.sqrt(n_pos)


def efficient_attention(
    queries: torch.Tensor, feats: torch.Tensor, norm: AttentionNorm = "softmax", return_keys: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Efficient attention of ``queries`` (n, d, m) over ``feats`` (n, d, N) (keys = values).

    Returns (attended (n, d, m), normalised queries (n, d, m), normalised keys (n, d, N), or None
    without ``return_keys``, context (n, d, d)). The keys are never kept for backward.
    """
    if norm not in ("softmax", "scaling"):
        raise ValueError(f"unknown attention norm {norm!r}")
    q = normalise(queries, 1, norm, feats.shape[-1])  # over channels
    context, keys = key_context(feats, norm, return_keys)
    return torch.bmm(context.transpose(1, 2), q), q, keys, context


def key_context(feats: torch.Tensor, norm: AttentionNorm, return_keys: bool = False):
    """(context rho_k(F) F^T (n, d, d), and the detached keys rho_k(F) (n, d, N) or None) of
    features (n, d, N); the keys are never kept for backward."""
    context = _KeyContext.apply(feats, norm)
    keys = None
    if return_keys:
        with torch.no_grad():
            keys = normalise(feats, 2, norm, feats.shape[-1])
    return context, keys


class ECR(nn.Module):
    """Hard-region selection by auxiliary margin, efficient attention, scatter back.

    ``dim`` is the feature width; ``form`` is ``'projected'`` (learned query and output
    projections, a residual scale starting at 0; see the module docstring) or ``'paper'``
    (Algorithm 1 as written, no parameters).
    """

    def __init__(self, dim: int, ratio: float = 0.1, norm: AttentionNorm = "softmax", form: ECRForm = "projected"):
        super().__init__()
        num_hard(1, ratio)  # validates
        if norm not in ("softmax", "scaling"):
            raise ValueError(f"unknown attention norm {norm!r}")
        if form not in ("projected", "paper"):
            raise ValueError(f"unknown ECR form {form!r}; choose 'projected' or 'paper'")
        self.dim, self.ratio, self.norm, self.form = dim, ratio, norm, form
        if form == "projected":
            self.query = nn.Parameter(torch.eye(dim))
            self.out = nn.Parameter(torch.eye(dim))
            self.out_bias = nn.Parameter(torch.zeros(dim, 1))
            self.gamma = nn.Parameter(torch.zeros(dim, 1))

    def queries(self, hard: torch.Tensor, n_pos: int) -> torch.Tensor:
        """(..., d, m) hard features -> their normalised queries rho_q(W_q F_R) over ``n_pos`` positions."""
        q = self.query @ hard if self.form == "projected" else hard
        return normalise(q, -2, self.norm, n_pos)

    def refine(self, hard: torch.Tensor, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """New hard features from their queries and the context rho_k(F) F^T: (..., d, m)."""
        attended = context.transpose(-1, -2) @ queries
        if self.form == "paper":
            return hard + attended
        return hard + self.gamma * (self.out @ attended + self.out_bias)

    def forward(
        self, feats: torch.Tensor, aux_logits: torch.Tensor, return_evidence: bool = False
    ) -> tuple[torch.Tensor, Evidence | None]:
        n, d, h, w = feats.shape
        with torch.no_grad():  # the selection is discrete: no gradient flows through it
            if aux_logits.shape[-2:] != (h, w):
                aux_logits = F.interpolate(aux_logits, size=(h, w), mode="bilinear", align_corners=False)
            margin = logit_margin(aux_logits.detach())
            idx = select_hard(margin.flatten(1), self.ratio)  # (n, k)
        flat = feats.flatten(2)  # (n, d, N)
        gather_idx = idx.unsqueeze(1).expand(n, d, idx.shape[1])
        hard = flat.gather(2, gather_idx)
        q = self.queries(hard, h * w)
        context, keys = key_context(flat, self.norm, return_evidence)
        out = flat.scatter(2, gather_idx, self.refine(hard, context, q).to(flat.dtype)).view(n, d, h, w)
        evidence = None
        if return_evidence:
            evidence = Evidence(
                margin=margin,
                hard_indices=idx,
                keys=keys.detach().view(n, d, h, w),
                queries=q.detach(),
                context=context.detach(),
                feature_size=(h, w),
            )
        return out, evidence

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ratio={self.ratio}, norm={self.norm!r}, form={self.form!r}"
