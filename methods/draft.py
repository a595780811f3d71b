"""DRaFT-K and AlignProp on an LCM: reward back-propagation through only the last K sampling steps (Clark et al.
2024, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards", ICLR; Prabhudesai et al. 2023,
"Aligning Text-to-Image Diffusion Models with Reward Backpropagation", mihirp1998/AlignProp, read:
sd_pipeline.py and config/alignprop_config.py at commit b22918a).

    maximise  E[ r(image_θ, c) ]  -  β · E[ Σ_{k in the last K steps} w_k · D_f( π_θ(·|x_k) ‖ π_ref(·|x_k) ) ]

Sampling is ROCM's (methods/rocm.py): reparameterised, fixed noise, the same shared sampler; but only the last K
of the N steps carry gradient (bench/core/sampler.py `grad_steps`): the N - K steps before run without gradient, so the
state entering the last K steps is a constant and the image depends on θ only through those K evaluations of f_θ.
K = 1 (DRaFT-1) differentiates through the final x̂_0 = f_θ(x_{τ_1}, τ_1) alone. K ranges over 1 … N-1: the first
step never carries gradient, and K >= N is refused, since it *is* unregularised ROCM (`rocm-none`), a method of its
own in the registry (a sweep that selected it would report ROCM under DRaFT's name). This isolates what
full-trajectory gradients buy over truncated ones. Unregularised by default (β = 0, as both papers train); the
optional regulariser is ROCM's, on the steps that carry gradient only.

- DRaFT-K: K fixed (`k`; `k` = 0 means N - 1).
- AlignProp: K drawn anew every outer step (`k_min` > 0): uniformly from {k_min, …, k}, k = 0 meaning N - 1.
  AlignProp's pipeline draws the first step with gradient, j, and detaches the UNet output of every step before it
  (the same gradient as detaching the state: nothing before j depends on θ then; it keeps their graphs, we run them
  without one). Its "uniform" strategy draws j from randint(0, 50) and redraws until 1 <= j <= N - 1
  (sd_pipeline.py `pipeline_step_with_grad`, the while loop at its top), so K = N - j is uniform on {1, …, N-1}: the
  first step never carries gradient. The `alignprop` entry sets k_min = 1, k = 0: that range at every N. At N = 2
  the range is {1}, which is DRaFT-1 (`draft-k`): refused, as AlignProp needs N >= 3 to be itself. Its range is
  not swept (a sweep of its top could select K = 1, DRaFT-1 again). (Its config's default strategy is "gaussian",
  j ~ N(42, 5²) of 50, i.e. K ≈ 8 of 50; its paper describes the uniform one, which we follow.)
- DRaFT-LV (`n_lv` > 1): the reward gradient of the final step averaged over n_lv draws of that step's input.
  The paper's DRaFT-LV (as we read it; not checked against its text here) re-noises the final sample to the last
  step's noise level with fresh noise and denoises it again, for K = 1. On an LCM the state entering the last step
  is x_{τ_1} = μ + σ z with μ = sqrt(ᾱ) f_θ(x_{τ_2}, τ_2) (the last noisy step's mean); we re-draw z, keeping μ:
  x^{(i)} = μ + σ z_i, i = 1 … n_lv - 1, so every draw is a sample of the same sampler's x_{τ_1} given x_{τ_2}
  (re-noising the final x̂_0 instead would add an (N+1)-th step), and draw 0 is the trajectory's own. The extra
  draws cost one denoiser forward, decode and reward each (and their backward). For K >= 2, μ itself carries
  gradient, and every draw passes it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import BenchError, Dist, Knob, SamplerConfig, Trajectory, at_least
from methods.rocm import ROCM, ROCMConfig


@dataclass
class DraftConfig(ROCMConfig):
    """DRaFT-K / AlignProp fields; the regulariser's fields (divergence, beta, per_dim, step_weighting,
    detach_state) are ROCM's and act only on the steps that carry gradient. Defaults: DRaFT-1 (K = 1), unregularised.

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log), k (integer, 1 to N - 1: the range follows the sampler's N, from
    DRaFT-1 to every step but the first; not for AlignProp, whose range is published), and ROCM's β (relative,
    dropped while the entry's β is 0, i.e. swept only where regularised). Our choice where the originals are silent:
    the learning rate is ROCM's 3e-3 (LoRA on the testbed), not the papers' (real models, other batch sizes).
    """

    KNOBS: ClassVar[dict[str, Knob]] = ROCMConfig.KNOBS | {"k": Knob(1, high_steps=-1, integer=True)}

    divergence: str = "none"
    """ROCM's divergence field; "none" by default: unregularised, as both papers train."""
    beta: float = 0.0
    """ROCM's β (0 with divergence "none"); weights the divergence on the steps that carry gradient only."""
    k: int = 1
    """K: how many final sampling steps carry gradient, 1 … N-1 (1 = DRaFT-1; 0 = N - 1; N or more is refused: that
    is rocm-none). With k_min > 0, the largest K drawn."""
    k_min: int = 0
    """0: K = k every outer step (DRaFT-K). > 0: AlignProp's randomised truncation, K drawn uniformly from
    {k_min, …, k} every outer step (from the method's generator: the same in every process)."""
    n_lv: int = 1
    """DRaFT-LV: draws of the final step's input whose rewards are averaged (1 = off; the draws beyond the first
    re-draw the last noisy step's noise z, see the module docstring). Needs sampler.steps >= 2."""

    def resolve(self, name: str) -> None:
        super().resolve(name)
        at_least(f"{name}: k", self.k, 0)  # the last k sampling steps carry gradient (0: N - 1)
        if not 0 <= self.k_min <= (self.k or self.k_min):
            raise BenchError(f"{name}: k_min must be 0 (K fixed) or in 1 … k ({self.k}), got {self.k_min}")
        at_least(f"{name}: n_lv", self.n_lv, 1)  # 1: no extra draws

    def validate(self, name: str, sampler: SamplerConfig) -> None:
        super().validate(name, sampler)
        n = sampler.steps
        if n < 2:
            raise BenchError(f"{name}: truncation to K in 1 … N-1 steps needs sampler.steps >= 2, got {n}")
        if self.k >= n:
            raise BenchError(f"{name}: k = {self.k} >= sampler.steps = {n}: gradient through every step, that is "
                             f"rocm-none; K must be in 1 … {n - 1}")
        low, high = self.k_range(n)
        if self.k_min and low == high == 1:
            raise BenchError(f"{name}: K drawn from {{1}} at sampler.steps = {n} is DRaFT-1 (draft-k); AlignProp's "
                             f"random truncation needs sampler.steps >= 3")
        if not 1 <= low <= high:
            raise BenchError(f"{name}: k_min ({self.k_min}) is above N - 1 = {n - 1} at sampler.steps = {n}")

    def k_range(self, steps: int) -> tuple[int, int]:
        """(smallest, largest) K of an N = `steps` sampler: (k, k) for DRaFT-K, (k_min, k) for AlignProp; k = 0
        stands for N - 1."""
        high = self.k or steps - 1
        return (self.k_min or high), high

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        """ROCM's cost with the largest K, plus DRaFT-LV's extra final steps (a forward and a backward each)."""
        k = self.k_range(sampler.steps)[1]
        return self.batch_size * (self.sample_cost(sampler.steps, k) + 3 * (self.n_lv - 1))

    def resolved_knobs(self, latent_dims: int | None = None, steps: int | None = None) -> dict[str, Knob]:
        """ROCM's, and K's range for DRaFT-K; AlignProp's range of K is published, not a knob."""
        knobs = super().resolved_knobs(latent_dims, steps)
        if self.k_min:
            knobs.pop("k")
        return knobs


