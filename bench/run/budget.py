"""Spending a run's budget exactly: when the next outer step may start, how large the last one may be, and the
uncharged warm-up of time budgets (docs/protocol.md §3).

Count budgets (NFE, FLOPs) are deterministic: a step starts only if a step as costly as the costliest so far still
fits within the budget plus BUDGET_TOLERANCE, so no run ends more than 0.5% past it, and each stops less than one
step short. Time budgets are measured: the first step of a run pays for CUDA start-up, kernel selection, allocator
growth and any compilation, so it is taken once *before* the clock starts (the warm-up: uncharged, undone, its time
reported as `warmup_seconds`), the next step's time is predicted from the last RECENT steps rather than from the
slowest ever, and where the full next step would not fit, a method that can take a smaller step (fewer prompts or
samples, `Method.step_parts`) takes one sized to what is left — so a time-budget run ends within 0.5% past and
~2% short of its budget instead of up to a whole (first, slowest) step short.
"""

from __future__ import annotations

import copy
import math
from collections import deque

from bench.core.compute import BUDGET_TOLERANCE, Budget, ComputeMeter, sync_device
from bench.run import checkpoint

RECENT = 3  # time budgets: the next step is predicted to cost as much as the costliest of the last RECENT
LAST_STEP_AIM = 0.999  # a partial last step aims at this fraction of the budget (its time is a prediction)


class StopRule:
    """Whether (and how large) the next outer step of a run may be, from the costs of the steps so far."""

    def __init__(self, budget: Budget, costliest: float = 0.0, recent: list[float] = (), done: bool = False):
        self.budget, self.costliest = budget, costliest
        self.recent = deque(recent, maxlen=RECENT)
        self.done = done  # a partial last step was taken: nothing more fits
        self.limit = budget.amount * (1 + BUDGET_TOLERANCE)

    @property
    def predicted(self) -> float:
        """The next full step's predicted cost in the budget's unit."""
        if self.budget.kind == "seconds":
            return max(self.recent, default=0.0)
        return self.costliest

    def next_step(self, spent: float, parts: int = 1) -> float:
        """1.0: take a full step; k / parts in (0, 1): take a step of k of the `parts` equal parts a method's step
        can be cut into (`Method.step_parts`; only for time budgets), the most that fits; 0.0: stop."""
        if self.done or spent >= self.budget.amount:
            return 0.0
        if spent + self.predicted <= self.limit:
            return 1.0
        if self.budget.kind != "seconds" or parts <= 1:
            return 0.0
        share = (LAST_STEP_AIM * self.budget.amount - spent) / self.predicted  # < 1: a full step did not fit
        return max(0, math.floor(share * parts)) / parts

    def record(self, cost: float, fraction: float = 1.0) -> None:
        """The cost of the step just taken (`fraction` < 1: the partial last one)."""
        self.costliest = max(self.costliest, cost)
        self.recent.append(cost)
        self.done = self.done or fraction < 1.0

    def state(self) -> dict:
        """What a checkpoint keeps of the rule."""
        return {"costliest": self.costliest, "recent": list(self.recent), "last_step_done": self.done}

    @classmethod
    def from_state(cls, budget: Budget, progress: dict) -> "StopRule":
        return cls(budget, progress["costliest"], progress.get("recent", []), progress.get("last_step_done", False))


def warm_up(policy, algo, meter: ComputeMeter) -> float:
    """One outer step with the meter paused, then everything it changed put back (trainable weights, the method's
    state: optimizer, generator, counters, its own statistics; every random generator): the run continues exactly as
    if it had not happened, but kernels are selected, memory allocated and compiled code built. Returns its seconds.
    What it leaves is what a warm process has: text embeddings of the prompts it drew are cached."""
    weights = {k: v.clone() for k, v in policy.trainable_state_dict().items()}
    state, rng = copy.deepcopy(algo.state_dict()), checkpoint.rng_state()
    sync_device()
    t0 = meter.clock()
    with meter.paused():
        algo.step()
    sync_device()
    seconds = meter.clock() - t0
    policy.load_trainable_state_dict(weights)
    algo.load_state_dict(state)
    checkpoint.set_rng_state(rng)
    for p in policy.trainable_parameters():
        p.grad = None
    return seconds
