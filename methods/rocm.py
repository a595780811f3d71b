"""ROCM (arXiv 2503.06171): first-order reward optimisation on a consistency model, regularised by an
f-divergence between the trained and the frozen model's per-step Gaussian policies (docs/methods.md §2-3).

    maximise  E[ r(image_θ, c) ]  -  β · E[ Σ_{k} w_k · D_f( π_θ(·|x_k) ‖ π_ref(·|x_k) ) ]

The image is a differentiable function of θ through every sampling step (reparameterised sampling with
fixed noise, optionally per-step checkpointing), so the reward must be differentiable. Both policies at a step share
σ_k, so D_f depends only on δ_k = ‖μ_θ - μ_ref‖ / σ_k (bench/core/divergences.py). `divergence="none"` (β = 0)
is unregularised ROCM — full-trajectory DRaFT on an LCM (methods/draft.py truncates it to the last K steps:
DRaFT-K, AlignProp) — the ablation that shows reward hacking.

The sum runs over the N-1 noisy steps, the per-step policies the paper regularises. `final_step` adds the
final, deterministic step, read as a Gaussian at the last σ (bench/core/sampler.py final_step_gaussian; the same
measure evaluation's kl-to-base uses): off by default, as ROCM's objective has per-step policies only on the noisy
steps (docs/methods.md §3 gives the argument); kl-to-base measures the final step for every method either way.

Logged per step besides the reward and the loss: `per_dim` (the resolved form of δ, 0 or 1) and, when
regularised, `delta_k0`, `delta_k1`, … (the batch mean of the whole-vector δ_k at each noisy step k; `delta_final`
with final_step), so a regulariser that saturates (a bounded divergence past δ of a few units) or explodes (chi2)
is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import (
    DIVERGENCES,
    STEP_WEIGHT_MODES,
    BenchError,
    Dist,
    Knob,
    Method,
    SamplerConfig,
    TrainConfig,
    Trajectory,
    at_least,
    final_step_gaussian,
    gaussian_divergence,
    one_of,
    per_dim_default,
    sample,
    step_weights,
    whole_vector_delta,
)

PER_DIM_SETTINGS = {"auto": None, "true": True, "false": False}


@dataclass
class ROCMConfig(TrainConfig):
    """ROCM's fields; one config serves every divergence entry of the registry (bench/registry/catalog.py).

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log) and beta, relative (RELATIVE_KNOBS): 0.1x to 10x the entry's
    β, log-uniform, because β's scale differs by orders of magnitude between divergences and between the
    whole-vector and per-dimension forms. When the per-dimension form is in effect and the sweep passes the
    latent size D, the range is centred on D x the entry's β instead (the small-δ match: per-dim values are
    ~1/D of whole-vector ones); this is where a sweep starts, not a tuned value. rocm-none's β is fixed at 0,
    so it is swept on lr alone.
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {"beta": Knob(0.1, 10.0, log=True)}
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset({"beta"})

    divergence: str = "kl"
    """f-divergence between per-step policies: kl, js, hellinger, tv, chi2, or none (β must be 0)."""
    beta: float = 1.0
    """Regularisation weight β (scales differ per divergence and per form of δ: always read it next to both)."""
    per_dim: str = "auto"
    """"false": δ over the whole latent vector; "true": per-dimension δ_i, divergence averaged over dimensions
    (values ~1/D as large for D dimensions, so β must be swept per form); "auto": per-dimension for the
    bounded divergences (js, hellinger, tv) on latents of more than 1024 dimensions, where the whole-vector
    form saturates after a tiny drift (real 4x64x64 latents), whole-vector otherwise (the testbed's 768)."""
    step_weighting: str = "uniform"
    """Step weights w_k: "uniform", or "normalized" (cancels KL's ᾱ/(1-ᾱ) factor so every step counts alike)."""
    detach_state: bool = False
    """Detach the state fed to the reference model in the regulariser (False: gradients flow through it, the
    pathwise gradient of the objective; docs/protocol.md §3 gives what either costs)."""
    final_step: bool = False
    """Also regularise the final deterministic step, read as a Gaussian at the last σ (one more reference forward
    per sample, and its backward; docs/methods.md §3)."""
    lr: float = 3e-3

    def resolve(self, name: str) -> None:
        super().resolve(name)
        one_of("divergence", self.divergence, [*DIVERGENCES, "none"])
        if self.divergence == "none" and self.beta != 0:
            raise BenchError(f"{name}: divergence 'none' needs beta = 0, got {self.beta}")
        at_least(f"{name}: beta", self.beta, 0)
        one_of(f"{name}.per_dim setting", str(self.per_dim).lower(), PER_DIM_SETTINGS)
        one_of("step weight mode", self.step_weighting, STEP_WEIGHT_MODES)

    def uses_per_dim(self, latent_dims: int | None) -> bool:
        """The resolved form of δ on a latent of `latent_dims` dimensions ("auto" with None: whole-vector)."""
        setting = PER_DIM_SETTINGS.get(str(self.per_dim).lower())
        if setting is None:
            return latent_dims is not None and per_dim_default(self.divergence, latent_dims)
        return setting

    @property
    def regularised(self) -> bool:
        return self.divergence != "none" and self.beta > 0

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        return self.batch_size * self.sample_cost(sampler.steps, sampler.steps)

    def sample_cost(self, n: int, k: int) -> int:
        """NFE per sample of one reparameterised sampling of n steps whose last k carry gradient (1 <= k <= n), its
        regulariser and the backward. Forward: the n policy steps, the reference at the k - 1 noisy steps with
        gradient (and at the final step's input with final_step). Backward: the policy's k steps, and the
        reference's wherever its input depends on θ (not the first step with gradient, whose input is constant;
        none with detach_state)."""
        reference = (k - 1 + self.final_step) if self.regularised else 0
        through = self.regularised and not self.detach_state and k >= 2  # the reference's inputs carry gradient
        ref_backward = (k - 2 + self.final_step) if through else 0
        return n + reference + 2 * (k + ref_backward)

    def knob_scale(self, field: str, latent_dims: int | None) -> float:
        scale = super().knob_scale(field, latent_dims)
        if field == "beta" and latent_dims is not None and self.uses_per_dim(latent_dims):
            return scale * latent_dims
        return scale


