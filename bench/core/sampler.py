"""The one LCM multistep sampler every method uses (docs/methods.md §1), read as a Gaussian policy.

    x_{τ_N} ~ N(0, I)
    for n = N … 1:   x̂_0 = f_θ(x_{τ_n}, τ_n, c, w)
                     n > 1:  x_{τ_{n-1}} = sqrt(ᾱ_{n-1}) x̂_0 + σ_n z_n,   σ_n² = 1 - ᾱ_{n-1},  z_n ~ N(0, I)
    image = decode(x̂_0)

This is `LCMScheduler.step` (the test suite checks it step for step). Each noisy step k = 0 … N-2 (k counts
from the first, noisiest step) is the policy π_θ(x_{k+1} | x_k) = N(sqrt(ᾱ_prev) f_θ(x_k), σ_k² I); the last
step is deterministic. Stored trajectories index states as `states[:, k]` = the input of step k, so
`states[:, k + 1]` is the action of noisy step k.

The final step has no noise, so no Gaussian policy of its own; where a divergence must cover it (evaluation's
kl-to-base, ROCM's `final_step`), it is read as the Gaussian step it would be at the last σ (`final_step_gaussian`):
N(sqrt(ᾱ_f) x̂_0, (1 - ᾱ_f) I), ᾱ_f the ᾱ of its input's timestep τ_1 — the noise level the last noisy step
produced, so the final x̂_0 is weighed as the last noisy step's x̂_0 is (docs/methods.md §1).

One implementation gives: sampling without gradients (storing states, means, σ, log-probs: policy-gradient
methods); sampling with gradients by reparameterisation (fixed x_{τ_N} and z_n) with per-step gradient
checkpointing (its recomputations charged as such: bench/core/compute.py `recomputing`), optionally with the
reference model's mean at every visited state and its x̂_0 at the final step's input (ROCM); truncated gradients,
where only the last K steps carry gradient (DRaFT-K, AlignProp), and trajectories that stop early at step j,
whose x̂_0 = f_θ(x_j, τ_j) ends them (ReFL); re-scoring a stored step under the current parameters
(`step_log_prob`); and the policy's or the reference's mean at a stored state (`step_mean`, `mean_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from bench.core.errors import BenchError
from bench.core.policy import Policy


@dataclass
class SamplerConfig:
    """How images are drawn; shared by every method and written into every result."""

    steps: int = 4
    """LCM sampling steps N (the policy has N-1 stochastic steps)."""
    guidance_scale: float = 8.0
    """LCM guidance scale w, fed through the guidance embedding (no classifier-free second pass)."""
    logprob_reduction: str = "mean"
    """Reduce per-dimension Gaussian log-densities by "mean" (RLCM/DDPO) or "sum" (the exact density)."""
    checkpointing: bool = True
    """Per-step gradient checkpointing when sampling with gradients: memory flat in N, for one more forward of
    each checkpointed step during backward, counted as recomputation (`nfe_recompute`), not in count budgets.
    Models declare their own default (bench/registry/catalog.py MODEL_DEFAULTS: off for tiny and the testbed,
    where a step fits in memory; on for real models); on for a model that declares none."""
    original_inference_steps: int = 50
    """LCMScheduler's distillation schedule length the N timesteps are taken from."""


@dataclass
class Schedule:
    """The timesteps of one N-step sampling and the noise levels of its N-1 stochastic steps."""

    timesteps: list[int]  # (N,) τ_N > … > τ_1
    alpha_bar_prev: torch.Tensor  # (N-1,) ᾱ of the state each noisy step produces
    sigmas: torch.Tensor  # (N-1,) σ_k = sqrt(1 - ᾱ_prev)
    alpha_bar_final: torch.Tensor  # () ᾱ at the final step's timestep τ_1 (= alpha_bar_prev[-1] when N >= 2)


