"""Training on several processes (``torchrun``): one process group, gradients averaged each step.

``torchrun --nproc-per-node N -m elegantviz train CONFIG`` starts N ranks; each trains on its
own samples of the step (a whole scene, or crops: see ``SceneSampler.step_samples``), and after
the backward pass the ranks average their gradients, which is what DistributedDataParallel
does. It is done here by hand, once per step, rather than by wrapping the model: the offload
executors (banded, checkpointed) run the model's segments themselves, outside a wrapper's
``forward``, where DDP's reducer would never be armed, and ECR's hard-region path leaves
parameters unused on some steps, which DDP only tolerates with ``find_unused_parameters``. One
flat all-reduce per step costs one pass over the gradients, small beside a holistic step.

BatchNorm stays per rank: each rank normalises with the statistics of its own whole scene
(millions of pixels, enough for a stable estimate), and banding computes those statistics in
two exact passes over the bands, which SyncBatchNorm cannot join. Rank 0's running statistics
go into the checkpoints, and precise BN recomputes them before validation anyway.

The ranks share one random stream (as mmsegmentation's default ``diff_rank_seed=False`` does):
the sampler draws every rank's samples and each takes its own, so a step on N ranks sees what one
process accumulating N would, and one checkpoint resumes every rank exactly. Dropout masks
repeat across ranks, each on a different scene.

Rank 0 alone writes checkpoints and logs and draws the progress bar; a resume reads rank 0's
checkpoint and sends it to every rank (nodes need not share a disk). Validation is split: each
rank validates its share of the scenes and the confusion matrices are summed. Every collective
has a timeout (``ELEGANTVIZ_DIST_TIMEOUT_S``, 1800 s by default), and a
rank whose peers have gone (killed, out of memory) stops with an error naming the iteration
instead of waiting for ever; torchrun then stops the others.
"""

from __future__ import annotations

import datetime
import os

import torch

from elegantviz.errors import ElegantvizError

TIMEOUT_ENV = "ELEGANTVIZ_DIST_TIMEOUT_S"


class RankFailed(ElegantvizError):
    """Another rank stopped answering; the run stops (resume it from its last checkpoint)."""


class Ranks:
    """This process's place in the job: ``rank`` of ``world`` (1 of 1 when not under torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: torch.device) -> "Ranks":
        """Join torchrun's process group (NCCL on CUDA, gloo on the CPU); alone without torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        ranks = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
            if device.type == "cuda":  # the GPU is chosen before the first collective, so NCCL never guesses
                gpu = ranks.device(device)
                dist.init_process_group("nccl", timeout=timeout, device_id=gpu)
            else:
                dist.init_process_group("gloo", timeout=timeout)
        return ranks

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank: rank ``local_rank`` of a node takes that node's GPU of the same number."""
        if self.world > 1 and device.type == "cuda":
            gpu = torch.device("cuda", self.local_rank % torch.cuda.device_count())  # one visible GPU each: 0
            torch.cuda.set_device(gpu)
            return gpu
        return device

    def mine(self, accumulate: int) -> range:
        """Which of a step's ``world * accumulate`` samples are this rank's."""
        return range(self.rank * accumulate, (self.rank + 1) * accumulate)

    def _collective(self, what: str, iteration: int, run) -> None:
        try:
            run()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # NCCL returns at once: its failure shows here, not later
        except RuntimeError as e:  # gloo: connection closed or timed out; NCCL: watchdog timeout
            raise RankFailed(f"rank {self.rank} of {self.world}: {what} at iteration {iteration} failed; another "
                             f"rank stopped answering ({str(e).splitlines()[0][:200]}); resume the run with "
                             f"--resume from its last checkpoint") from None

    def same_weights(self, model: torch.nn.Module) -> None:
        """Every rank starts from rank 0's parameters and buffers (after init or a resume)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        def run() -> None:
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, 0)

        self._collective("sharing rank 0's weights", 0, run)

    def average(self, model: torch.nn.Module, totals: dict, iteration: int) -> None:
        """Average the gradients and the logged terms over the ranks, in place. A parameter that
        no rank gave a gradient keeps none (the optimizer then leaves it alone, as in one
        process); a non-finite loss on any rank makes the total non-finite on every rank, so all
        of them skip that step together."""
        if self.world == 1:
            return
        import torch.distributed as dist

        params = list(model.parameters())
        device = params[0].device
        had = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        terms = torch.tensor([totals[k] for k in sorted(totals)], dtype=torch.float64, device=device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])

        def run() -> None:
            for t in (had, terms, flat):
                dist.all_reduce(t)

        self._collective("averaging the gradients", iteration, run)
        flat /= self.world
        offset = 0
        for p, used in zip(params, had.tolist()):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p) if used else None
            offset += n
        for k, v in zip(sorted(totals), (terms / self.world).tolist()):
            totals[k] = v

    def sum_(self, counts: torch.Tensor, what: str, iteration: int) -> torch.Tensor:
        """``counts`` summed over the ranks, in place (validation's confusion matrices)."""
        if self.world > 1:
            import torch.distributed as dist

            self._collective(what, iteration, lambda: dist.all_reduce(counts))
        return counts

    def from_main(self, load):
        """``load()`` on rank 0 and its result (or its error) on every rank: a resume reads the
        checkpoint rank 0 wrote, even where other nodes cannot see rank 0's disk."""
        if self.world == 1:
            return load()
        import torch.distributed as dist

        box: list = [None]
        if self.main:
            try:
                box = [("ok", load())]
            except ElegantvizError as e:
                box = [("error", e)]
        self._collective("reading rank 0's checkpoint", 0, lambda: dist.broadcast_object_list(box, 0))
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def barrier(self, what: str) -> None:
        if self.world > 1:
            import torch.distributed as dist

            self._collective(what, 0, dist.barrier)

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
