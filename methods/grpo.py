"""GRPO on an LCM: group-relative policy optimisation as Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow
Matching Models via Online RL", arXiv 2505.05470) and DanceGRPO (Xue et al. 2025, arXiv 2505.07818) apply it
to diffusion samplers, here on the shared LCM sampler's stochastic steps.

One outer step: draw P distinct prompts and sample a group of G trajectories of each without gradients
(optionally all G from one shared initial noise x_{τ_N}: DanceGRPO's choice, Flow-GRPO's sample.same_latent);
score the final images; the advantage of sample i of a group is

    A_i = (r_i - mean_G r) / (std r + ε)              (this step's group only: no history, no critic)

the std over the whole batch (`adv_norm` "global", Flow-GRPO's default: config/base.py line 52,
`sample.global_std = True`, and every config of config/grpo.py, at yifan123/flow_grpo commit ac4c86e; used by
flow_grpo/stat_tracking.py lines 26-27) or over the group ("group": DanceGRPO's, and the GRPO of language models)
(clipped to ±A_max; a group whose rewards are all equal gets A = 0). Then for each minibatch, at every trained
stochastic step k with ratio ρ_k = exp(log π_θ(x_{k+1}|x_k) - log π_θold(x_{k+1}|x_k)) re-scored at the
stored state,

    L = -mean min(ρ_k A, clip(ρ_k, 1 - ε_c, 1 + ε_c) A)  +  β · mean KL( π_θ(·|x_k) ‖ π_ref(·|x_k) ),

the KL between the two same-σ_k Gaussian policies at the stored state (bench/core/divergences.py), the reference
mean without gradient. That per-step loss is DDPO's with its optional regulariser (methods/ddpo.py, which this
class extends: PPO-clip plus β x a per-step divergence, the `ddpo-kl` estimator); what GRPO changes is where the
advantages come from, the shared initial noise and the trained fraction of steps. With the sampler's default "mean" reduction of log-probabilities, the loss is
Flow-GRPO's term for term (its log-prob and its KL are both means over latent dimensions).

What was read: yifan123/flow_grpo scripts/train_sd3.py (the training loop, lines 739-930), config/base.py,
config/grpo.py, flow_grpo/stat_tracking.py, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py; and
XueZeyue/DanceGRPO fastvideo/train_grpo_sd.py, fastvideo/train_grpo_flux.py, fastvideo/config_sd/{base,dgx}.py,
scripts/finetune/finetune_flux_grpo.sh. Their defaults:
  Flow-GRPO (SD3.5-M, 10 SDE steps): group 24 images per prompt, lr 3e-4, clip_range 1e-4, adv_clip_max 5,
    β 0.04 (0.01 for PickScore; base 0), timestep_fraction 0.99 (the first int(10 x 0.99) = 9 steps), std over
    the whole batch (global_std True; checked again at commit ac4c86e, lines cited above), ε 1e-4, max grad norm 1,
    1 inner epoch; sample.same_latent False (a later version's config/grpo.py; the snapshot read has independent
    noise only);
  DanceGRPO (SD 1.4/Flux): group 16 (SD) or 12 (Flux), shared initial noise, lr 1e-5, clip_range 1e-4,
    adv_clip_max 5, no KL, timestep_fraction 1.0 (SD) or 0.6 (Flux: a random subset of steps per sample),
    group std (torch.std) + 1e-8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.api import BenchError, at_least, in_range, one_of
from methods.ddpo import DDPO, DDPOConfig
from methods.losses import clip_advantages, group_advantages

ADV_NORMS = ("global", "group")


@dataclass
class GRPOConfig(DDPOConfig):
    """Which values come from where. Ours, pending `bench sweep` (which tunes lr, clip_range, the group size
    samples_per_prompt and β): DDPO's testbed batch P = 4 prompts x G = 8 (the originals' groups of 12-24 at
    this batch would leave 1-2 prompts a step), lr 1e-3 and clip 1e-3 (DDPO's testbed values, for the same
    PPO-clip loss on the same sampler; the originals' lr 1e-5 to 3e-4 and clip 1e-4 are for 1-12 B-parameter
    models over hundreds of updates, and DDPO's tuning found clip 1e-4 clipping most updates here). From the
    originals: β 0.04 (Flow-GRPO, on the same per-dimension KL scale: per_dim "auto" with the default "mean"
    log-prob reduction), A_max 5 (both), ε 1e-4 and population std (Flow-GRPO), Flow-GRPO's batch std
    (adv_norm "global"; until issue 22 this entry used the group's, DanceGRPO's), timestep_fraction 1 (both base
    configs) and independent initial noise per sample (Flow-GRPO's default). divergence and per_dim are DDPO's
    regulariser fields (KL in the per-dimension form by default; another f-divergence is an option there, not in
    the originals). Gains measured with tests/test_learning.py's settings are in that file.

    Choices where the originals differ or do not apply:
    - timestep_fraction < 1 trains on int(fraction x (N-1)) of the N-1 stochastic steps (at least 1), a fresh
      random subset for every minibatch update (DanceGRPO draws a random subset per sample; our sampler re-scores
      a minibatch at one step, so the subset is per minibatch). Flow-GRPO's 0.99 on 10 SDE steps only drops the
      last step, which our sampler already makes deterministic, so 1 is the like-for-like value here.
    - Samples with A = 0 (groups without spread) stay in the batch (Flow-GRPO drops them): their PPO term is
      zero but their KL term is not, and the compute of a step does not depend on the rewards.
    - stat_buffer and stat_min_count are DDPO's reward history and do not apply: GRPO's statistics are this
      step's group alone (Flow-GRPO clears its tracker every epoch); setting them is an error.
    """

    beta: float = 0.04
    """β, the weight of the per-step KL to the reference (Flow-GRPO 0.04; 0 = DanceGRPO, no reference forward)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this (Flow-GRPO and DanceGRPO: 5; |A| <= sqrt(G - 1) with the group's std
    anyway, not with the batch's)."""
    same_latent: bool = False
    """All G samples of a group start from one initial noise x_{τ_N} (their per-step noise differs), so their
    rewards differ only through the stochastic steps the policy gradient trains (DanceGRPO: true; Flow-GRPO's
    sample.same_latent: false by default)."""
    timestep_fraction: float = 1.0
    """Fraction of the N-1 stochastic steps each minibatch update trains on, in (0, 1] (a random subset of
    int(fraction x (N-1)) >= 1 steps per minibatch; 1 = every step, as both originals' base configs)."""
    adv_norm: str = "global"
    """The std the advantages are divided by: "global", the whole batch's (Flow-GRPO's default, sample.global_std
    True), or "group", the sample's own group's (DanceGRPO's)."""
    adv_eps: float = 1e-4
    """ε added to the std in the advantage's denominator, in reward units (Flow-GRPO 1e-4; DanceGRPO 1e-8)."""

    def resolve(self, name: str) -> None:
        k = self.samples_per_prompt
        if self.stat_buffer not in (0, 2 * k) or self.stat_min_count not in (0, k):
            raise BenchError(f"{name}: stat_buffer and stat_min_count are DDPO's reward history; GRPO's advantages "
                             f"use each step's group alone: leave them unset")
        super().resolve(name)
        if k < 2:
            raise BenchError(f"{name}: samples_per_prompt (the group size G) must be >= 2, got {k}: "
                             f"a group of one has no relative advantage")
        in_range(f"{name}: timestep_fraction", self.timestep_fraction, 0, 1, open_low=True)
        at_least(f"{name}: adv_eps", self.adv_eps, 0)
        one_of(f"{name}.adv_norm", self.adv_norm, ADV_NORMS)

    def trained_count(self, steps: int) -> int:
        """Every stochastic step, or int(fraction x steps) >= 1 of them."""
        if self.timestep_fraction >= 1 or steps == 0:
            return steps
        return max(1, int(self.timestep_fraction * steps))


class GRPO(DDPO):
    """GRPO (Flow-GRPO/DanceGRPO): group-relative advantages, PPO-clip, optional per-step KL to the reference."""

    Config = GRPOConfig

    def initial_noise(self, prompts: list[str]) -> torch.Tensor | None:
        """With same_latent, one x_{τ_N} per group repeated G times: (P*G, C, H, W), drawn from the method's
        generator (every process draws the global batch's); otherwise None (sample() draws each row its own)."""
        if not self.cfg.same_latent:
            return None
        groups = len(prompts) // self.cfg.samples_per_prompt
        init = torch.randn((groups, *self.policy.latent_shape), generator=self.generator)  # (P, C, H, W)
        return init.repeat_interleave(self.cfg.samples_per_prompt, dim=0)  # rows i*G … i*G+G-1 share group i's

    def advantages(self, prompts: list[str], reward: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Group-relative advantages of the (B,) global batch, by position: groups are consecutive rows, so two
        groups of one prompt (prompt_replacement) stay two groups. Logs the share of samples in groups without
        spread (Flow-GRPO's zero_std_ratio)."""
        adv, zero = group_advantages(reward, self.cfg.samples_per_prompt, self.cfg.adv_eps,
                                     global_std=self.cfg.adv_norm == "global")
        adv = clip_advantages(adv.float(), self.cfg.adv_clip_max)  # (B,)
        return adv, {"zero_std_share": float(zero.float().mean())}

    def trained_steps(self, steps: int) -> list[int]:
        """Every stochastic step, or a random subset of int(fraction x steps) >= 1 of them (ascending)."""
        count = self.cfg.trained_count(steps)
        if count == steps:
            return list(range(steps))
        return sorted(torch.randperm(steps, generator=self.generator)[:count].tolist())  # same in every process
