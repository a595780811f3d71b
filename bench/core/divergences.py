"""f-divergences between the trained and the reference per-step Gaussian policies (docs/methods.md section 2).

On every noisy step of the LCM sampler both policies are Gaussians with the same covariance,
N(mu_theta, sigma^2 I) and N(mu_ref, sigma^2 I). Every f-divergence between such a pair depends only on
delta = ||mu_theta - mu_ref|| / sigma and equals the divergence between N(0, 1) and N(delta, 1).

The functions below take d2 = delta^2, not delta: training starts at delta = 0 (the LoRA adapters start at
zero), where sqrt(d2) has an infinite derivative. Every function here has a finite derivative w.r.t. d2 at
d2 = 0, so the gradient w.r.t. the means (d d2 / d mu = 2 (mu - mu_ref) / sigma^2 = 0 there) is exactly zero,
never NaN. All of them are symmetric in the two policies, so the direction D(theta || ref) vs D(ref || theta)
does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from numpy.polynomial.hermite_e import hermegauss
from torch import Tensor

from bench.core.errors import unknown_name

# chi2 = exp(d2) - 1 is exact up to this d2 and continues linearly above it (the first-order Taylor expansion of
# exp at T: value and slope continuous). Why 10: exp(10) = 2.2e4 already dwarfs any reward, so exactness past it
# buys nothing, while exp's growth does harm: the gradient w.r.t. the means is beta exp(d2) 2 (mu - mu_ref) / sigma^2,
# and once back-propagation multiplies it into per-parameter gradients above ~1e19 their squares overflow float32
# in the gradient norm ("non-finite gradient" at d2 ~ 35 on the tiny model). With the linear continuation the
# pull back stays exp(10) x (d2's own gradient), a KL with a large weight, at any drift.
CHI2_LINEAR_D2 = 10.0

# Divergences bounded above (js by ln 2, hellinger by 2, tv by 1): with the whole-vector delta they saturate, and
# stop pulling back, once delta is a few units, which a latent of D dimensions reaches when each coordinate drifts
# by only ~1/sqrt(D) of sigma. `per_dim_default` therefore picks the per-dimension form for them on latents larger
# than PER_DIM_AUTO_MAX_DIMS. Why 1024: the testbed's 3x16x16 = 768 pixel latent (where their betas were matched,
# whole-vector) keeps the whole-vector form; real 4x64x64 = 16384 SD latents get the per-dimension form.
BOUNDED_DIVERGENCES = ("js", "hellinger", "tv")
PER_DIM_AUTO_MAX_DIMS = 1024

# Below this d2 the Jensen-Shannon divergence uses its Taylor series; the quadrature's gradient w.r.t. d2
# divides by delta and would lose precision as delta -> 0. Truncation error there is < 1e-11 (relative 1e-8).
JS_SERIES_MAX_D2 = 1e-2

# Probabilists' Gauss-Hermite rule (weight exp(-x^2/2)), normalised so that sum(w g(x)) ~ E_{x~N(0,1)}[g(x)].
# 64 nodes: absolute error of JS below 1e-6 for every delta (exact to 1e-15 for delta <= 2).
_GH_NODES_NP, _GH_WEIGHTS_NP = hermegauss(64)
_GH_NODES = torch.from_numpy(_GH_NODES_NP)  # (64,) float64
_GH_WEIGHTS = torch.from_numpy(_GH_WEIGHTS_NP / _GH_WEIGHTS_NP.sum())  # (64,) float64, sums to 1

STEP_WEIGHT_MODES = ("uniform", "normalized")


def _safe_delta(d2: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, delta) with delta = sqrt(d2) where d2 > 0 and 1 elsewhere, so sqrt's gradient stays finite.

    Callers must select a value that does not depend on delta where `positive` is False; torch.where then
    routes a zero gradient to the unused branch instead of 0 * inf = NaN.
    """
    positive = d2 > 0
    return positive, torch.sqrt(torch.where(positive, d2, torch.ones_like(d2)))


def kl(d2: Tensor) -> Tensor:
    """Kullback-Leibler, f(u) = u log u: delta^2 / 2 (forward and reverse KL agree for equal variances)."""
    return d2 / 2


