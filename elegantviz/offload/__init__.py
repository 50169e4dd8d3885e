"""Memory offloading for holistic steps: saved-tensor hooks, checkpointing, banding, a meter, a planner.

``records`` (what a hook keeps per saved tensor) and ``hooks`` (their public base) underlie the
``host`` and ``disk`` targets; ``checkpoint``, ``band_model`` and ``banded`` change how a model's
parts run; ``policy`` combines them; ``planner`` measures and picks a policy.

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
from .disk import DiskOffload, default_spill_root
from .hooks import DEFAULT_THRESHOLD, OffloadHooks
from .host import HostOffload, PinnedPool
from .meter import LiveTensorBytes, MemoryMeter, StepStats
from .planner import MemoryBudgetError, Plan, plan
from .policy import POLICY_NAMES, Policy
from .sizes import default_budget, format_size, mmap_large_allocations, parse_size

__all__ = [
    "OffloadHooks", "HostOffload", "DiskOffload", "PinnedPool", "DEFAULT_THRESHOLD", "default_spill_root",
    "checkpoint_hrnet", "checkpoint_module", "uncheckpoint_module", "checkpointed", "CheckpointHandle",
    "MemoryMeter", "StepStats",
    "Policy", "Plan", "plan", "parse_size", "format_size", "default_budget", "MemoryBudgetError", "POLICY_NAMES",
    "mmap_large_allocations", "LiveTensorBytes",
]