class Draft(ROCM):
    """DRaFT-K / AlignProp: reward gradients through the last K sampling steps only (ROCM truncated)."""

    Config = DraftConfig
    STATE_ATTRS = ("k_now",)  # K of the last outer step (logged by score); saved in checkpoints

    def __init__(self, name, cfg: DraftConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.k_low, self.k_high = cfg.k_range(sampler.steps)  # 1 <= K <= N - 1 (validated)
        self.k_now = self.k_high  # K of the current outer step (logged)

    def grad_steps(self) -> int:
        if self.k_low < self.k_high:  # AlignProp: uniform on {k_low, …, k_high}
            self.k_now = int(torch.randint(self.k_low, self.k_high + 1, (), generator=self.generator))
        return self.k_now

    def score(self, traj: Trajectory) -> tuple[torch.Tensor, dict[str, float]]:
        reward = self.reward(traj.images, traj.prompts)  # (b,) the trajectory's own images: draw 0
        logs = {"k": float(self.k_now)}
        if self.cfg.n_lv == 1:
            return reward, logs
        extra = self._extra_draws(traj)  # (n_lv - 1, b)
        return torch.cat([reward[None], extra]).mean(0), logs | {"reward_traj": reward.mean().item()}

    def _extra_draws(self, traj: Trajectory) -> torch.Tensor:
        """Rewards (n_lv - 1, b) of the final step from re-drawn inputs x^{(i)} = μ + σ z_i of the last noisy step."""
        n, b, k = self.cfg.n_lv - 1, len(traj.prompts), traj.num_noisy_steps - 1
        # Noise for the global batch, then this process's rows: every process's generator stays in step.
        z = torch.randn((n, self.cfg.batch_size, *self.policy.latent_shape), generator=self.generator)
        z = z[:, self.dist.rows(self.cfg.batch_size)].to(traj.means)  # (n, b, C, H, W)
        x = (traj.means[:, k][None] + traj.schedule.sigmas[k].item() * z).flatten(0, 1)  # (n b, C, H, W), draw-major
        x0 = self.policy.consistency(x, traj.schedule.timesteps[-1], traj.cond.repeat(n, 1, 1),
                                     self.sampler.guidance_scale)
        images = self.policy.decode(x0)  # (n b, 3, H', W')
        self.policy.meter.charge_images(n * b)
        return self.reward(images, traj.prompts * n).view(n, b)
