"""Memory offloading for holistic steps: saved-tensor hooks, checkpointing, a meter, a planner.

Imports torch, so ``import elegantviz`` does not import this package; import it explicitly::

    from elegantviz.offload import MemoryMeter, plan

    meter = MemoryMeter(device)
    choice = plan(model, (4, 6800, 7200), "12GB", device)   # raises MemoryBudgetError if nothing fits
    with meter.step():
        with choice.policy.apply(model, meter):
            loss = criterion(model(x), y)
            loss.backward()
    log(meter.as_dict())
"""

from .checkpoint import CheckpointHandle, checkpoint_hrnet, checkpoint_module, checkpointed, uncheckpoint_module
from .hooks import DEFAULT_THRESHOLD, DiskOffload, HostOffload, PinnedPool, default_spill_root
from .meter import MemoryMeter, StepStats
from .planner import (POLICY_NAMES, LiveTensorBytes, MemoryBudgetError, Plan, Policy, default_budget, format_size,
                      mmap_large_allocations, parse_size, plan)

__all__ = [
    "HostOffload", "DiskOffload", "PinnedPool", "DEFAULT_THRESHOLD", "default_spill_root",
    "checkpoint_hrnet", "checkpoint_module", "uncheckpoint_module", "checkpointed", "CheckpointHandle",
    "MemoryMeter", "StepStats",
    "Policy", "Plan", "plan", "parse_size", "format_size", "default_budget", "MemoryBudgetError", "POLICY_NAMES",
    "mmap_large_allocations", "LiveTensorBytes",
]
