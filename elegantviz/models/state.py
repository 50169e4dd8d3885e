"""What keeps a state_dict from loading into a module: shared by checkpoint loading and by the
models that start from another run's weights, so both name the same faults."""

from __future__ import annotations

import torch

__all__ = ["state_mismatch"]


def state_mismatch(own: dict, state: dict, optional: tuple[str, ...] = ()
                   ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]], list[str]]:
    """(missing, unexpected, misshaped, not tensors) of ``state`` against ``own`` (a module's
    state_dict). Keys starting with an ``optional`` prefix may be missing; misshaped entries are
    (key, the state's shape, the module's shape)."""
    missing = [k for k in own if k not in state and not k.startswith(optional)]
    extra = [k for k in state if k not in own]
    shaped = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape]
    junk = [k for k in own if k in state and not isinstance(state[k], torch.Tensor)]
    return missing, extra, shaped, junk
