"""Activation checkpointing of timm's HRNet (stem, layer1 blocks, HRNet modules) and ElegantSeg's heads.

Recomputing a segment in backward instead of storing what it saves cuts HRNet-W18's saved
activations by about 15x (issue 4). timm refuses ``set_grad_checkpointing`` for HRNet, so the
segments are wrapped here, by giving each module an instance-level ``forward`` (parameters,
``state_dict`` and hooks are untouched; :meth:`CheckpointHandle.remove` restores the class one).

Three traps, each handled and tested:

- an HRNet module's forward overwrites its input list in place (``x[i] = branch(x[i])``); the
  recompute would then start from the branch outputs and the gradients would be silently wrong.
  Lists are passed to the checkpoint as separate tensors and rebuilt fresh on every call;
- BatchNorm in training mode updates its running statistics again on recompute; the recompute
  runs under a context that puts them back, so they equal the plain run's bit for bit;
- ``use_reentrant=False`` always (the reentrant variant ignores inputs without grad, breaks
  saved-tensor hooks and recomputes whole segments).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..models.elegantseg import ElegantSeg
from ..models.hrnet import HRNetUnit, feature_indices, find_hrnets, hrnet_units, run_hrnet, run_units

__all__ = ["checkpoint_module", "uncheckpoint_module", "checkpoint_hrnet", "checkpointed", "CheckpointHandle"]

_MARK = "_elegantviz_checkpoint"


class _RestoreBatchNormStats:
    """Recompute context: snapshot BatchNorm running statistics on entry, put them back on exit.

    Restoring through ``.data`` leaves the buffers' version counters alone (nothing in the graph
    sees the restore), and works when the recompute stops early.
    """

    def __init__(self, norms: list[_BatchNorm]):
        self.norms = norms
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [
            (buf, buf.detach().clone())
            for m in self.norms
            if m.training and m.track_running_stats
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buf is not None
        ]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for buf, value in self.saved:
                buf.data.copy_(value)
        self.saved = []


def _norms(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    return [m for mod in modules for m in mod.modules() if isinstance(m, _BatchNorm)]


def _context_fn(norms: list[_BatchNorm]) -> Callable[[], tuple[Any, Any]]:
    return lambda: (nullcontext(), _RestoreBatchNormStats(norms))


def _flatten(args: tuple) -> tuple[list[Any], Callable[[tuple], tuple]]:
    """Lists/tuples of tensors become separate arguments; ``rebuild`` makes fresh lists each call."""
    flat: list[Any] = []
    spec: list[tuple[str, int]] = []
    for a in args:
        if isinstance(a, (list, tuple)) and all(isinstance(x, torch.Tensor) for x in a):
            spec.append(("list" if isinstance(a, list) else "tuple", len(a)))
            flat.extend(a)
        else:
            spec.append(("one", 1))
            flat.append(a)

    def rebuild(values: tuple) -> tuple:
        out, i = [], 0
        for kind, n in spec:
            if kind == "one":
                out.append(values[i])
            else:
                part = list(values[i:i + n])
                out.append(part if kind == "list" else tuple(part))
            i += n
        return tuple(out)

    return flat, rebuild


def _run_checkpointed(fn: Callable, args: tuple, kwargs: dict, norms: list[_BatchNorm] | None,
                      copy_inputs: bool) -> Any:
    context_fn = _context_fn(norms) if norms is not None else _context_fn([])
    if copy_inputs:
        flat, rebuild = _flatten(args)
        return checkpoint(lambda *v: fn(*rebuild(v), **kwargs), *flat, use_reentrant=False, context_fn=context_fn)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn, **kwargs)


def checkpoint_module(module: nn.Module, *, copy_inputs: bool = True, freeze_bn: bool = True) -> nn.Module:
    """Run ``module``'s forward under non-reentrant checkpointing while grad is enabled.

    ``copy_inputs=False`` and ``freeze_bn=False`` exist to demonstrate the traps; leave them on.
    Returns the module (patched in place; idempotent).
    """
    if _MARK in module.__dict__:
        return module
    had_instance_forward = "forward" in module.__dict__
    inner = module.forward
    norms = _norms([module]) if freeze_bn else None

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return _run_checkpointed(inner, args, kwargs, norms, copy_inputs)

    module.forward = forward  # type: ignore[method-assign]
    setattr(module, _MARK, (had_instance_forward, inner))
    return module


def uncheckpoint_module(module: nn.Module) -> None:
    """Undo :func:`checkpoint_module` (and the stem's checkpoint)."""
    mark = module.__dict__.pop(_MARK, None)
    if mark is None:
        return
    had_instance_forward, inner = mark
    if had_instance_forward:
        module.forward = inner  # type: ignore[method-assign]
    else:
        del module.forward


def _stem_groups(units: list[HRNetUnit], wanted: set[int]) -> list[tuple[HRNetUnit, ...]]:
    """The stem units as one segment, split after a unit whose output is itself a feature."""
    groups: list[list[HRNetUnit]] = [[]]
    for u in units:
        if u.kind != "stem":
            break
        groups[-1].append(u)
        if u.feature in wanted:
            groups.append([])
    return [tuple(g) for g in groups if g]


def _checkpoint_stem(body: nn.Module, freeze_bn: bool) -> bool:
    """Checkpoint the stem of a features-only timm HRNet as one segment (False otherwise).

    The stem is five separate modules called from the network's own forward, so that forward is
    replaced by :func:`run_hrnet` with the stem's units run under the checkpoint.
    """
    wanted = feature_indices(body)
    if _MARK in body.__dict__ or wanted is None:
        return False
    had_instance_forward = "forward" in body.__dict__
    inner = body.forward
    units = hrnet_units(body)
    stem = _stem_groups(units, wanted)
    groups = stem + [(u,) for u in units if u.kind != "stem"]
    norms = {g: _norms([m for u in g for m in u.modules]) if freeze_bn else None for g in stem}

    def run(group: tuple[HRNetUnit, ...], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if group not in norms:
            return run_units(group, xs)
        return [_run_checkpointed(lambda t: run_units(group, [t])[0], (xs[0],), {}, norms[group], True)]

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.is_grad_enabled():
            return inner(x)
        return run_hrnet(body, x, groups, run)

    body.forward = forward  # type: ignore[method-assign]
    setattr(body, _MARK, (had_instance_forward, inner))
    return True


@dataclass
class CheckpointHandle:
    """What :func:`checkpoint_hrnet` wrapped; ``remove()`` restores the plain model."""

    modules: list[nn.Module] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def remove(self) -> None:
        for m in self.modules:
            uncheckpoint_module(m)
        self.modules.clear()
        self.names.clear()

    def __len__(self) -> int:
        return len(self.modules)


def checkpoint_hrnet(model: nn.Module, *, stem: bool = True, layer1: bool = True, modules: bool = True,
                     head: bool = False, extra: Iterable[nn.Module] = (), copy_inputs: bool = True,
                     freeze_bn: bool = True, blocks: bool = False) -> CheckpointHandle:
    """Checkpoint the segments of every timm HRNet in ``model`` (and, with ``head``, the segments
    of every ElegantSeg: its auxiliary head, context module and main head).

    Segments: the stem (two stride-2 convolutions), each block of ``layer1``, each
    ``HighResolutionModule`` of stages 2-4; transitions stay stored (they are small and sit at
    segment boundaries). With ``blocks``, each block of each module's branches is also a segment,
    nested in its module's: backward recomputes the module keeping only its blocks' inputs and
    fuse layers, then each block in turn. At 6800x7200 a module's plain recompute holds 6-9 GB,
    while storing every block's input instead (spilled) would take about 19 GB of disk.
    ``extra`` adds any other modules. Raises if nothing was found.
    """
    handle = CheckpointHandle()
    names = {id(m): n for n, m in model.named_modules()}

    def add(m: nn.Module) -> None:
        if _MARK not in m.__dict__:
            checkpoint_module(m, copy_inputs=copy_inputs, freeze_bn=freeze_bn)
            handle.modules.append(m)
            handle.names.append(names.get(id(m), type(m).__name__))

    for body in find_hrnets(model):
        if stem and _checkpoint_stem(body, freeze_bn):
            handle.modules.append(body)
            handle.names.append(names.get(id(body), "hrnet") + ".<stem>")
        for unit in hrnet_units(body):
            if unit.kind == "block" and layer1:
                add(unit.modules[0])
            elif unit.kind == "module" and modules:
                add(unit.modules[0])
                for block in unit.branch_blocks() if blocks else ():
                    add(block)
    if head:  # each saves several maps of input size / 16 x 256+ channels and is cheap to recompute
        for seg_model in (m for m in model.modules() if isinstance(m, ElegantSeg)):
            for segment in seg_model.segments():
                add(segment.module)
    for m in extra:
        add(m)
    if not handle.modules:
        raise ValueError(f"nothing to checkpoint in {type(model).__name__}: no timm HRNet (or ElegantSeg) found")
    return handle


@contextmanager
def checkpointed(model: nn.Module, **kwargs: Any) -> Iterator[CheckpointHandle]:
    """``with checkpointed(model): forward; backward`` - checkpoint_hrnet, removed on exit."""
    handle = checkpoint_hrnet(model, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()