def hellinger(d2: Tensor) -> Tensor:
    """Squared Hellinger, f(u) = (sqrt(u) - 1)^2: 2 (1 - exp(-delta^2 / 8)), bounded by 2."""
    # expm1 keeps full relative precision for small d2 (1 - exp(-x) would cancel).
    return -2 * torch.expm1(-d2 / 8)


def tv(d2: Tensor) -> Tensor:
    """Total variation, f(u) = |u - 1| / 2: erf(delta / (2 sqrt 2)), bounded by 1.

    TV is a cone in the means at delta = 0 (it grows like delta / sqrt(2 pi)); its gradient there is taken
    to be zero (a valid subgradient).
    """
    positive, delta = _safe_delta(d2)
    return torch.where(positive, torch.erf(delta / (2 * math.sqrt(2))), torch.zeros_like(d2))


def js(d2: Tensor) -> Tensor:
    """Jensen-Shannon, f(u) = [u log u - (u + 1) log((u + 1) / 2)] / 2, bounded by ln 2.

    JS = ln 2 - E_{x~N(0,1)}[softplus(delta x - delta^2 / 2)] (the log-likelihood ratio of N(delta,1) to
    N(0,1) is delta x - delta^2 / 2). The expectation uses 64-node Gauss-Hermite quadrature, so it is an
    ordinary differentiable function of d2. For d2 < JS_SERIES_MAX_D2 the series
    d2/8 - d2^2/64 + d2^3/384 is used instead (exact gradient 1/8 at d2 = 0).
    Memory: one (*d2.shape, 64) intermediate.
    """
    # Quadrature in at least float32 (half precision cannot resolve ln 2 - E[...] for small delta).
    work = d2.to(torch.promote_types(d2.dtype, torch.float32))
    small = work < JS_SERIES_MAX_D2
    # The quadrature branch only sees d2 >= JS_SERIES_MAX_D2, so its sqrt is safe on both branches.
    d2_big = torch.where(small, torch.full_like(work, JS_SERIES_MAX_D2), work)
    delta = torch.sqrt(d2_big).unsqueeze(-1)  # (*shape, 1)
    nodes = _GH_NODES.to(work)  # (64,)
    weights = _GH_WEIGHTS.to(work)  # (64,)
    log_ratio = delta * nodes - d2_big.unsqueeze(-1) / 2  # (*shape, 64)
    quad = math.log(2) - (torch.nn.functional.softplus(log_ratio) * weights).sum(-1)  # (*shape,)
    # Quadrature error (< 1e-6) could push a saturated value a hair past the upper bound ln 2.
    quad = quad.clamp(max=math.log(2))
    d2_small = torch.where(small, work, torch.zeros_like(work))
    series = d2_small / 8 - d2_small**2 / 64 + d2_small**3 / 384
    return torch.where(small, series, quad).to(d2.dtype)


def chi2(d2: Tensor) -> Tensor:
    """Pearson chi-squared, f(u) = (u - 1)^2: exp(delta^2) - 1, linear in delta^2 above CHI2_LINEAR_D2.

    Exactly expm1(d2) for d2 <= T = CHI2_LINEAR_D2 (10); above it expm1(T) + exp(T) (d2 - T), the tangent of exp
    at T, so value and gradient are continuous, positive and finite for every finite d2 (no clamp: a drifted
    policy is always pulled back, with the gradient it had at T).
    """
    t = CHI2_LINEAR_D2
    exact = torch.expm1(d2.clamp(max=t))  # gradient 0 above T: torch.where below takes the other branch there
    tangent = math.expm1(t) + math.exp(t) * (d2 - t)
    return torch.where(d2 < t, exact, tangent)  # at T both agree; the tangent carries the slope exp(T)


DIVERGENCES: dict[str, Callable[[Tensor], Tensor]] = {
    "kl": kl,
    "js": js,
    "hellinger": hellinger,
    "tv": tv,
    "chi2": chi2,
}


def per_dim_default(name: str, dims: int) -> bool:
    """The per-dimension form for a bounded divergence on a latent of more than PER_DIM_AUTO_MAX_DIMS dims.

    Note the scales differ: for small delta per-dim values are ~1/dims of the whole-vector ones (f(d2) ~ c d2
    against mean_i f(d2_i) ~ c d2 / dims), so a beta chosen for one form is ~dims times too weak or strong for the
    other; beta must be swept for the form in use.
    """
    return name in BOUNDED_DIVERGENCES and dims > PER_DIM_AUTO_MAX_DIMS


