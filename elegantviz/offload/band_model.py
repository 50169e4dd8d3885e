"""Run ElegantSeg's full-resolution segments band by band (:mod:`.banded`) during training.

At 6800x7200 the segments that make 3 GB maps (256-270 channels at stride 4, or 64 at stride 2)
are HRNet's stem, its layer1 bottlenecks, the auxiliary head with the context module, and the
main head. :func:`band_model` runs each of them through :func:`.banded.banded`, so that in forward
and in backward only a segment's input, output and gradients are whole:

- the stem (two stride-2 convolutions; halo 4 input rows);
- each layer1 block but the last (halo 1), and the last one together with ``transition1``, so that
  layer1's 256-channel output never exists whole (halo 2);
- the auxiliary head, the context module (MLK/LRD) and the main head (:meth:`ElegantSeg.segments`).

The units come from :func:`elegantviz.models.hrnet.hrnet_units` and the halos from
:func:`elegantviz.models.receptive.reach`, as for tiled inference. HRNet's stage modules are left to the checkpoint policy. Like :mod:`.checkpoint`, patches are
instance-level ``forward`` attributes, undone by :meth:`BandHandle.remove`; under no-grad the
model runs as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..models.elegantseg import ElegantSeg
from ..models.hrnet import HRNetUnit, feature_indices, find_hrnets, hrnet_units, run_hrnet, run_units
from ..models.receptive import reach, round_up
from .banded import banded

__all__ = ["band_model", "BandHandle"]


@dataclass
class BandHandle:
    """Modules whose ``forward`` :func:`band_model` replaced; ``remove()`` restores them."""

    patched: list[tuple[Any, str]] = field(default_factory=list)

    def patch(self, owner: Any, name: str, fn: Callable) -> None:
        if name in owner.__dict__:
            raise RuntimeError(f"band_model: {type(owner).__name__}.{name} is already patched")
        setattr(owner, name, fn)
        self.patched.append((owner, name))

    def remove(self) -> None:
        for owner, name in reversed(self.patched):
            owner.__dict__.pop(name, None)
        self.patched.clear()

    def __len__(self) -> int:
        return len(self.patched)


def _band_groups(units: list[HRNetUnit]) -> tuple[list[tuple[HRNetUnit, ...]], list[tuple[HRNetUnit, ...]]]:
    """Banded: the stem; each layer1 block but the last; the last with ``transition1``. Plain: the rest."""
    k = next(i for i, u in enumerate(units) if u.kind == "transition")
    stem = tuple(u for u in units[:k] if u.kind == "stem")
    blocks = [(u,) for u in units[len(stem):k - 1]]
    return [stem, *blocks, (units[k - 1], units[k])], [(u,) for u in units[k + 1:]]


def _geometry(group: tuple[HRNetUnit, ...]) -> tuple[tuple[int, ...], int]:
    """Output strides and halo of a group in rows of its input (the halo a multiple of the coarsest)."""
    s_in = group[0].in_strides[0]
    strides = tuple(s // s_in for s in group[-1].out_strides)
    return strides, round_up(-(-reach(group).depth // s_in), max(strides))


def _hrnet_forward(body: nn.Module, inner: Callable, band_bytes: int) -> Callable:
    banded_groups, plain_groups = _band_groups(hrnet_units(body))
    geometry = {g: _geometry(g) for g in banded_groups}

    def run(group: tuple[HRNetUnit, ...], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if group not in geometry:
            return run_units(group, xs)
        strides, halo = geometry[group]
        modules = [m for u in group for m in u.modules]
        out = banded(lambda t: tuple(run_units(group, [t])), xs[0], modules, strides, halo, band_bytes=band_bytes)
        return list(out) if len(strides) > 1 else [out]

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.is_grad_enabled():
            return inner(x)
        return run_hrnet(body, x, banded_groups + plain_groups, run)

    return forward


def _banded_forward(module: nn.Module, band_bytes: int) -> Callable:
    plain, halo = module.forward, reach(module).depth

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return plain(x)
        return banded(plain, x, [module], (1,), halo, band_bytes=band_bytes)

    return forward


def band_model(model: nn.Module, band_bytes: int = 64 << 20) -> BandHandle:
    """Band the full-resolution segments of every timm HRNet in ``model`` and, for an ElegantSeg,
    its heads and context module. Raises if there is nothing to band."""
    handle = BandHandle()
    for body in find_hrnets(model):
        wanted = feature_indices(body)
        if wanted is None or 0 in wanted or not isinstance(body.layer1, nn.Sequential):
            continue  # a classifier, or the stem's output is itself a feature: leave this network alone
        handle.patch(body, "forward", _hrnet_forward(body, body.forward, band_bytes))
    for seg_model in (m for m in model.modules() if isinstance(m, ElegantSeg)):
        for segment in seg_model.segments():
            if "forward" not in segment.module.__dict__:
                handle.patch(segment.module, "forward", _banded_forward(segment.module, band_bytes))
    if not handle:
        raise ValueError(f"nothing to band in {type(model).__name__}: no timm HRNet or ElegantSeg heads found")
    return handle
