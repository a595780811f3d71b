"""ROCM (arXiv 2503.06171): first-order reward optimisation on a consistency model, regularised by an
f-divergence between the trained and the frozen model's per-step Gaussian policies (METHODS.md §2).

    maximise  E[ r(image_θ, c) ]  -  β · E[ Σ_{k} w_k · D_f( π_θ(·|x_k) ‖ π_ref(·|x_k) ) ]

The image is a differentiable function of θ through every sampling step (reparameterised sampling with
fixed noise, per-step checkpointing), so the reward must be differentiable. Both policies at a step share
σ_k, so D_f depends only on δ_k = ‖μ_θ - μ_ref‖ / σ_k (methods/divergences.py). `divergence="none"` (β = 0)
is unregularised ROCM — DRaFT/AlignProp on an LCM — the ablation that shows reward hacking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.distributed import Dist
from bench.errors import BenchError, unknown_name
from bench.method import Method, TrainConfig
from bench.reward import require_differentiable
from bench.sampler import sample
from methods.divergences import DIVERGENCES, gaussian_divergence, step_weights


@dataclass
class ROCMConfig(TrainConfig):
    divergence: str = "kl"
    """f-divergence between per-step policies: kl, js, hellinger, tv, chi2, or none (β must be 0)."""
    beta: float = 1.0
    """Regularisation weight β (scales differ per divergence: always read it next to the divergence)."""
    per_dim: bool = False
    """False: δ over the whole latent vector; True: per-dimension δ_i, divergence averaged over dimensions
    (keeps bounded divergences — js, hellinger, tv — from saturating on large latents)."""
    step_weighting: str = "uniform"
    """Step weights w_k: "uniform", or "normalized" (cancels KL's ᾱ/(1-ᾱ) factor so every step counts alike)."""
    detach_state: bool = False
    """Detach the state fed to the reference model in the regulariser (False: gradients flow through it)."""
    lr: float = 3e-3


class ROCM(Method):
    """ROCM: reward back-propagated through every LCM step, with an f-divergence to the frozen model."""

    Config = ROCMConfig
    first_order = True

    def __init__(self, name, cfg: ROCMConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        require_differentiable(reward, name)
        if cfg.divergence != "none" and cfg.divergence not in DIVERGENCES:
            raise unknown_name("divergence", cfg.divergence, [*DIVERGENCES, "none"])
        if cfg.divergence == "none" and cfg.beta != 0:
            raise BenchError(f"{name}: divergence 'none' needs beta = 0, got {cfg.beta}")
        if cfg.beta < 0:
            raise BenchError(f"{name}: beta must be >= 0, got {cfg.beta}")
        self.regularised = cfg.divergence != "none" and cfg.beta > 0

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        rows = self.dist.rows(cfg.batch_size)  # this process's share of the global batch (all of it in one process)
        traj = sample(self.policy, self.draw_prompts(cfg.batch_size), self.sampler, self.generator, grad=True,
                      with_reference=self.regularised, detach_reference_state=cfg.detach_state, rows=rows)
        reward = self.reward(traj.images, traj.prompts)  # (B,), differentiable w.r.t. θ through every step
        divergence = torch.zeros_like(reward)  # (B,) Σ_k w_k D_f at the visited states
        if self.regularised:
            weights = step_weights(traj.schedule.alpha_bar_prev, cfg.step_weighting).to(reward)  # (N-1,)
            for k in range(traj.num_noisy_steps):
                d = gaussian_divergence(cfg.divergence, traj.means[:, k], traj.ref_means[:, k],
                                        traj.schedule.sigmas[k].item(), per_dim=cfg.per_dim)
                divergence = divergence + weights[k] * d
        loss = -(reward - cfg.beta * divergence).mean()
        self.backward(loss, self.dist.share(len(rows), cfg.batch_size))
        grad_norm = self.update()
        self.steps_done += 1
        logs = self.dist.mean({"reward_mean": reward.mean().item(), "divergence": divergence.mean().item(),
                               "loss": loss.item()})
        return logs | {"grad_norm": grad_norm}
