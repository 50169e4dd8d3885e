"""Patch models' inference (GLNet, FCtL): the model runs its own global pass and patch grid inside
its forward (:mod:`elegantviz.models.patch_grid`), summing the patches' logits over their overlaps.
This strategy gives it a progress bar, the optional 8x D4 test-time augmentation of FCtL's
official test scripts (horizontal flip x 4 rotations of the whole scene, logits summed), and turns
the model's other outputs (GLNet's global-only and local-only maps) into labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from elegantviz.inference.prediction import Prediction

D4 = tuple((k, flip) for flip in (False, True) for k in range(4))  # (quarter turns, flipped first)


def d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x`` flipped left-right (if ``flip``), then turned ``k`` quarter turns."""
    return torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))


def d4_inverse(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo :func:`d4` on a map of the transformed image."""
    y = torch.rot90(y, -k, (-2, -1))
    return y.flip(-1) if flip else y


def tta_logits(model, x: torch.Tensor, progress=None, plain: torch.Tensor | None = None) -> torch.Tensor:
    """The sum of the model's scene logits over the 8 D4 transforms of ``x``, each mapped back
    (``plain``: the untransformed pass's logits, when they are already there)."""
    logits = plain.float() if plain is not None else None
    for k, flip in D4[1:] if plain is not None else D4:
        y = d4_inverse(model(d4(x, k, flip), progress=progress).logits.float(), k, flip)
        logits = y if logits is None else logits + y
    return logits


@torch.no_grad()
def predict_patches(model, image: np.ndarray, device: torch.device, progress: bool = False, tta: bool = False
                    ) -> Prediction:
    """The model's own patch inference on a (c, H, W) normalised image; with ``tta`` the logits of
    the 8 D4 transforms are summed (the views come from the untransformed pass)."""
    from tqdm.auto import tqdm

    x = torch.from_numpy(image)[None].to(device)
    with tqdm(desc="patch predict", unit="patch", disable=not progress, leave=False) as bar:
        out = model(x, return_evidence=True, progress=bar.update)
        views = {k: v[0].to(torch.uint8).cpu().numpy() for k, v in (getattr(out, "views", None) or {}).items()}
        logits = out.logits
        del out  # its views: the other passes need the room
        if tta:
            logits = tta_logits(model, x, bar.update, plain=logits)
    return Prediction(labels=logits.argmax(1)[0].to(torch.uint8).cpu().numpy(), views=views)


@dataclass(frozen=True)
class PatchModelRun:
    """Strategy: a patch-based model's own inference over its patch grid, ``tta`` for 8x D4."""

    tta: bool = False
    name: str = "holistic"

    def job(self) -> dict:
        return {"mode": "holistic", "tile": None, **({"tta": True} if self.tta else {})}

    def __call__(self, model, image: np.ndarray, device: torch.device, progress: bool = False,
                 scratch=None) -> Prediction:
        return predict_patches(model, image, device, progress, self.tta)
