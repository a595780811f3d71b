"""The method contract: a method is built from its config, the policy, the shared sampler, a reward and the
training prompts; one `step()` is one outer iteration (sample, score, update) returning scalar logs.

What every method needs and no method should re-implement lives here: the optimizer over the policy's
trainable parameters, one guarded update (NaN check, gradient clipping), and the prompt draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.distributed import Dist
from bench.errors import BenchError
from bench.models import Policy
from bench.reward import Reward
from bench.sampler import SamplerConfig


@dataclass(frozen=True)
class Knob:
    """A tunable config field and its search range for `bench sweep` (every method gets the same trial count).

    Numeric knobs are sampled in [low, high] (log-uniformly when `log`); `choices` makes a categorical knob.
    """

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()
    integer: bool = False
    """Sample integers in [low, high] (e.g. a group size)."""


@dataclass
class TrainConfig:
    """Optimisation fields every method has; each method's config extends this."""

    KNOBS: ClassVar[dict[str, Knob]] = {"lr": Knob(1e-4, 1e-2, log=True)}
    """Fields `bench sweep` tunes, with their ranges; subclasses extend it (learning rate for every method)."""

    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this before each update (0 disables)."""
    batch_size: int = 8
    """Images sampled per outer step."""


class Method:
    """Base class. Subclasses set `Config` (a TrainConfig dataclass) and implement `step()`."""

    Config: type = TrainConfig
    first_order: bool = False  # True: back-propagates through the reward, which must then be differentiable

    def __init__(self, name: str, cfg: TrainConfig, policy: Policy, sampler: SamplerConfig, reward: Reward,
                 prompts: list[str], generator: torch.Generator, dist: Dist = Dist()):
        if cfg.batch_size < 1:
            raise BenchError(f"{name}: batch_size must be >= 1, got {cfg.batch_size}")
        self.name, self.cfg, self.policy, self.sampler, self.reward = name, cfg, policy, sampler, reward
        self.prompts, self.generator, self.dist = list(prompts), generator, dist
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_done = 0
        self.updates_done = 0

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    # ---- shared pieces -----------------------------------------------------------------------------------
    def draw_prompts(self, n: int) -> list[str]:
        """n training prompts drawn uniformly with replacement from the method's generator (the global batch:
        every process draws the same ones, see bench/distributed.py)."""
        idx = torch.randint(len(self.prompts), (n,), generator=self.generator)
        return [self.prompts[i] for i in idx.tolist()]

    def backward(self, loss: torch.Tensor, share: float = 1.0) -> None:
        """(share * loss).backward(), refusing a non-finite loss (it would poison the weights silently).
        `share`: this process's fraction of the global batch the loss averages over (1 in one process)."""
        if not torch.isfinite(loss):
            raise BenchError(f"{self.name}: non-finite loss ({loss.item()}) at step {self.steps_done + 1}; "
                             f"lower the learning rate or beta (--set {self.name}.lr=...)")
        (loss * share).backward()

    def minibatch_update(self, steps: int, share: float, step_loss, sums: dict[str, float]) -> float:
        """One optimizer update from a minibatch of stored trajectories, accumulating the gradient of
        `step_loss(k) -> (loss, info)` over every stochastic step k (as DDPO and D3PO do). `share`: this
        process's fraction of the minibatch (0: it holds none of it, but still joins the gradient sum).
        Adds the losses and infos into `sums` (with a count under "terms"); returns the gradient norm."""
        for k in range(steps if share > 0 else 0):
            loss, info = step_loss(k)
            self.backward(loss / steps, share)
            for key, value in (("loss", loss.item()), *info.items()):
                sums[key] = sums.get(key, 0.0) + value
            sums["terms"] = sums.get("terms", 0.0) + 1
        return self.update()

    def mean_logs(self, sums: dict[str, float], norms: list[float]) -> dict[str, float]:
        """Per-term means of what minibatch_update summed (over every process), and the mean gradient norm.
        `sums` must hold the same keys in every process: start it from the loss's info keys set to 0."""
        totals = self.dist.sum({"terms": 0.0, **sums})
        terms = max(totals.pop("terms"), 1)
        return {k: v / terms for k, v in totals.items()} | {"grad_norm": sum(norms) / max(len(norms), 1)}

    def update(self) -> float:
        """Sum gradients over processes, clip, step, zero. Returns the pre-clip gradient norm."""
        params = self.policy.trainable_parameters()
        self.dist.sum_grads(params)
        if self.cfg.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        else:
            norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))
        if not math.isfinite(norm):
            raise BenchError(f"{self.name}: non-finite gradient at step {self.steps_done + 1}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates_done += 1
        return norm
