"""Data parallelism over the processes `accelerate launch -m bench run …` starts (one per GPU; gloo on CPU).

The rule that keeps an N-process run equal to a 1-process run with the same global batch:
  - every process draws the *global* batch's prompts and noise from the same seeded generator (so the
    generators stay in step), and keeps only its rows (`Dist.rows`): rows rank, rank+N, … (whole groups for
    D3PO's pairs);
  - each process scales its loss by its share of the global batch (`Dist.share`), and gradients are *summed*
    across processes before clipping and the optimizer step (`Dist.sum_grads`), which is exactly the
    gradient of the global-batch mean;
  - compute counters are summed across processes (the budget is total device time / total NFE), so every
    process makes the same stop and evaluate decisions;
  - process 0 alone evaluates and writes results; the others wait.
Single-process runs use `Dist()` (rank 0 of 1), for which every operation here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def rows(self, n: int, group: int = 1) -> torch.Tensor:
        """This process's rows of a global batch of n rows, in whole groups of `group` consecutive rows."""
        if n % (group * self.world):
            from bench.core.errors import BenchError

            raise BenchError(f"a global batch of {n} does not split into {self.world} processes "
                             f"(groups of {group}); choose a batch size divisible by {group * self.world}")
        groups = torch.arange(n // group)[self.rank::self.world]
        return (groups[:, None] * group + torch.arange(group)[None, :]).flatten()

    def gather_rows(self, local: torch.Tensor, n: int, group: int = 1) -> torch.Tensor:
        """The inverse of `rows`: every process's rows of a (n_local, ...) tensor, back in global order."""
        if not self.active:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local.contiguous())
        out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
        for r, part in enumerate(parts):
            out[Dist(r, self.world).rows(n, group).to(local.device)] = part
        return out

    def local_positions(self, rows: torch.Tensor, global_idx: torch.Tensor, n: int) -> torch.Tensor:
        """Positions, within this process's `rows`, of those of `global_idx` that are its own (order kept)."""
        pos = torch.full((n,), -1, dtype=torch.long)
        pos[rows] = torch.arange(len(rows))
        sel = pos[global_idx]
        return sel[sel >= 0]

    def share(self, local: int, total: int) -> float:
        """Weight of a loss averaged over `local` of the global batch's `total` items."""
        return local / total if total else 0.0

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        for p in params:
            if p.grad is None:  # a process with no items in this minibatch still joins the reduction
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        if not self.active:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {k: type(values[k])(v) for k, v in zip(values, t.tolist())}  # counts stay ints

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return {k: v / self.world for k, v in self.sum(values).items()}

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def init() -> tuple[Dist, torch.device | None]:
    """The process group `accelerate launch` set up through its environment, and this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(), None
    from accelerate import PartialState

    # Initialises torch.distributed: nccl on GPUs; gloo on CPU, where accelerate needs cpu=True to see the
    # torchrun environment (`accelerate launch --multi_gpu --num_processes 2` starts CPU processes too).
    state = PartialState(cpu=not torch.cuda.is_available())
    device = state.device if state.device.type == "cuda" else torch.device("cpu")
    return Dist(state.process_index, state.num_processes), device
