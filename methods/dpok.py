"""DPOK on an LCM: DDPO's policy gradient plus a per-step divergence to the frozen model (Fan et al. 2023,
"DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models", NeurIPS, arXiv 2305.16381).

    L = -mean_i [ A_i Σ_k min(ρ_ik, clip(ρ_ik, 1 ± ε)) ]  +  β Σ_k mean_i D( π_θ(·|x_ik) ‖ π_ref(·|x_ik) )

with everything DDPO has (methods/ddpo.py: P prompts x K trajectories sampled without gradient, per-prompt
advantages, PPO-clip ratio ρ_ik = π_θ / π_θold of stored step k re-scored under the current parameters) and,
at every stored state x_ik, the divergence between the two Gaussian policies N(μ_θ(x_ik), σ_k² I) and
N(μ_ref(x_ik), σ_k² I) (bench/core/divergences.py; KL = ‖μ_θ - μ_ref‖² / 2σ_k²). This is the like-for-like
regularised policy-gradient baseline for ROCM: the same per-step policies and the same f-divergences, the
regulariser on the states the sampler visited (DPOK's own estimator also uses the stored states), but a
zeroth-order (score-function) estimate of the reward's gradient instead of ROCM's first-order one.

How the KL is computed, and why (the design warning in the project docs: d3po's "DPOK" script computes it
wrongly): per step k, at the *stored* state x_k (not a re-sampled one), between the policy mean, which carries
the gradient, and the reference mean computed under no_grad with the LoRA adapters off (a fixed target, so the
regulariser pulls θ only towards the reference, never the reference's input). The per-step loss is
DDPO's per-step loss plus β times this divergence (methods/losses.py regularised_ppo_loss); as in DDPO each
step's loss is divided by the number of stored steps before the gradients of a minibatch are summed, which
scales both terms of L alike (so β keeps its meaning).

What was read: google-research/DPOK train_online_pg.py (`_train_policy_func`) and
pipeline_stable_diffusion_extended.py (`forward_calculate_logprob`), in the verbatim public copy in
HyperPotatoNeo/gfnImageFinetune (Apache-2.0, "Copyright 2024 The Google Research Authors"; the google-research
repository itself could not be fetched here). The original, on Stable Diffusion 1.5 with 50 DDIM steps:
loss = -reward_weight · A · clamp(ρ, 1 ± ratio_clip) + kl_weight · mean (ε_θ - ε_ref)², a single random
stored transition per sample, A = reward - V(x_t, c, t) from a learned value function (v_flag 1), a replay
buffer of 1000 transitions. Its defaults: kl_weight 0.01, reward_weight 100, ratio_clip 1e-4, lr 1e-5,
LoRA rank 4, clip_norm 0.1, p_batch_size 2 x gradient_accumulation_steps 12, p_step 5 updates per round,
g_batch_size 6 prompts x num_samples 1, v_lr 1e-4, kl_warmup -1 (none). Its KL term is the squared
ε-difference, an upper bound of the per-step KL up to a step-dependent factor (its Lemma 4.1); ours is the
per-step Gaussian divergence itself (for KL, the exact one), since our sampler's policies are explicit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import (
    DIVERGENCES,
    Dist,
    Knob,
    Trajectory,
    at_least,
    gaussian_divergence,
    gaussian_log_prob,
    one_of,
    step_mean,
)
from methods.ddpo import DDPO, DDPOConfig
from methods.losses import regularised_ppo_loss

PER_DIM_SETTINGS = {"auto": None, "true": True, "false": False}


@dataclass
class DPOKConfig(DDPOConfig):
    """DDPO's fields (P x K grouped sampling, lr 1e-3, clip 1e-3, per-prompt statistics: ours, DDPO's testbed
    tuning) plus the regulariser. Which values come from where: DPOK's own (module docstring) are for SD 1.5
    with a value-function baseline and rewards x 100 against a squared ε-difference, so none transfers; β = 0.3
    is ours, a testbed value where the regulariser is active while the training reward still rises clearly.
    Measured with tests/test_learning.py's settings at 30000 NFE, seed 0 (gain of testbed-pref on the training
    split; per-dimension KL per step, mean over the last 10 steps; gain of the hidden gold): β ≈ 0 (1e-6)
    +3.80, KL 3.1e-3, gold -0.017; β = 0.3 +1.59, 2.6e-4, +0.002; β = 1 +0.85, 5.3e-5, +0.001; β = 3 +0.50,
    1.5e-5, +0.002. `bench sweep` tunes it (selecting on the gold, on validation prompts).

    Sweep knobs (KNOBS): DDPO's (lr 1e-4 to 1e-2 log, clip_range 1e-4 to 1e-2 log, samples_per_prompt K in
    {2, 4, 8, 16}) and beta, relative (RELATIVE_KNOBS): 0.1x to 10x the entry's β, log-uniform (as ROCM's:
    one config serves entries of different scales, and β = 0 in an entry fixes it). Another divergence
    (`--set dpok.divergence=js`) has another scale: at small δ, hellinger ≈ δ²/4, js ≈ δ²/8, chi2 ≈ δ² against
    kl = δ²/2, so set β x 2, x 4, x 0.5 (tv is linear in δ: x 1.3 matched at δ = 1), as bench/registry/catalog.py's ROCM
    entries are matched.
    """

    KNOBS: ClassVar[dict[str, Knob]] = DDPOConfig.KNOBS | {"beta": Knob(0.1, 10.0, log=True)}
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset({"beta"})

    beta: float = 0.3
    """β, the weight of the per-step divergence (dimensionless: the loss is in units of advantage x ratio;
    DPOK's kl_weight 0.01 against reward_weight 100 weighs a squared ε-difference instead). 0: DDPO exactly."""
    divergence: str = "kl"
    """f-divergence between the per-step Gaussian policies: kl, js, hellinger, tv or chi2 (bench/core/divergences.py)."""
    per_dim: str = "auto"
    """"auto": the per-dimension form (the divergence of each latent dimension, averaged: for KL ‖Δμ‖² / (2σ² D))
    when the sampler reduces log-probabilities by "mean" (the default, as RLCM/DDPO and Flow-GRPO do), so that
    the regulariser and the log-ratio ρ are on the same per-dimension scale; the whole-vector form (the exact
    KL of the D-dimensional step) when it reduces by "sum". "true" / "false" force one form (a β chosen for one
    is ~D times too weak or strong for the other)."""

    def resolve(self, name: str) -> None:
        super().resolve(name)
        one_of("divergence", self.divergence, DIVERGENCES)
        at_least(f"{name}: beta", self.beta, 0)  # also refuses NaN
        one_of(f"{name}.per_dim setting", str(self.per_dim).lower(), PER_DIM_SETTINGS)


class DPOK(DDPO):
    """DPOK: DDPO's PPO-clip policy gradient plus β x a per-step f-divergence to the frozen model."""

    Config = DPOKConfig

    def __init__(self, name, cfg: DPOKConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        setting = PER_DIM_SETTINGS[str(cfg.per_dim).lower()]
        self.per_dim = sampler.logprob_reduction == "mean" if setting is None else setting
        self.regularised = cfg.beta > 0  # β = 0: no reference forward at all (DDPO's loss and cost)
        if self.regularised:
            self.INFO_KEYS = (*DDPO.INFO_KEYS, "divergence", "policy_loss")

    def step_loss(self, mb: Trajectory, k: int, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """DDPO's PPO-clip loss of stored step k plus β x the mean divergence at the stored states x_k."""
        if not self.regularised:
            return super().step_loss(mb, k, adv)
        mean = step_mean(self.policy, mb, k, self.sampler)  # (b, C, H, W) μ_θ(x_k), with gradient
        with torch.no_grad():  # the reference is a fixed target: no gradient, adapters off
            mean_ref = step_mean(self.policy, mb, k, self.sampler, reference=True)  # (b, C, H, W)
        sigma = mb.schedule.sigmas[k].to(mean.device)  # σ_k, shared by both policies
        # log π_θ(x_{k+1} | x_k) from the same forward (sampler.step_log_prob would run the policy again): (b,)
        log_prob = gaussian_log_prob(mb.states[:, k + 1].detach(), mean, sigma, self.sampler.logprob_reduction)
        divergence = gaussian_divergence(self.cfg.divergence, mean, mean_ref, sigma, per_dim=self.per_dim)  # (b,)
        return regularised_ppo_loss(log_prob, mb.log_probs[:, k], adv, self.cfg.clip_range, divergence, self.cfg.beta)
