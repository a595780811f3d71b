"""DDPO on an LCM: policy gradient with PPO-clip over the sampler's stochastic steps, as RLCM applies it
(docs/methods.md §4; Black et al. 2023, Owen-Oertell/rlcm).

One outer step: draw P distinct prompts and sample K trajectories of each (each from its own initial noise)
without gradients, storing the trajectories; score the final images (any reward: it need not be
differentiable); turn rewards into advantages with per-prompt running statistics, clipped to ±A_max — with a
group of K >= stat_min_count samples per prompt these are the prompt's own statistics from its first visit,
so an advantage says "better than this prompt's other samples", not "an easy prompt" (`per_prompt_share` in
the logs: the fraction of this step's advantages that were); then for each inner epoch and each minibatch,
re-score every stored noisy step under the current parameters and take the PPO-clip loss, accumulating
gradients over the steps of the minibatch before one optimizer update (as DDPO accumulates over timesteps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import (
    BenchError,
    Dist,
    Knob,
    Method,
    TrainConfig,
    Trajectory,
    at_least,
    multiple_of,
    positive,
    sample,
    stat_counts,
    step_log_prob,
)
from methods.losses import PerPromptStatTracker, clip_advantages, ppo_clip_loss


@dataclass
class DDPOConfig(TrainConfig):
    """Defaults tuned on the testbed (32 trajectories per step: batch 8 was too noisy to learn; clip 1e-4
    clipped most updates), with grouped sampling (P = 4 prompts x K = 8 samples) pending the sweep.
    RLCM's values on LCM-Dreamshaper-v7: lr 1e-4, clip 1e-4, A_max 10, LoRA, max grad norm 5.

    The batch is P x K: batch_size is derived (leave it 0; a nonzero batch_size must equal P x K, or the run
    stops with an error, e.g. from `--set method.batch_size=...`: set ddpo.prompts_per_step instead).
    Before grouping, a step drew 32 prompts with replacement and used per-prompt statistics only once a prompt
    had 16 rewards (on the testbed's 90 prompts, 94% of advantages came from batch statistics). That run is
    reproduced draw for draw by `--set ddpo.prompts_per_step=32 --set ddpo.samples_per_prompt=1
    --set ddpo.prompt_replacement=true --set ddpo.stat_min_count=16 --set ddpo.stat_buffer=32`.

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log), clip_range (1e-4 to 1e-2, log: RLCM's 1e-4 to 10x ours) and
    samples_per_prompt K in {2, 4, 8, 16} (powers of two, so the batch P x K stays a multiple of
    train_batch_size and of the process count). The sweep varies K at fixed P, so the batch and the compute of
    a step grow with K; the budget is compute, so a larger group buys fewer updates, which is part of the
    trade-off being tuned. stat_min_count and stat_buffer follow K by default (0), so every K keeps
    per-prompt statistics from the first step.
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {
        "clip_range": Knob(1e-4, 1e-2, log=True),
        "samples_per_prompt": Knob(choices=(2, 4, 8, 16)),
    }

    prompts_per_step: int = 4
    """P: distinct prompts per outer step (drawn without replacement; with replacement only when P exceeds the
    number of training prompts, or with prompt_replacement). 4 x 8 keeps the tuned 32 trajectories per step."""
    samples_per_prompt: int = 8
    """K: trajectories per prompt per step, each from its own initial noise (the group the per-prompt statistics
    compare). 8: enough for a usable per-prompt mean and std from the first step (std relative error ~1/sqrt(2K)
    = 25%), while P = 4 prompts still vary the batch."""
    prompt_replacement: bool = False
    """Draw the P prompts with replacement, as DDPO did before grouping (for reproducing that run only)."""
    batch_size: int = 0
    """Trajectories per outer step: derived, P x K (0 = derived; any other value must equal P x K)."""
    train_batch_size: int = 8
    """Trajectories per minibatch update (batch_size must be a multiple of it)."""
    inner_epochs: int = 1
    """Passes over each sampled batch."""
    clip_range: float = 1e-3
    """PPO clip ε on the per-step likelihood ratio (RLCM: 1e-4)."""
    adv_clip_max: float = 10.0
    """Advantages are clipped to ±this (RLCM: 10)."""
    stat_buffer: int = 0
    """Per-prompt reward history kept for advantage statistics (0 = 2K): this step's group plus the prompt's
    previous group, a steadier std than K rewards alone, while at most half of it comes from an older policy
    (a prompt recurs only every ~len(prompts)/P steps)."""
    stat_min_count: int = 0
    """Below this many rewards for a prompt, the batch mean/std is used instead (0 = K: a prompt's own group
    suffices, so per_prompt_share is 1 from the first step; above K, first visits fall back to the batch)."""
    lr: float = 1e-3

    def resolve(self, name: str) -> None:
        """Fill batch_size (P x K), stat_buffer (2K) and stat_min_count (K) where 0; check the combination."""
        p, k = self.prompts_per_step, self.samples_per_prompt
        at_least(f"{name}: prompts_per_step", p, 1)
        at_least(f"{name}: samples_per_prompt", k, 1)
        if self.batch_size == 0:
            self.batch_size = p * k
        elif self.batch_size != p * k:
            hint = f"={self.batch_size // k}" if self.batch_size % k == 0 else " and samples_per_prompt"
            raise BenchError(f"{name}: batch_size ({self.batch_size}) must equal prompts_per_step x samples_per_prompt "
                             f"({p} x {k}); DDPO's batch is derived: set {name}.prompts_per_step{hint} instead")
        self.stat_buffer = self.stat_buffer or 2 * k
        self.stat_min_count = self.stat_min_count or k
        super().resolve(name)
        stat_counts(name, self.stat_min_count, self.stat_buffer)
        multiple_of(name, "batch_size", self.batch_size, "train_batch_size", self.train_batch_size)
        at_least(f"{name}: inner_epochs", self.inner_epochs, 1)
        positive(f"{name}: clip_range", self.clip_range)
        positive(f"{name}: adv_clip_max", self.adv_clip_max)


class DDPO(Method):
    """DDPO/RLCM: PPO-clip policy gradient over the LCM sampler's stochastic steps."""

    Config = DDPOConfig
    STATE_ATTRS = ("tracker",)  # the per-prompt reward history, carried across steps (saved in checkpoints)
    INFO_KEYS: tuple[str, ...] = ("approx_kl", "clipfrac")  # what step_loss's info holds (logged per step)

    def __init__(self, name, cfg: DDPOConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.tracker = PerPromptStatTracker(cfg.stat_buffer, cfg.stat_min_count)

    # Overridable pieces (DPOK and GRPO, methods/dpok.py and methods/grpo.py, change only these).
    def initial_noise(self, prompts: list[str]) -> torch.Tensor | None:
        """x_{τ_N} of the global batch (B, C, H, W), or None: sample() draws every row its own noise."""
        return None

    def advantages(self, prompts: list[str], reward: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(B,) global-batch advantages (float32, on reward's device) and their logs: per-prompt running
        statistics, clipped to ±A_max."""
        adv, per_prompt = self.tracker.update_with_mask(prompts, reward.cpu().numpy())  # (B,), (B,) bool
        adv = clip_advantages(adv, self.cfg.adv_clip_max)
        return (torch.as_tensor(adv, dtype=torch.float32, device=reward.device),
                {"per_prompt_share": float(per_prompt.mean())})

    def trained_steps(self, steps: int) -> list[int]:
        """The stochastic steps k one minibatch update trains on: all of them."""
        return list(range(steps))

    def step_loss(self, mb: Trajectory, k: int, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of stored step k of minibatch `mb` with advantages adv (b,): PPO-clip on the re-scored ratio."""
        log_prob = step_log_prob(self.policy, mb, k, self.sampler)
        return ppo_clip_loss(log_prob, mb.log_probs[:, k], adv, self.cfg.clip_range)

    def step(self) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.batch_size
        # (P*K,) global batch, grouped: [p_0] * K + [p_1] * K + …; sample() draws every row its own noise.
        prompts = self.draw_prompt_groups(cfg.prompts_per_step, cfg.samples_per_prompt, cfg.prompt_replacement)
        rows = self.dist.rows(n)  # this process's trajectories (all of them in one process)
        traj = sample(self.policy, prompts, self.sampler, self.generator, grad=False,
                      init=self.initial_noise(prompts), rows=rows)
        with torch.no_grad():
            reward = self.dist.gather_rows(self.reward(traj.images, traj.prompts), n)  # (B,) global batch
        adv, adv_logs = self.advantages(prompts, reward)  # (B,) global
        adv = adv[rows.to(reward.device)]  # local
        norms = []
        sums = dict.fromkeys(("loss", *self.INFO_KEYS, "terms"), 0.0)  # the same keys in every process
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(n, generator=self.generator)  # the same global order in every process
            for start in range(0, n, cfg.train_batch_size):
                mb_global = order[start:start + cfg.train_batch_size]
                local = self.dist.local_positions(rows, mb_global, n)
                mb = traj.select(local)
                ks = self.trained_steps(traj.num_noisy_steps)  # the same in every process

                def step_loss(i, mb=mb, local=local, ks=ks):  # the trained stochastic steps of the minibatch
                    return self.step_loss(mb, ks[i], adv[local])

                if ks:
                    norms.append(self.minibatch_update(len(ks), self.dist.share(len(local), len(mb_global)),
                                                       step_loss, sums))
        self.steps_done += 1
        return {"reward_mean": reward.mean().item(), "reward_std": reward.std().item() if n > 1 else 0.0,
                **adv_logs, **self.mean_logs(sums, norms)}
