"""Whole-image inference: one forward pass of the entire scene, evidence included.

This is the holistic regime's own prediction. It holds every activation of the scene at once,
so it is for scenes that fit; :mod:`elegantviz.inference.tiles` gives the same result with a
bounded peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from elegantviz.inference.prediction import Prediction


class FeatureTap:
    """Catches the features entering ECR, to derive every pixel's query (not just the hard ones)."""

    def __init__(self, module: torch.nn.Module):
        self.feats = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.feats = args[0].detach()

    def close(self):
        self.handle.remove()


@torch.no_grad()
def predict_whole(model, image: np.ndarray, device: torch.device) -> Prediction:
    """One forward pass of the whole (c, H, W) normalised image."""
    x = torch.from_numpy(image)[None].to(device)
    ecr = getattr(model, "ecr", None)
    tap = FeatureTap(ecr) if ecr is not None else None
    try:
        out = model(x, return_evidence=True)
    finally:
        if tap:
            tap.close()
    ev = out.evidence
    if ev is None:  # a model without evidence (ISDNet): the labels alone
        return Prediction(labels=out.logits.argmax(1)[0].to(torch.uint8).cpu().numpy())
    pred = Prediction(labels=out.logits.argmax(1)[0].to(torch.uint8).cpu().numpy(), stride=ev.output_stride,
                      margin=ev.margin[0].float().cpu().numpy(), hard=ev.hard_mask()[0].to(torch.uint8).cpu().numpy())
    if ev.keys is not None and tap is not None:
        h, w = ev.feature_size
        n = h * w
        queries = ecr.queries(tap.feats[0].flatten(1), n)
        # relative to uniform (x N): 1.0 means "average pixel" (stored as float32: STORED_DTYPES)
        keys = ev.keys[0].flatten(1) * n
        pred.keys = keys.view(-1, h, w).float().cpu().numpy()
        pred.queries = queries.view(-1, h, w).to(torch.float16).cpu().numpy()
        pred.attention = (ev.attention_map(0) * n).float().cpu().numpy()
    return pred


@dataclass(frozen=True)
class WholeImage:
    """Strategy: the whole scene in one pass."""

    name: str = "holistic"

    def job(self) -> dict:
        return {"mode": "holistic", "tile": None}

    def __call__(self, model, image: np.ndarray, device: torch.device, progress: bool = False,
                 scratch=None) -> Prediction:
        return predict_whole(model, image, device)
