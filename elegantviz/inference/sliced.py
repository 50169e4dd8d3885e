"""Sliced inference: sliding windows with blended logits, the crop-and-stitch baseline that the
holistic regime is measured against. No evidence: each window sees only itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from elegantviz.errors import InputError
from elegantviz.inference.prediction import Prediction


def blend_ramp(size: int, span: int) -> np.ndarray:
    """``span`` weights of a ``size`` px window's ramp, falling off towards its edges."""
    ramp = np.minimum(np.arange(span) + 1, size - np.arange(span)).astype(np.float32)
    return np.minimum(ramp / max(1, size // 4), 1.0)


def blend_window(size: int, h: int | None = None, w: int | None = None) -> np.ndarray:
    """Weights that fall off towards a window's edges, so overlapping windows blend smoothly;
    ``h`` x ``w`` of them when the scene is smaller than the window (never ``size``² of them: a
    ``--crop`` of 10⁹ px made a 10⁹ x 10⁹ array)."""
    return np.outer(blend_ramp(size, min(size, h or size)), blend_ramp(size, min(size, w or size)))


@torch.no_grad()
def predict_sliced(model, image: np.ndarray, device: torch.device, crop: int = 512, overlap: float = 1 / 3,
                   progress: bool = True) -> Prediction:
    """Windows of ``crop`` px overlapping by ``overlap``; logits blended, then argmax."""
    from tqdm.auto import tqdm

    c, h, w = image.shape
    crop_h, crop_w = min(crop, h), min(crop, w)
    step = max(1, int(round(crop * (1 - overlap))))
    ys = sorted({*range(0, max(1, h - crop_h + 1), step), h - crop_h})
    xs = sorted({*range(0, max(1, w - crop_w + 1), step), w - crop_w})
    acc = None
    weight = np.zeros((h, w), np.float32)
    win = blend_window(crop, crop_h, crop_w)
    for y, x in tqdm([(y, x) for y in ys for x in xs], desc="sliced predict", unit="crop", disable=not progress,
                     leave=False):
        t = torch.from_numpy(np.ascontiguousarray(image[:, y : y + crop_h, x : x + crop_w]))[None].to(device)
        logits = model(t).logits[0].float().cpu().numpy()
        if acc is None:
            acc = np.zeros((logits.shape[0], h, w), np.float32)
        acc[:, y : y + crop_h, x : x + crop_w] += logits * win
        weight[y : y + crop_h, x : x + crop_w] += win
    return Prediction(labels=(acc / weight).argmax(0).astype(np.uint8), windows=len(ys) * len(xs))


@dataclass(frozen=True)
class SlidingWindows:
    """Strategy: windows of ``crop`` px, ``overlap`` of a window shared with the next."""

    crop: int = 512
    overlap: float = 1 / 3
    name: str = "sliced"

    def __post_init__(self):
        if self.crop < 16:
            raise InputError(f"--crop {self.crop}: windows must be at least 16 px")
        if not 0 <= self.overlap < 1:
            raise InputError(f"--overlap: overlap must be in [0, 1), got {self.overlap}")
        if round(self.crop * (1 - self.overlap)) < 1:  # a step under a pixel: the run would never end
            raise InputError(f"--overlap {self.overlap} leaves {self.crop} px windows no whole-pixel step; "
                             f"at most {1 - 1 / self.crop:.4g} for this --crop")

    def job(self) -> dict:
        return {"mode": "sliced", "crop": self.crop, "overlap": self.overlap}

    def __call__(self, model, image: np.ndarray, device: torch.device, progress: bool = False,
                 scratch=None) -> Prediction:
        return predict_sliced(model, image, device, self.crop, self.overlap, progress)
