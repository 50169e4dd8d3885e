"""Precise BN: BatchNorm statistics recomputed as the exact average over whole scenes.

A holistic step normalises with the statistics of one whole scene, and the running averages of
a few hundred such steps land far from any scene's; training recomputes them before validating
and before writing ``best.pt`` (see :mod:`elegantviz.engine.train`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, images: list[torch.Tensor], autocast=nullcontext) -> None:
    """Precise BN: every BatchNorm's running mean and variance become the plain average of its
    batch statistics over ``images`` (forwards in train mode with momentum=None, a cumulative
    average); dropout is off and nothing else changes. The model is left in eval mode. A frozen
    BatchNorm (its parameters need no gradient: GLNet's and FCtL's frozen partner branches) keeps
    the statistics of the stage that trained it."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and all(p.requires_grad for p in m.parameters(recurse=False))]
    if not norms or not images:
        return
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for x in images:
            with autocast():
                model(x, upsample=False)
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.eval()
