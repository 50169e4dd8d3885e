"""What every inference strategy returns: one typed result, whatever ran the network."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

# How the evidence is stored. Keys are relative to uniform (x N, 1 = the average pixel), so a
# channel whose softmax peaks on one pixel reaches N: past float16's 65,504 from N = 65,536 (a
# 2048 px scene at stride 8) on, where float16 kept only inf and zeros. Queries are a softmax over
# channels (<= 1) and fit float16.
STORED_DTYPES = {"keys": np.float32, "queries": np.float16, "attention": np.float32}


@dataclass
class Prediction:
    """Class ids at image resolution and the model's evidence at feature resolution.

    Evidence is what a holistic pass can show about itself (the auxiliary margin, the hard
    region ECR selected, its keys, queries and attention); a sliced pass has none. ``keys`` and
    ``queries`` (d x h x w, float32 and float16) may be zarr arrays on disk: at scene size they are gigabytes.
    """

    labels: np.ndarray  # (H, W) uint8 class ids
    stride: int = 1  # image pixels per feature pixel of the evidence
    margin: np.ndarray | None = None  # (h, w) top-1 minus top-2 auxiliary logit
    hard: np.ndarray | None = None  # (h, w) uint8, 1 where ECR selected the pixel
    keys: Any = None  # (d, h, w), relative to uniform (x N)
    queries: Any = None  # (d, h, w)
    attention: np.ndarray | None = None  # (h, w) the hard region's mean attention, relative to uniform
    windows: int | None = None  # sliced: how many windows ran
    views: dict[str, np.ndarray] = field(default_factory=dict)  # other outputs as (H, W) class ids (GLNet's global)

    ARRAYS = ("labels", "margin", "hard", "keys", "queries", "attention")

    @property
    def has_evidence(self) -> bool:
        return self.margin is not None

    @property
    def has_attention(self) -> bool:
        return self.keys is not None

    def arrays(self) -> dict[str, Any]:
        """The arrays that are present, by name (for caching)."""
        return {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None}

    def scalars(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*self.ARRAYS, "views")}
