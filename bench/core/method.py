"""The method contract: a method is built from its config, the policy, the shared sampler, a reward and the
training prompts; one `step()` is one outer iteration (sample, score, update) returning scalar logs.

What every method needs and no method should re-implement lives here: the optimizer over the policy's
trainable parameters, one guarded update (NaN check, gradient clipping), the prompt draws (independent prompts,
or groups of samples of distinct prompts), and the sweep knobs of a config resolved to absolute ranges.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.core.checks import at_least, positive, require_differentiable
from bench.core.distributed import Dist
from bench.core.errors import BenchError
from bench.core.policy import Policy
from bench.core.reward import Reward
from bench.core.sampler import SamplerConfig


@dataclass(frozen=True)
class Knob:
    """A tunable config field and its search range for `bench sweep` (every method gets the same trial count).

    Numeric knobs are sampled in [low, high] (log-uniformly when `log`); `choices` makes a categorical knob.
    A range may follow the sampler: with `high_steps` set, high is sampler.steps + high_steps (e.g. -1: N - 1, the
    largest truncation that is still not the whole trajectory), made absolute by `TrainConfig.resolved_knobs`.
    """

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()
    integer: bool = False
    """Sample integers in [low, high] (e.g. a group size)."""
    high_steps: int | None = None
    """None: `high` as given. An integer h: the upper bound is sampler.steps + h (`high` is ignored)."""


@dataclass
class TrainConfig:
    """Optimisation fields every method has; each method's config extends this."""

    KNOBS: ClassVar[dict[str, Knob]] = {"lr": Knob(1e-4, 1e-2, log=True)}
    """Fields `bench sweep` tunes, with their ranges; subclasses extend it (learning rate for every method)."""
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset()
    """Knobs whose range (low, high, choices) is in multiples of the field's own value in the entry, not absolute:
    one config class serves registry entries of different scales (ROCM's β per divergence). `resolved_knobs`
    turns them into absolute ranges; a relative knob whose value is 0 is fixed by its entry and dropped."""

    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this before each update (0 disables)."""
    batch_size: int = 8
    """Images sampled per outer step."""

    def resolve(self, name: str) -> None:
        """Check the fields and their combinations, and fill derived fields, in place; idempotent. Subclasses
        extend it (calling super) with their own fields' rules, through bench/core/checks.py's shared rules. It must
        run after every `--set` override, so never from __post_init__ (bench/run/config.py builds the config from
        its registry overrides first and sets the `--set` fields afterwards)."""
        at_least(f"{name}: batch_size", self.batch_size, 1)
        positive(f"{name}: lr", self.lr)
        at_least(f"{name}: weight_decay", self.weight_decay, 0)
        at_least(f"{name}: max_grad_norm", self.max_grad_norm, 0)

    def validate(self, name: str, sampler: SamplerConfig) -> None:
        """Every check of this config: `resolve`, then the rules that involve the suite's shared sampler
        (subclasses extend this for those, e.g. a step range within sampler.steps). bench/run/config.py calls it
        for every method entry of a suite, after `--set`, before the first run starts; Method.__init__ again."""
        self.resolve(name)

    def nfe_per_step(self, sampler: SamplerConfig) -> int | None:
        """The denoiser sample-evaluations one outer step charges to the meter's `nfe` (a forward of one sample 1,
        a backward 2; recomputation not included: bench/core/compute.py), with this config (validated, so derived
        fields are filled) and `sampler`; where the cost varies with a per-step draw (AlignProp's K, ReFL's j, a
        D3PO pair dropped as a tie), that of the costliest step. None: not declared (a plugin that does not know);
        every built-in method declares it, and tests/test_step_cost.py checks it against the meter.
        bench/run/config.py refuses an `nfe` budget smaller than one step before anything runs."""
        return None

    def knob_scale(self, field: str, latent_dims: int | None) -> float:
        """What a relative knob's range multiplies: the field's value (subclasses may rescale it, e.g. for a
        form of the objective whose natural scale depends on the latent size `latent_dims`, None if unknown)."""
        return float(getattr(self, field))

    def resolved_knobs(self, latent_dims: int | None = None, steps: int | None = None) -> dict[str, Knob]:
        """KNOBS with every relative knob made absolute around this config's values (see RELATIVE_KNOBS) and every
        range that follows the sampler (Knob.high_steps) made absolute for `steps` sampling steps (None: the
        SamplerConfig default)."""
        steps = SamplerConfig.steps if steps is None else steps
        out = {}
        for field, knob in self.KNOBS.items():
            if knob.high_steps is not None:
                knob = dataclasses.replace(knob, high=steps + knob.high_steps, high_steps=None)
            if field not in self.RELATIVE_KNOBS:
                out[field] = knob
                continue
            scale = self.knob_scale(field, latent_dims)
            if scale != 0:
                out[field] = dataclasses.replace(knob, low=knob.low * scale, high=knob.high * scale,
                                                 choices=tuple(c * scale for c in knob.choices))
        return out


def check_pair_batch(name: str, batch_size: int, train_batch_size: int) -> None:
    """Pair methods (D3PO, REBEL) sample batch_size / 2 pairs and update on train_batch_size pairs at a time."""
    at_least(f"{name}: train_batch_size", train_batch_size, 1)
    if batch_size % 2 or (batch_size // 2) % train_batch_size:
        raise BenchError(f"{name}: batch_size ({batch_size}) must be twice a multiple of train_batch_size "
                         f"({train_batch_size}): samples come in pairs")


class Method:
    """Base class. Subclasses set `Config` (a TrainConfig dataclass) and implement `step()`."""

    Config: type = TrainConfig
    first_order: bool = False  # True: back-propagates through the reward, which must then be differentiable
    STATE_ATTRS: ClassVar[tuple[str, ...]] = ()
    """Attributes a step changes beyond the common state (optimizer, generator, step counters), saved in mid-run
    checkpoints by `state_dict`: an object with state_dict() / load_state_dict() (a stat tracker) through those,
    a plain value (a count) as it is. A subclass names its own, or overrides extra_state / load_extra_state."""
    name: str = ""
    """A plugin's declared name (`bench run --methods pkg.module:Class` names its runs and `--set` prefix by it);
    registered entries are named by their registry key, which __init__ stores here."""

    def __init__(self, name: str, cfg: TrainConfig, policy: Policy, sampler: SamplerConfig, reward: Reward,
                 prompts: list[str], generator: torch.Generator, dist: Dist = Dist()):
        cfg.validate(name, sampler)
        if self.first_order:
            require_differentiable(name, reward.name, reward.differentiable)
        self.name, self.cfg, self.policy, self.sampler, self.reward = name, cfg, policy, sampler, reward
        self.prompts, self.generator, self.dist = list(prompts), generator, dist
        # fused: one kernel for every parameter's update on a GPU (the same update up to float rounding)
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=policy.device.type == "cuda")
        self.steps_done = 0
        self.updates_done = 0
        self.drawn: list[list[int]] = []
        """Indices into `prompts` of every draw so far, in order: a resumed run replays their text encodings
        (bench/run/checkpoint.py), so that its caches, and what it is charged, are an uninterrupted run's."""

    def step(self, fraction: float = 1.0) -> dict[str, float]:
        """One outer iteration (sample, score, update); returns its scalar logs. `fraction` < 1 only where
        step_parts() > 1 (see there)."""
        raise NotImplementedError

    def step_parts(self) -> int:
        """How many equal parts an outer step can be cut into: `step(fraction=k / step_parts())` then takes k of
        them (fewer prompts or samples) at that fraction of the full step's compute and no more, so that a time
        budget's last step fills what is left of it (bench/run/budget.py). 1, the default: the step is indivisible
        and only ever called as `step()`."""
        return 1

    def batch_parts(self, n: int) -> int:
        """step_parts() of a step whose compute is proportional to its global batch of n rows: the batch shrinks in
        whole multiples of the process count, so every process keeps the same share."""
        return n // self.dist.world

    def partial_batch(self, n: int, fraction: float) -> int:
        """The global batch of a step of `fraction` (k / batch_parts(n)) of a full one of n rows."""
        return max(1, round(fraction * self.batch_parts(n))) * self.dist.world

    # ---- checkpoints (bench/run/checkpoint.py): everything a resumed run needs to continue bit for bit ----------
    def state_dict(self) -> dict:
        """The optimizer, the method's generator, the step counters, the prompt draws and `extra_state()`: tensors,
        numbers, strings and containers of them only (checkpoints load with torch.load(weights_only=True))."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "steps_done": self.steps_done, "updates_done": self.updates_done, "drawn": self.drawn,
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """The inverse of state_dict, into a method built as a new run builds it."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.steps_done, self.updates_done = int(state["steps_done"]), int(state["updates_done"])
        self.drawn = [list(d) for d in state["drawn"]]
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict:
        """The state of the STATE_ATTRS attributes."""
        out = {}
        for name in self.STATE_ATTRS:
            value = getattr(self, name)
            out[name] = value.state_dict() if hasattr(value, "state_dict") else value
        return out

    def load_extra_state(self, state: dict) -> None:
        for name in self.STATE_ATTRS:
            value = getattr(self, name)
            if hasattr(value, "load_state_dict"):
                value.load_state_dict(state[name])
            else:
                setattr(self, name, state[name])

    # ---- shared pieces -----------------------------------------------------------------------------------
    def draw_prompts(self, n: int) -> list[str]:
        """n training prompts drawn uniformly with replacement from the method's generator (the global batch:
        every process draws the same ones, see bench/core/distributed.py)."""
        idx = torch.randint(len(self.prompts), (n,), generator=self.generator).tolist()
        self.drawn.append(idx)
        return [self.prompts[i] for i in idx]

    def draw_prompt_groups(self, groups: int, size: int, replacement: bool = False) -> list[str]:
        """`groups` prompts, each repeated `size` times in a row: [p_0] * size + [p_1] * size + …, groups * size
        prompts (a group is `size` samples of one prompt, each with its own noise when sampled: the per-prompt
        statistics DDPO, and later GRPO, compare a sample with).

        The prompts are distinct (the first `groups` of a random permutation) when groups <= len(prompts);
        beyond that, whole permutations are concatenated, so every prompt appears ⌊groups/n⌋ or ⌈groups/n⌉
        times. `replacement=True` draws the groups' prompts as draw_prompts does (with replacement, the same
        generator calls: with size 1 it is exactly draw_prompts(groups)). Every process draws the same.
        """
        if groups < 1 or size < 1:
            raise BenchError(f"{self.name}: prompt groups need groups >= 1 and size >= 1, got {groups}, {size}")
        if replacement:
            chosen = self.draw_prompts(groups)
        else:
            n = len(self.prompts)
            perms = [torch.randperm(n, generator=self.generator) for _ in range(-(-groups // n))]
            self.drawn.append(torch.cat(perms)[:groups].tolist())
            chosen = [self.prompts[i] for i in self.drawn[-1]]
        return [p for p in chosen for _ in range(size)]

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
            # weighted by the process's share of the minibatch: summed over processes, the minibatch's own mean
            # (an unweighted mean of two processes' means over 1 and 3 rows is neither's nor the batch's)
            for key, value in (("loss", loss.item()), *info.items()):
                sums[key] = sums.get(key, 0.0) + value * share
            sums["terms"] = sums.get("terms", 0.0) + share
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