def make_schedule(policy: Policy, cfg: SamplerConfig) -> Schedule:
    if cfg.steps < 1:
        raise BenchError(f"sampler.steps must be >= 1, got {cfg.steps}")
    sched = policy.scheduler
    sched.set_timesteps(cfg.steps, original_inference_steps=cfg.original_inference_steps)
    ts = [int(t) for t in sched.timesteps]
    a_prev = sched.alphas_cumprod[ts[1:]].float() if len(ts) > 1 else torch.zeros(0)
    return Schedule(ts, a_prev, (1 - a_prev).sqrt(), sched.alphas_cumprod[ts[-1]].float())


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor | float,
                      reduction: str = "mean") -> torch.Tensor:
    """log N(x; mean, σ² I) for (B, *dims) tensors -> (B,), per-dimension log-densities reduced by mean or sum."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    lp = -((x - mean) ** 2) / (2 * sigma**2) - torch.log(sigma) - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    dims = tuple(range(1, x.ndim))
    if reduction == "mean":
        return lp.mean(dim=dims)
    if reduction == "sum":
        return lp.sum(dim=dims)
    raise BenchError(f"sampler.logprob_reduction must be 'mean' or 'sum', got '{reduction}'")


@dataclass
class Trajectory:
    """One batch of sampled trajectories. Shapes: B samples, N steps, latent (C, H, W)."""

    prompts: list[str]
    cond: torch.Tensor  # (B, L, D) text embeddings
    schedule: Schedule
    states: torch.Tensor  # (B, N, C, H, W): states[:, k] is the input of step k; states[:, 0] = x_{τ_N}
    noise: torch.Tensor  # (B, N-1, C, H, W): z of each noisy step
    means: torch.Tensor  # (B, N-1, C, H, W): the policy's mean at each noisy step
    log_probs: torch.Tensor  # (B, N-1): log π(states[:, k+1] | states[:, k])
    x0: torch.Tensor  # (B, C, H, W): the final x̂_0
    images: torch.Tensor  # (B, 3, H', W') in [0, 1]
    ref_means: torch.Tensor | None = None  # (B, N-1, C, H, W): the reference model's mean at the same states
    ref_x0: torch.Tensor | None = None  # (B, C, H, W): the reference's x̂_0 at the final step's input (final_reference)

    @property
    def num_noisy_steps(self) -> int:
        return len(self.schedule.timesteps) - 1

    def select(self, idx: torch.Tensor | slice) -> "Trajectory":
        """The sub-batch `idx` of every per-sample field (for minibatches)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        prompts = [self.prompts[i] for i in range(len(self.prompts))[idx]] if isinstance(idx, slice) else \
            [self.prompts[i] for i in idx.tolist()]
        return Trajectory(prompts, pick(self.cond), self.schedule, pick(self.states), pick(self.noise),
                          pick(self.means), pick(self.log_probs), pick(self.x0), pick(self.images), pick(self.ref_means),
                          pick(self.ref_x0))


