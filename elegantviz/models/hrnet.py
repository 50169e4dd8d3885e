"""timm's HRNet as a list of units: what its forward runs, in order, and at which strides.

timm describes HRNet's features (``feature_info``) and parameter groups (``group_matcher``) but
not the steps of its forward. Checkpointing, banding and tiling all run those steps one by one,
so they are described once here, by type and position (no module is looked up by name):

- ``stem.0`` (conv1, bn1, act1; stride 2, timm's feature 0) and ``stem.1`` (conv2, bn2, act2;
  stride 4);
- ``layer1.<i>``: the bottlenecks at stride 4;
- ``transition<k>``: the new branch (and any channel change) before stage ``k + 1``;
- ``stage<k>.<i>``: the ``HighResolutionModule`` units, branch ``j`` at stride ``4 * 2**j``.

:func:`run_hrnet` is timm's ``HighResolutionNetFeatures.forward`` over these units, with a hook
that lets a caller run groups of consecutive units its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn

__all__ = ["HRNetUnit", "UnitKind", "find_hrnets", "hrnet_units", "run_units", "run_hrnet", "feature_indices"]

UnitKind = Literal["stem", "block", "transition", "module"]
UnitGroup = Sequence["HRNetUnit"]


@dataclass(frozen=True, eq=False)
class HRNetUnit:
    """One step of an HRNet forward: list of branch maps in, list of branch maps out.

    ``modules`` are run in order (``stem``, ``block``), side by side (``transition``: entry ``i``
    makes branch ``i``; an ``nn.Identity`` passes branch ``i`` through, any other module is applied
    to the last branch, as timm does) or are one ``HighResolutionModule`` (``module``).
    Strides are input pixels per cell of each branch; ``feature`` is the index in timm's
    ``feature_info`` of this unit's output, if it is one of the network's features.
    """

    name: str
    kind: UnitKind
    modules: tuple[nn.Module, ...]
    in_strides: tuple[int, ...]
    out_strides: tuple[int, ...]
    feature: int | None = None

    def __call__(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.kind == "transition":
            return [xs[i] if isinstance(t, nn.Identity) else t(xs[-1]) for i, t in enumerate(self.modules)]
        if self.kind == "module":
            return self.modules[0](list(xs))  # a fresh list: the module overwrites its input list
        x = xs[0]
        for m in self.modules:
            x = m(x)
        return [x]

    def branch_blocks(self) -> list[nn.Module]:
        """The residual blocks of a ``module`` unit's branches (empty for other kinds)."""
        if self.kind != "module":
            return []
        return [block for branch in self.modules[0].branches for block in branch]


def find_hrnets(model: nn.Module) -> list[nn.Module]:
    """timm ``HighResolutionNet`` instances inside ``model`` (found by type, imported lazily)."""
    from timm.models.hrnet import HighResolutionNet

    return [m for m in model.modules() if isinstance(m, HighResolutionNet)]


def feature_indices(body: nn.Module) -> set[int] | None:
    """The ``feature_info`` indices a features-only HRNet returns (None for a classifier)."""
    out_indices = getattr(body.feature_info, "out_indices", None)
    return set(out_indices) if out_indices is not None else None


def _module_outputs(m: nn.Module) -> int:
    return 1 if m.num_branches == 1 else len(m.fuse_layers)


def hrnet_units(body: nn.Module) -> list[HRNetUnit]:
    """The units of a timm HRNet (classifier or features-only) up to its last stage, in order."""
    s1 = body.conv1.stride[0]
    s2 = s1 * body.conv2.stride[0]
    units = [HRNetUnit("stem.0", "stem", (body.conv1, body.bn1, body.act1), (1,), (s1,), feature=0),
             HRNetUnit("stem.1", "stem", (body.conv2, body.bn2, body.act2), (s1,), (s2,))]
    blocks = list(body.layer1) if isinstance(body.layer1, nn.Sequential) else [body.layer1]
    units += [HRNetUnit(f"layer1.{i}", "block", (b,), (s2,), (s2,)) for i, b in enumerate(blocks)]
    strides: tuple[int, ...] = (s2,)
    for k, (transition, stage) in enumerate(((body.transition1, body.stage2), (body.transition2, body.stage3),
                                             (body.transition3, body.stage4)), start=1):
        out = tuple(s2 * 2**j for j in range(len(transition)))
        units.append(HRNetUnit(f"transition{k}", "transition", tuple(transition), strides, out))
        strides = out
        for i, m in enumerate(stage):
            out = strides[:_module_outputs(m)]
            units.append(HRNetUnit(f"stage{k + 1}.{i}", "module", (m,), strides, out))
            strides = out
    return units


def run_units(group: UnitGroup, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive units, one after the other."""
    out = list(xs)
    for unit in group:
        out = unit(out)
    return out


def run_hrnet(body: nn.Module, x: torch.Tensor, groups: Sequence[UnitGroup] | None = None,
              run: Callable[[UnitGroup, list[torch.Tensor]], list[torch.Tensor]] = run_units) -> list[torch.Tensor]:
    """timm's ``HighResolutionNetFeatures.forward`` on ``x``, group of units by group.

    ``groups`` partition :func:`hrnet_units` in order (default: one group per unit); ``run(group,
    xs)`` computes a group (default: plainly), which is how checkpointing, banding and tiling
    change the forward. A group ending in a feature unit gives that feature.
    """
    wanted = feature_indices(body)
    if wanted is None:
        raise ValueError(f"{type(body).__name__} is not a features-only HRNet")
    if groups is None:
        groups = [(u,) for u in hrnet_units(body)]
    out: list[torch.Tensor] = []
    xs = [x]
    for group in groups:
        if any(u.feature in wanted for u in group[:-1]):
            raise ValueError(f"a group must end at a feature unit: {[u.name for u in group]}")
        xs = run(group, xs)
        if group[-1].feature in wanted:
            out.append(xs[0])
    if body.incre_modules is not None:
        xs = [incre(f) for f, incre in zip(xs, body.incre_modules)]
    out.extend(f for i, f in enumerate(xs) if i + 1 in wanted)
    return out
