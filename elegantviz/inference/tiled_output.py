"""What halo-tiled inference returns, and how its maps are written core by core (or streamed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from elegantviz.models.ecr import Evidence
from elegantviz.models.elegantseg import SegOutput

__all__ = ["TiledOutput", "write_core", "read_whole"]


def write_core(sink: Any, sl: tuple, t: torch.Tensor) -> None:
    """A core into a whole map: a tensor, or a sink assigned numpy (e.g. a zarr array)."""
    t = t.cpu()
    sink[sl] = t if isinstance(sink, torch.Tensor) else t.numpy()


def read_whole(a: Any) -> torch.Tensor:
    """A map as a tensor: itself, or all of a sink read back."""
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a[...]))


@dataclass
class TiledOutput:
    """What holistic prediction needs, without a batch dimension.

    ``keys`` and ``attention`` are relative to uniform (times N = h * w, so 1 is the average
    pixel); ``queries`` (every pixel's normalised query) are in ``maps_dtype`` and ``keys`` in at
    least float32 (they reach N), or both are the sinks they were streamed to (``maps_to``).
    ``logits`` / ``aux_logits`` (1, c, H, W) only with ``return_logits=True`` (whole-scene
    float32 at input size: the largest tensors of a plain run).
    Without ECR the hard region is empty and the ECR fields are None.
    """

    pred: torch.Tensor  # (H, W) argmax of the main logits (uint8 for <= 256 classes)
    margin: torch.Tensor  # (h, w) float32 top-1 minus top-2 auxiliary logit
    hard_indices: torch.Tensor  # (k,) int64 into h * w, in select_hard's order
    keys: torch.Tensor | Any | None  # (d, h, w) rho_k(F) * N, or its sink
    queries: torch.Tensor | Any | None  # (d, h, w) rho_q(F) of every pixel, or its sink
    context: torch.Tensor | None  # (d, d) float32 rho_k(F) F^T
    attention: torch.Tensor | None  # (h, w) float32 mean hard query . keys (relative to uniform)
    feature_size: tuple[int, int]
    output_stride: int
    logits: torch.Tensor | None = None
    aux_logits: torch.Tensor | None = None

    def hard_mask(self) -> torch.Tensor:
        """(h, w) bool map of the hard region."""
        mask = torch.zeros(self.feature_size[0] * self.feature_size[1], dtype=torch.bool)
        mask[self.hard_indices] = True
        return mask.view(self.feature_size)

    def evidence(self) -> Evidence:
        """The model's Evidence (batch of one, float32 keys as rho_k(F), hard queries only); reads
        streamed maps back whole."""
        n = self.feature_size[0] * self.feature_size[1]
        keys = queries = context = None
        if self.keys is not None:
            keys = (read_whole(self.keys).float() / n)[None]
            queries = read_whole(self.queries).float().flatten(1)[:, self.hard_indices][None]
            context = self.context[None]
        return Evidence(self.margin[None], self.hard_indices[None], keys, queries, context, self.feature_size,
                        self.output_stride)

    def seg_output(self) -> SegOutput:
        """As ``model(image, return_evidence=True)``; needs ``return_logits=True``."""
        if self.logits is None:
            raise ValueError("run forward_halo_tiles(..., return_logits=True) for logits")
        return SegOutput(self.logits, self.aux_logits, self.evidence())