def final_step_gaussian(traj: Trajectory) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The final deterministic step read as a Gaussian at the last σ (module docstring): its mean under the policy
    and under the reference, sqrt(ᾱ_f) x̂_0 and sqrt(ᾱ_f) x̂_0,ref, both (B, C, H, W), and σ_f = sqrt(1 - ᾱ_f), so
    that bench/core/divergences.py gives its divergence as for a noisy step. Needs `ref_x0` (final_reference)."""
    if traj.ref_x0 is None:
        raise BenchError("the final step's divergence needs the reference's x̂_0: sample with final_reference=True")
    a = traj.schedule.alpha_bar_final.to(traj.x0)
    return a.sqrt() * traj.x0, a.sqrt() * traj.ref_x0, float((1 - a).sqrt())


class _Recomputed:
    """A checkpointed step's function: its first call is the forward the algorithm needs; any later call is
    torch.utils.checkpoint redoing it during backward, to save memory, and is charged as recomputation."""

    def __init__(self, fn, policy: Policy) -> None:
        self.fn, self.policy, self.calls = fn, policy, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls == 1:
            return self.fn(*args)
        with self.policy.meter.recomputing():
            return self.fn(*args)


def _step_mean(policy: Policy, x: torch.Tensor, t: int, cond: torch.Tensor, w: float, a_prev: torch.Tensor,
               reference: bool) -> torch.Tensor:
    """sqrt(ᾱ_prev) · f(x, t) under the policy or the reference; `a_prev` = 1 on the final step gives x̂_0."""
    if reference:
        with policy.reference():
            return a_prev.sqrt() * policy.consistency(x, t, cond, w)
    return a_prev.sqrt() * policy.consistency(x, t, cond, w)


def sample(policy: Policy, prompts: list[str], cfg: SamplerConfig, generator: torch.Generator, *,
           grad: bool = False, with_reference: bool = False, detach_reference_state: bool = False,
           final_reference: bool = False, init: torch.Tensor | None = None, rows: torch.Tensor | None = None, grad_steps: int | None = None,
           last_step: int | None = None) -> Trajectory:
    """Draw one trajectory per prompt.

    grad=False: no graph is kept (policy-gradient methods store the trajectory and re-score it later).
    grad=True: reparameterised — the noise is fixed, so `images` is a differentiable function of θ through
    every step; each step is checkpointed if `cfg.checkpointing`, so memory does not grow with N (its forward,
    redone during backward, is charged as recomputation).
    with_reference: also the reference model's mean at every visited state (ROCM's regulariser); with
    `detach_reference_state` the state fed to the reference carries no gradient.
    final_reference: also the reference's x̂_0 at the final step's input (`ref_x0`: kl-to-base, ROCM's final_step);
    its input is detached likewise with `detach_reference_state`.
    init: the initial noise x_{τ_N} (B, C, H, W) to start from (D3PO's pairs share it); drawn if None.
    rows: data parallelism (bench/core/distributed.py): `prompts` and `init` are the global batch, all of its noise is
    drawn (keeping every process's generator in step) and only these rows are sampled.
    grad_steps (with grad=True): only the last K = grad_steps steps run carry gradient (DRaFT-K; None or K >= the
    steps run: all of them). The steps before run without gradient (no graph, no checkpoint), so the state
    entering the last K steps is detached; with_reference then evaluates the reference only on those K steps (a
    divergence where no gradient flows cannot regularise) and `ref_means` is NaN on the steps before.
    last_step: stop after step j = last_step (0 … N-1, counted from the first, noisiest step), whose
    x̂_0 = f_θ(x_j, τ_j) ends the trajectory as the final step's does (ReFL); the Trajectory's schedule is then
    the first j + 1 timesteps. All N-1 steps' noise is still drawn, so the generator moves on alike for every j.
    """
    sched = make_schedule(policy, cfg)
    dev, n = policy.device, len(prompts)
    x = torch.randn((n, *policy.latent_shape), generator=generator) if init is None else init
    noise = torch.randn((n, max(len(sched.timesteps) - 1, 0), *policy.latent_shape), generator=generator)
    if last_step is not None:
        if not 0 <= last_step < len(sched.timesteps):
            raise BenchError(f"last_step must be in 0 … {len(sched.timesteps) - 1} (sampler.steps - 1), "
                             f"got {last_step}")
        sched = Schedule(sched.timesteps[:last_step + 1], sched.alpha_bar_prev[:last_step], sched.sigmas[:last_step],
                         policy.scheduler.alphas_cumprod[sched.timesteps[last_step]].float())
        noise = noise[:, :last_step]
    if grad_steps is not None and grad_steps < 1:
        raise BenchError(f"grad_steps must be >= 1 (None: every step), got {grad_steps}")
    first_grad = max(len(sched.timesteps) - grad_steps, 0) if grad_steps is not None else 0  # first step with grad
    if rows is not None:
        prompts, x, noise = [prompts[i] for i in rows.tolist()], x[rows], noise[rows]
    x, noise, b = x.to(dev), noise.to(dev), len(prompts)
    cond = policy.encode_prompts(prompts)
    states, means, ref_means, log_probs, ref_x0 = [x], [], [], [], None
    ones = torch.ones((), device=dev)
    # Arguments are passed, not captured: a checkpointed step is recomputed during backward, after the loop
    # variables have moved on. The final step is never checkpointed: backward starts there at once, so
    # recomputing it would only cost time (its activations are one step's, the same for any N).
    direct = lambda fn, *a: fn(*a)  # noqa: E731
    if grad and cfg.checkpointing:
        checkpointed = lambda fn, *a: checkpoint(_Recomputed(fn, policy), *a, use_reentrant=False)  # noqa: E731
    else:
        checkpointed = direct
    with torch.set_grad_enabled(grad):  # restores the caller's grad mode on exit, whatever the steps set below
        for k, t in enumerate(sched.timesteps):
            last = k == len(sched.timesteps) - 1
            tracked = k >= first_grad  # this step carries gradient (every step unless grad_steps truncates)
            torch.set_grad_enabled(grad and tracked)
            ckpt = checkpointed if tracked else direct
            a_prev = ones if last else sched.alpha_bar_prev[k].to(dev)
            mean = (direct if last else ckpt)(_step_mean, policy, x, t, cond, cfg.guidance_scale, a_prev, False)
            if last:
                x0 = mean
                if final_reference:  # the final step is never checkpointed, its reference neither
                    x_ref = x.detach() if detach_reference_state else x
                    ref_x0 = _step_mean(policy, x_ref, t, cond, cfg.guidance_scale, a_prev, True)
                break
            if with_reference and not tracked:
                ref_means.append(torch.full_like(mean, float("nan")))  # not evaluated: see grad_steps
            elif with_reference:
                x_ref = x.detach() if detach_reference_state else x
                ref_means.append(ckpt(_step_mean, policy, x_ref, t, cond, cfg.guidance_scale, a_prev, True))
            sigma = sched.sigmas[k].to(dev)
            x = mean + sigma * noise[:, k]
            means.append(mean)
            log_probs.append(gaussian_log_prob(x.detach(), mean.detach(), sigma, cfg.logprob_reduction))
            states.append(x)
        images = policy.decode(x0)
    policy.meter.charge_images(b)
    stack = lambda xs, like: torch.stack(xs, 1) if xs else like.new_zeros((b, 0, *like.shape[1:]))  # noqa: E731
    return Trajectory(prompts=list(prompts), cond=cond, schedule=sched, states=stack(states, x), noise=noise,
                      means=stack(means, x), log_probs=stack(log_probs, x.new_zeros(b)), x0=x0, images=images,
                      ref_means=stack(ref_means, x) if with_reference else None, ref_x0=ref_x0)


def step_log_prob(policy: Policy, traj: Trajectory, k: int, cfg: SamplerConfig, reference: bool = False) -> torch.Tensor:
    """Re-score stored noisy step k under the current parameters (or the reference): (B,) with gradient."""
    mean = step_mean(policy, traj, k, cfg, reference)
    return gaussian_log_prob(traj.states[:, k + 1].detach(), mean, traj.schedule.sigmas[k].to(mean.device),
                             cfg.logprob_reduction)


def step_mean(policy: Policy, traj: Trajectory, k: int, cfg: SamplerConfig, reference: bool = False) -> torch.Tensor:
    """The mean of noisy step k at its stored state, under the policy or the reference model: (B, C, H, W)."""
    return mean_at(policy, traj.states[:, k], traj.schedule, k, traj.cond, cfg, reference)


def mean_at(policy: Policy, x: torch.Tensor, schedule: Schedule, k: int, cond: torch.Tensor, cfg: SamplerConfig,
            reference: bool = False) -> torch.Tensor:
    """The mean of noisy step k of `schedule` at states x (B, C, H, W) with text embeddings cond (B, L, D), under
    the policy or the reference: (B, C, H, W), with gradient w.r.t. θ (x is detached). For single stored
    transitions that come from different trajectories (DPOK's replay)."""
    a_prev = schedule.alpha_bar_prev[k].to(policy.device)
    return _step_mean(policy, x.detach(), schedule.timesteps[k], cond, cfg.guidance_scale, a_prev, reference)
