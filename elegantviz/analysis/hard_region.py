"""The ECR hard region seen from outside the model: the cut as ``a`` moves, and what it catches.

ECR keeps the ``a`` share of feature pixels with the smallest auxiliary margin (top-1 minus
top-2 logit). These helpers use ECR's own selection (``elegantviz.models.ecr``), so a slider
in a notebook shows exactly what the model would pick, and add what the model never needs:
how many of the wrong pixels the cut catches, and the explicit m x N attention that efficient
attention avoids (for comparing numbers and memory on a small map).
"""

from __future__ import annotations

import numpy as np


def hard_cut(margin: np.ndarray, ratio: float) -> tuple[np.ndarray, float]:
    """(mask, cut): ECR's selection of the ``ratio`` lowest-margin pixels of a (h, w) map.

    ``cut`` is the largest margin inside the hard region: the place of the cut on a histogram.
    """
    import torch

    from elegantviz.models.ecr import select_hard

    flat = torch.from_numpy(np.ascontiguousarray(margin, dtype=np.float32).ravel())[None]
    idx = select_hard(flat, ratio)[0].numpy()
    mask = np.zeros(flat.shape[1], bool)
    mask[idx] = True
    return mask.reshape(np.shape(margin)), float(flat[0, idx].max())


def errors_caught(margin: np.ndarray, wrong: np.ndarray, ratios: np.ndarray) -> dict[str, np.ndarray]:
    """For each ``a`` in ``ratios``: the share of wrong pixels inside the hard region (recall)
    and the share of the hard region that is wrong (precision).

    One sort serves every ratio; pixels of equal margin are taken in index order (ECR's top-k
    may break such ties otherwise, which only matters for exactly equal margins).
    """
    from elegantviz.models.ecr import num_hard

    m = np.asarray(margin, np.float64).ravel()
    w = np.asarray(wrong, bool).ravel()
    if m.shape != w.shape:
        raise ValueError(f"margin has {m.size} pixels, wrong has {w.size}")
    caught = np.concatenate([[0], np.cumsum(w[np.argsort(m, kind="stable")])])
    ks = np.array([num_hard(m.size, float(r)) for r in ratios])
    total = max(int(w.sum()), 1)
    return {"ratio": np.asarray(ratios, np.float64), "recall": caught[ks] / total, "precision": caught[ks] / ks}


def explicit_attention(queries, feats, norm: str = "softmax"):
    """The m x N attention ECR never builds: (attended (n, d, m), attention map (n, m, N)).

    Same normalisation as efficient attention (keys over positions, queries over channels), so
    ``attended`` equals ``efficient_attention(queries, feats)[0]`` up to rounding, while the
    map alone takes m * N numbers.
    """
    import torch

    from elegantviz.models.ecr import normalise

    n_pos = feats.shape[-1]
    keys = normalise(feats, 2, norm, n_pos)
    q = normalise(queries, 1, norm, n_pos)
    attention = torch.bmm(q.transpose(1, 2), keys)  # (n, m, N)
    return torch.bmm(feats, attention.transpose(1, 2)), attention


def attention_bytes(num_pixels: int, num_hard: int, dim: int, itemsize: int = 4) -> dict[str, int]:
    """Bytes of what each form of ECR attention holds beyond the features themselves.

    Both hold the normalised keys (d x N) and queries (d x m); explicit adds the m x N map,
    efficient only the d x d context.
    """
    shared = dim * num_pixels + dim * num_hard
    return {"explicit": (shared + num_hard * num_pixels) * itemsize, "efficient": (shared + dim * dim) * itemsize}
