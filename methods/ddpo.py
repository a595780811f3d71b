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

With β > 0 (the `ddpo-kl` entry; GRPO's per-step KL, methods/grpo.py) each stored step's loss adds β times the
divergence between the trained and the frozen per-step Gaussian policies at the stored state x_k,

    L_k = PPO-clip_k  +  β · mean_i D( N(μ_θ(x_ik), σ_k² I) ‖ N(μ_ref(x_ik), σ_k² I) )      (methods/losses.py
                                                                                          regularised_ppo_loss)

with the reference mean computed under no_grad with the adapters off: a fixed target, so the regulariser pulls θ
towards the reference, never the reference's input (the design warning in the project docs: d3po's "DPOK" script
computes this term wrongly). Each step's loss is divided by the number of stored steps, which scales both terms
alike. This is the like-for-like regularised policy-gradient baseline for ROCM: the same per-step policies and
f-divergences, at the states the sampler visited, but a zeroth-order (score-function) estimate of the reward's
gradient instead of ROCM's first-order one. It is *not* DPOK (Fan et al. 2023: a value baseline, single-step
replay, a clamped ratio; methods/dpok.py), whose name this estimator carried in this registry before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import (
    DIVERGENCES,
    BenchError,
    Dist,
    Knob,
    Method,
    SamplerConfig,
    TrainConfig,
    Trajectory,
    at_least,
    gaussian_divergence,
    gaussian_log_prob,
    multiple_of,
    one_of,
    positive,
    sample,
    stat_counts,
    step_log_prob,
    step_mean,
)
from methods.losses import PerPromptStatTracker, clip_advantages, ppo_clip_loss, regularised_ppo_loss

PER_DIM_SETTINGS = {"auto": None, "true": True, "false": False}


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
    per-prompt statistics from the first step. β is relative (RELATIVE_KNOBS): 0.1x to 10x the entry's, log-uniform,
    dropped where the entry's β is 0 (DDPO itself).

    The regulariser (β, divergence, per_dim; 0 for `ddpo`): `ddpo-kl`'s β = 0.3 is a testbed value where the
    regulariser is active while the training reward still rises clearly, measured (as the former "dpok" entry,
    testbed v1) with tests/test_learning.py's settings at 30000 NFE, seed 0 (gain of testbed-pref on the training
    split; per-dimension KL per step, mean over the last 10 steps; gain of the hidden gold): β ≈ 0 (1e-6) +3.80, KL
    3.1e-3, gold -0.017; β = 0.3 +1.59, 2.6e-4, +0.002; β = 1 +0.85, 5.3e-5, +0.001; β = 3 +0.50, 1.5e-5, +0.002.
    Another divergence has another scale: at small δ, hellinger ≈ δ²/4, js ≈ δ²/8, chi2 ≈ δ² against kl = δ²/2, so
    set β x 2, x 4, x 0.5 (tv is linear in δ: x 1.3 matched at δ = 1), as bench/registry/catalog.py's ROCM entries
    are matched.
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {
        "clip_range": Knob(1e-4, 1e-2, log=True),
        "samples_per_prompt": Knob(choices=(2, 4, 8, 16)),
        "beta": Knob(0.1, 10.0, log=True),
    }
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset({"beta"})

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
    beta: float = 0.0
    """β, the weight of the per-step divergence to the frozen model (dimensionless: the loss is in units of advantage
    x ratio). 0: DDPO (no reference forward); `ddpo-kl`: 0.3."""
    divergence: str = "kl"
    """f-divergence between the per-step Gaussian policies when β > 0: kl, js, hellinger, tv or chi2
    (bench/core/divergences.py)."""
    per_dim: str = "auto"
    """"auto": the per-dimension form (the divergence of each latent dimension, averaged: for KL ‖Δμ‖² / (2σ² D))
    when the sampler reduces log-probabilities by "mean" (the default, as RLCM/DDPO and Flow-GRPO do), so that
    the regulariser and the log-ratio ρ are on the same per-dimension scale; the whole-vector form (the exact
    KL of the D-dimensional step) when it reduces by "sum". "true" / "false" force one form (a β chosen for one
    is ~D times too weak or strong for the other)."""
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
        one_of("divergence", self.divergence, DIVERGENCES)
        at_least(f"{name}: beta", self.beta, 0)  # also refuses NaN
        one_of(f"{name}.per_dim setting", str(self.per_dim).lower(), PER_DIM_SETTINGS)

    def trained_count(self, steps: int) -> int:
        """How many of the `steps` stochastic steps one minibatch update trains on: all of them."""
        return steps

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        """Sampling (N forwards per trajectory), then for every inner epoch each trajectory's trained steps re-scored
        (a forward and a backward each) and, with β > 0, the reference's forward at each."""
        trained = self.trained_count(sampler.steps - 1)
        return self.batch_size * (sampler.steps + self.inner_epochs * trained * (3 + (self.beta > 0)))


class DDPO(Method):
    """DDPO/RLCM: PPO-clip policy gradient over the LCM sampler's stochastic steps."""

    Config = DDPOConfig
    STATE_ATTRS = ("tracker",)  # the per-prompt reward history, carried across steps (saved in checkpoints)
    INFO_KEYS: tuple[str, ...] = ("approx_kl", "clipfrac")  # what step_loss's info holds (logged per step)

    def __init__(self, name, cfg: DDPOConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.tracker = PerPromptStatTracker(cfg.stat_buffer, cfg.stat_min_count)
        setting = PER_DIM_SETTINGS[str(cfg.per_dim).lower()]
        self.per_dim = sampler.logprob_reduction == "mean" if setting is None else setting
        self.regularised = cfg.beta > 0  # β = 0: no reference forward at all (DDPO's loss and cost)
        if self.regularised:
            self.INFO_KEYS = (*DDPO.INFO_KEYS, "divergence", "policy_loss")

    # Overridable pieces (GRPO, methods/grpo.py, changes only these).
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
        """Loss of stored step k of minibatch `mb` with advantages adv (b,): PPO-clip on the re-scored ratio, plus
        β x the mean divergence to the frozen model at the stored states x_k when regularised."""
        if not self.regularised:
            log_prob = step_log_prob(self.policy, mb, k, self.sampler)
            return ppo_clip_loss(log_prob, mb.log_probs[:, k], adv, self.cfg.clip_range)
        mean = step_mean(self.policy, mb, k, self.sampler)  # (b, C, H, W) μ_θ(x_k), with gradient
        with torch.no_grad():  # the reference is a fixed target: no gradient, adapters off
            mean_ref = step_mean(self.policy, mb, k, self.sampler, reference=True)  # (b, C, H, W)
        sigma = mb.schedule.sigmas[k].to(mean.device)  # σ_k, shared by both policies
        # log π_θ(x_{k+1} | x_k) from the same forward (sampler.step_log_prob would run the policy again): (b,)
        log_prob = gaussian_log_prob(mb.states[:, k + 1].detach(), mean, sigma, self.sampler.logprob_reduction)
        divergence = gaussian_divergence(self.cfg.divergence, mean, mean_ref, sigma, per_dim=self.per_dim)  # (b,)
        return regularised_ppo_loss(log_prob, mb.log_probs[:, k], adv, self.cfg.clip_range, divergence, self.cfg.beta)

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
