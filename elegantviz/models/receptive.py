"""Receptive fields: how deep an edge of a window corrupts a module's output.

A tile's (or band's) outer edge acts like a zero-padded border and corrupts a band next to it
that grows layer by layer. :func:`reach` maps a corrupted depth on a map whose cells are ``cell``
pixels to the depth after a module, and the output cell. A halo at least that deep on every
inner edge leaves the window's core exact; halo-tiled inference and banded training both take
their halos from here, so the two can never disagree about a model.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple, Sequence, Union

import torch.nn as nn

from .hrnet import HRNetUnit

__all__ = ["Reach", "reach", "round_up"]

Part = Union[nn.Module, HRNetUnit, Sequence[Union[nn.Module, HRNetUnit]]]


class Reach(NamedTuple):
    """Corrupted depth and cell size after a part, both in pixels of the input grid."""

    depth: int
    cell: int


def round_up(x: int, m: int) -> int:
    """``x`` rounded up to a multiple of ``m``."""
    return -(-x // m) * m


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@cache
def _hr_module_type() -> type:
    from timm.models.hrnet import HighResolutionModule  # lazily: importing the models stays light

    return HighResolutionModule


def _window(m: nn.Module, e: int, s: int) -> Reach:
    """Conv / pooling: widest one-sided kernel extent, rounded up to whole output cells."""
    k, st, d = _pair(m.kernel_size), _pair(m.stride), _pair(getattr(m, "dilation", 1))
    pad = m.padding
    if isinstance(pad, str):
        pad = tuple(0 if pad == "valid" else (k[i] - 1) * d[i] // 2 for i in range(2))
    pad = _pair(pad)
    if st[0] != st[1]:
        raise ValueError(f"anisotropic stride {st} in {m}")
    ext = max(max(pad[i], (k[i] - 1) * d[i] - pad[i]) for i in range(2)) * s
    s_out = s * st[0]
    return Reach(round_up(e + ext, s_out), s_out)


def _hr_module(m: nn.Module, e: int, strides: Sequence[int]) -> int:
    """Deepest corruption over the module's branches and every fuse path into every output."""
    ends = [reach(b, e, s) for b, s in zip(m.branches, strides)]
    if m.num_branches == 1:
        return ends[0].depth
    return max(reach(f, *ends[j]).depth for fuse in m.fuse_layers for j, f in enumerate(fuse))


def _unit(u: HRNetUnit, e: int) -> Reach:
    """A unit on its own strides; a multi-branch output reports its coarsest cell."""
    if u.kind in ("stem", "block"):
        return reach(list(u.modules), e, u.in_strides[0])
    if u.kind == "transition":
        depth = max(e if isinstance(t, nn.Identity) else reach(t, e, u.in_strides[-1]).depth for t in u.modules)
    else:
        depth = _hr_module(u.modules[0], e, u.in_strides)
    return Reach(depth, max(u.out_strides))


def reach(part: Part, depth: int = 0, cell: int = 1) -> Reach:
    """Corrupted depth after ``part`` given ``depth`` on its input of ``cell`` px cells.

    ``part`` is a module, an :class:`HRNetUnit` (which brings its own strides: ``cell`` is then
    ignored) or a sequence of them run in order. Containers run their children in order,
    ModuleLists are parallel branches of one input, residual blocks take the deeper path, and an
    HRNet module runs branch ``j`` at ``cell * 2**j``. ``reach(m).depth`` is a stride-1 module's
    radius in cells.
    """
    if isinstance(part, HRNetUnit):
        return _unit(part, depth)
    if isinstance(part, (list, tuple)):
        out = Reach(depth, cell)
        for p in part:
            out = reach(p, *out)
        return out
    m = part
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return _window(m, depth, cell)
    if isinstance(m, nn.Upsample):
        f = int(m.scale_factor)
        if cell % f:
            raise ValueError(f"upsampling by {f} below one input pixel")
        return Reach(depth if m.mode == "nearest" else depth + cell, cell // f)
    if isinstance(m, _hr_module_type()):
        return Reach(_hr_module(m, depth, [cell * 2**j for j in range(m.num_branches)]), cell)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        raise ValueError(f"{type(m).__name__} has no local receptive field")
    if isinstance(m, nn.ModuleList):
        outs = [reach(c, depth, cell) for c in m]
        if len({o.cell for o in outs}) > 1:
            raise ValueError("parallel branches with different strides")
        return Reach(max(o.depth for o in outs), outs[0].cell)
    shortcut = getattr(m, "downsample", None)
    out = Reach(depth, cell)
    for child in m.children():
        if child is not shortcut:
            out = reach(child, *out)
    if isinstance(shortcut, nn.Module):
        out = Reach(max(out.depth, reach(shortcut, depth, cell).depth), out.cell)
    return out