def _scaled_sq_diff(mean: Tensor, mean_ref: Tensor, sigma: float | Tensor) -> Tensor:
    """(mean - mean_ref)^2 / sigma^2 flattened per sample: (B, D), in at least float32 (a sum of 16k squares in
    bf16 is meaningless). mean, mean_ref: (B, *dims); sigma: a float or a (B,) tensor (one sigma per sample)."""
    if mean.shape != mean_ref.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and mean_ref {tuple(mean_ref.shape)} differ in shape")
    dtype = torch.promote_types(mean.dtype, torch.float32)
    batch = mean.shape[0]
    diff = (mean.to(dtype) - mean_ref.to(dtype)).reshape(batch, -1)  # (B, D)
    if isinstance(sigma, Tensor) and sigma.numel() != 1:
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a float or a ({batch},) tensor, got {tuple(sigma.shape)}")
        var = sigma.to(dtype).reshape(batch, 1) ** 2  # (B, 1)
    else:
        var = torch.as_tensor(sigma, dtype=dtype, device=diff.device).reshape(1, 1) ** 2  # (1, 1)
    return diff**2 / var  # (B, D)


def gaussian_divergence(
    name: str,
    mean: Tensor,
    mean_ref: Tensor,
    sigma: float | Tensor,
    per_dim: bool = False,
) -> Tensor:
    """D_f(N(mean, sigma^2 I) || N(mean_ref, sigma^2 I)) per batch element, shape (B,).

    mean, mean_ref: (B, *dims); sigma: a float or a (B,) tensor (one sigma_n per sample's step).
    per_dim=False (default): d2 = sum over dims of (mean - mean_ref)^2 / sigma^2, value f(d2).
    per_dim=True: d2_i per dimension, value = mean over dims of f(d2_i) (keeps the bounded divergences from
    saturating on a 16k-dimensional latent; see per_dim_default for the scale this costs).
    Half-precision inputs are computed in float32.
    """
    if name not in DIVERGENCES:
        raise unknown_name("divergence", name, list(DIVERGENCES))
    d2 = _scaled_sq_diff(mean, mean_ref, sigma)  # (B, D)
    if per_dim:
        return DIVERGENCES[name](d2).mean(dim=1)
    return DIVERGENCES[name](d2.sum(dim=1))


def whole_vector_delta(mean: Tensor, mean_ref: Tensor, sigma: float | Tensor) -> Tensor:
    """delta = ||mean - mean_ref|| / sigma per sample, (B,), without gradient (for logging: a delta of a few
    units saturates the bounded divergences, whatever form the regulariser uses)."""
    with torch.no_grad():
        return _scaled_sq_diff(mean, mean_ref, sigma).sum(dim=1).sqrt()


def step_weights(alpha_bar_prev: Tensor, mode: str) -> Tensor:
    """Weights w_n of the N-1 noisy steps, shape (N-1,), given alpha_bar_{n-1} of each step, shape (N-1,).

    "uniform": all ones. "normalized": proportional to (1 - alpha_bar_prev) / alpha_bar_prev, scaled to mean 1.
    Why: with mu = sqrt(alpha_bar_prev) x0_hat and sigma^2 = 1 - alpha_bar_prev,
    delta^2 = alpha_bar_prev / (1 - alpha_bar_prev) * ||x0_theta - x0_ref||^2, a factor that spans ~250x over
    8 LCM steps; normalized weights cancel it, so for KL every step penalises the x0 difference equally.
    """
    if mode not in STEP_WEIGHT_MODES:
        raise unknown_name("step weight mode", mode, list(STEP_WEIGHT_MODES))
    alpha_bar_prev = alpha_bar_prev.to(torch.promote_types(alpha_bar_prev.dtype, torch.float32))
    if mode == "uniform":
        return torch.ones_like(alpha_bar_prev)
    if not bool(((alpha_bar_prev > 0) & (alpha_bar_prev < 1)).all()):
        raise ValueError("normalized step weights need 0 < alpha_bar_prev < 1 on every noisy step")
    weights = (1 - alpha_bar_prev) / alpha_bar_prev
    return weights / weights.mean()
