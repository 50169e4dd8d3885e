"""Run ElegantSeg's full-resolution segments band by band (:mod:`.banded`) during training.

At 6800x7200 the segments that make 3 GB maps (256-270 channels at stride 4, or 64 at stride 2)
are HRNet's stem, its layer1 bottlenecks, the auxiliary head with the context module, and the
main head. :func:`band_model` runs each of them through :func:`.banded.banded`, so that in forward
and in backward only a segment's input, output and gradients are whole:

- the stem (two stride-2 convolutions; halo 4 input rows);
- each layer1 block but the last (halo 1), and the last one together with ``transition1``, so that
  layer1's 256-channel output never exists whole (halo 2);
- the auxiliary head, the context module (MLK/LRD) and the main head (a model's ``aux_head``,
  ``context`` and ``head``).

HRNet's stage modules are left to the checkpoint policy. Like :mod:`.checkpoint`, patches are
instance-level ``forward`` attributes, undone by :meth:`BandHandle.remove`; under no-grad the
model runs as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from .banded import banded
from .checkpoint import _stem, find_hrnets

__all__ = ["band_model", "BandHandle", "conv_radius"]


def conv_radius(module: nn.Module, strided: bool = False) -> int:
    """Rows a stride-1 segment reads on each side: its ``radius`` attribute (MLK, LRD), else the
    sum of its convolutions' radii (an upper bound where branches run in parallel). ``strided``
    accepts strided convolutions, in rows of the input (exact for one convolution)."""
    if isinstance(getattr(module, "radius", None), int):
        return module.radius
    radius = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride[0] != 1 and not strided:
                raise ValueError(f"conv_radius: {type(module).__name__} has a strided convolution")
            radius += m.dilation[0] * (m.kernel_size[0] - 1) // 2
    return radius


def _stride(module: nn.Module) -> int:
    s = 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            s *= m.stride[0]
    return s


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


def _hrnet_forward(body: nn.Module, inner: Callable, band_bytes: int) -> Callable:
    blocks = list(body.layer1)
    last = blocks[-1]
    trans = list(body.transition1)
    strides = [_stride(t) for t in trans]
    halos = [conv_radius(b) for b in blocks[:-1]]
    # the last block's reach, then a transition's kernel radius, in whole coarsest-stride rows
    unit = max(strides)
    last_halo = -(-(conv_radius(last) + max(conv_radius(t, strided=True) for t in trans)) // unit) * unit
    stem_modules = [body.conv1, body.bn1, body.act1, body.conv2, body.bn2, body.act2]

    def last_block(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = last(x)
        return tuple(t(y) for t in trans)

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.is_grad_enabled():
            return inner(x)
        x = banded(lambda t: _stem(body, t, False), x, stem_modules, (4,), 4, band_bytes=band_bytes)
        for b, halo in zip(blocks[:-1], halos):
            x = banded(b, x, [b], (1,), halo, band_bytes=band_bytes)
        xl = list(banded(last_block, x, [last, *trans], strides, last_halo, band_bytes=band_bytes))
        del x
        yl = body.stage2(xl)
        xl = [t(yl[-1]) if not isinstance(t, nn.Identity) else yl[i] for i, t in enumerate(body.transition2)]
        yl = body.stage3(xl)
        xl = [t(yl[-1]) if not isinstance(t, nn.Identity) else yl[i] for i, t in enumerate(body.transition3)]
        yl = body.stage4(xl)
        if body.incre_modules is not None:
            yl = [incre(f) for f, incre in zip(yl, body.incre_modules)]
        return [f for i, f in enumerate(yl) if i + 1 in body._out_idx]

    return forward


def _banded_forward(module: nn.Module, band_bytes: int) -> Callable:
    plain, halo = module.forward, conv_radius(module)

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
        if not hasattr(body, "_out_idx") or 0 in body._out_idx or not isinstance(body.layer1, nn.Sequential):
            continue  # a classifier, or the stem's output is itself a feature: leave this network alone
        handle.patch(body, "forward", _hrnet_forward(body, body.forward, band_bytes))
    for name in ("aux_head", "context", "head"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and "forward" not in module.__dict__:
            handle.patch(module, "forward", _banded_forward(module, band_bytes))
    if not handle:
        raise ValueError(f"nothing to band in {type(model).__name__}: no timm HRNet or ElegantSeg heads found")
    return handle