def regulariser(traj: Trajectory, cfg: ROCMConfig, per_dim: bool, first_step: int = 0) -> tuple[torch.Tensor, dict]:
    """Σ_{k >= first_step} w_k D_f(π_θ(·|x_k) ‖ π_ref(·|x_k)) over the noisy steps k of `traj` (B,), plus the final
    step's with cfg.final_step, and the logs delta_k{k} (delta_final): the batch mean of the whole-vector δ at each,
    whatever form the divergence uses. `first_step`: the first noisy step whose reference mean was evaluated (DRaFT's
    truncated gradients evaluate fewer). With the final step, step_weighting's weights run over N steps, the final
    one at ᾱ_f (its "normalized" weight equals the last noisy step's)."""
    divergence = traj.means.new_zeros(traj.means.shape[0])  # (B,)
    deltas = {}
    alphas = traj.schedule.alpha_bar_prev  # (N-1,)
    if cfg.final_step:
        alphas = torch.cat([alphas, traj.schedule.alpha_bar_final[None]])  # (N,)
    weights = step_weights(alphas, cfg.step_weighting).to(divergence)
    for k in range(first_step, traj.num_noisy_steps):
        mean, ref, sigma = traj.means[:, k], traj.ref_means[:, k], traj.schedule.sigmas[k].item()
        d = gaussian_divergence(cfg.divergence, mean, ref, sigma, per_dim=per_dim)  # (B,)
        divergence = divergence + weights[k] * d
        deltas[f"delta_k{k}"] = whole_vector_delta(mean, ref, sigma).mean().item()
    if cfg.final_step:
        mean, ref, sigma = final_step_gaussian(traj)  # (B, C, H, W) twice, σ_f
        divergence = divergence + weights[-1] * gaussian_divergence(cfg.divergence, mean, ref, sigma, per_dim=per_dim)
        deltas["delta_final"] = whole_vector_delta(mean, ref, sigma).mean().item()
    return divergence, deltas


class ROCM(Method):
    """ROCM: reward back-propagated through every LCM step, with an f-divergence to the frozen model.

    Two overridable pieces (DRaFT-K and AlignProp, methods/draft.py, change only these): `grad_steps()`, how many
    final sampling steps carry gradient this step (None: all), and `score(traj)`, the differentiable reward.
    """

    Config = ROCMConfig
    first_order = True

    def __init__(self, name, cfg: ROCMConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.regularised = cfg.regularised
        self.per_dim = cfg.uses_per_dim(math.prod(policy.latent_shape))

    def grad_steps(self) -> int | None:
        """How many final sampling steps carry gradient this outer step: None, every one (ROCM)."""
        return None

    def score(self, traj: Trajectory) -> tuple[torch.Tensor, dict[str, float]]:
        """The reward to maximise (B,), differentiable w.r.t. θ, and extra logs (process-local means)."""
        return self.reward(traj.images, traj.prompts), {}

    def step_parts(self) -> int:
        return self.batch_parts(self.cfg.batch_size)  # the cost is per sample: a smaller batch, a smaller step

    def step(self, fraction: float = 1.0) -> dict[str, float]:
        cfg = self.cfg
        batch = self.partial_batch(cfg.batch_size, fraction)  # cfg.batch_size but for a time budget's last step
        rows = self.dist.rows(batch)  # this process's share of the global batch (all of it in one process)
        grad_steps = self.grad_steps()  # drawn before the prompts: the same generator calls in every process
        traj = sample(self.policy, self.draw_prompts(batch), self.sampler, self.generator, grad=True,
                      with_reference=self.regularised, detach_reference_state=cfg.detach_state, rows=rows,
                      grad_steps=grad_steps, final_reference=self.regularised and cfg.final_step)
        reward, extra = self.score(traj)  # (B,), differentiable w.r.t. θ through every step that carries gradient
        divergence, deltas = torch.zeros_like(reward), {}  # (B,) Σ_k w_k D_f at the visited states
        if self.regularised:
            first = max(len(traj.schedule.timesteps) - grad_steps, 0) if grad_steps else 0  # first step with gradient
            divergence, deltas = regulariser(traj, cfg, self.per_dim, first)
        loss = -(reward - cfg.beta * divergence).mean()
        self.backward(loss, self.dist.share(len(rows), batch))
        grad_norm = self.update()
        self.steps_done += 1
        logs = self.dist.mean({"reward_mean": reward.mean().item(), "divergence": divergence.mean().item(),
                               "loss": loss.item(), **deltas, **extra})
        return logs | {"grad_norm": grad_norm, "per_dim": float(self.per_dim)}
