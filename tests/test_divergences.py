"""Tests of bench/core/divergences.py: closed forms, numerical integrals, Monte Carlo, gradients at delta = 0, chi2's
linear continuation, the per-dimension default; and ROCM on the tiny model (chi2 at huge drift, its logs)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import erf, xlogy
from scipy.stats import norm

from bench.core.divergences import (
    CHI2_LINEAR_D2,
    DIVERGENCES,
    JS_SERIES_MAX_D2,
    PER_DIM_AUTO_MAX_DIMS,
    chi2,
    gaussian_divergence,
    js,
    per_dim_default,
    step_weights,
    whole_vector_delta,
)
from bench.core.errors import BenchError

# The f of each divergence, as in docs/methods.md section 2 (numpy, u = likelihood ratio).
F_OF_U = {
    "kl": lambda u: xlogy(u, u),
    "js": lambda u: 0.5 * (xlogy(u, u) - (u + 1) * np.log((u + 1) / 2)),
    "hellinger": lambda u: (np.sqrt(u) - 1) ** 2,
    "tv": lambda u: 0.5 * np.abs(u - 1),
    "chi2": lambda u: (u - 1) ** 2,
}

# Closed forms as functions of delta (JS has none; it is checked against the integral only).
CLOSED_FORM = {
    "kl": lambda d: d**2 / 2,
    "hellinger": lambda d: 2 * (1 - math.exp(-(d**2) / 8)),
    "tv": lambda d: erf(d / (2 * math.sqrt(2))),
    "chi2": lambda d: math.expm1(d**2),
}

DELTAS = [0.0, 0.05, 0.3, 1.0, 2.0, 4.0]


def f_integral(name: str, delta: float) -> float:
    """D_f(P || Q) = int p(x) f(q(x)/p(x)) dx for P = N(0,1), Q = N(delta,1), by adaptive quadrature."""

    def integrand(x: float) -> float:
        return norm.pdf(x) * F_OF_U[name](math.exp(delta * x - delta**2 / 2))

    # Finite limits: the Gaussian weight is < 1e-190 beyond them and exp() stays finite inside.
    value, _ = quad(integrand, -30.0, 30.0 + delta, points=[delta / 2], epsabs=1e-13, epsrel=1e-11, limit=500)
    return value


def d2_tensor(delta: float) -> torch.Tensor:
    return torch.tensor(delta**2, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
@pytest.mark.parametrize("delta", DELTAS)
def test_closed_forms_match_formula_and_integral(name: str, delta: float) -> None:
    value = float(DIVERGENCES[name](d2_tensor(delta)))
    if name == "chi2" and delta**2 > CHI2_LINEAR_D2:  # the linear continuation (tested further below)
        t = CHI2_LINEAR_D2
        assert value == pytest.approx(math.expm1(t) + math.exp(t) * (delta**2 - t), rel=1e-12)
        return
    assert value == pytest.approx(CLOSED_FORM[name](delta), rel=1e-12, abs=1e-14)
    assert value == pytest.approx(f_integral(name, delta), rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("delta", DELTAS + [0.1, 6.0, 8.0, 12.0])
def test_js_matches_integral(delta: float) -> None:
    # 64-node Gauss-Hermite: ~1e-15 for delta <= 2, < 1e-6 beyond (the integrand develops a kink).
    assert float(js(d2_tensor(delta))) == pytest.approx(f_integral("js", delta), abs=1e-6, rel=1e-9)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_one_dim_monte_carlo(name: str) -> None:
    delta = 0.5 if name == "chi2" else 1.0  # chi2's estimator has variance exp(6 delta^2): keep it tame
    x = np.random.default_rng(0).standard_normal(200_000)  # x ~ P = N(0, 1)
    samples = F_OF_U[name](np.exp(delta * x - delta**2 / 2))  # f(q/p) with Q = N(delta, 1)
    stderr = samples.std() / math.sqrt(samples.size)
    assert abs(samples.mean() - float(DIVERGENCES[name](d2_tensor(delta)))) < 5 * stderr


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_whole_vector_monte_carlo_five_dims(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    sigma = 0.7
    mean_ref = torch.randn(5, generator=gen, dtype=torch.float64)
    offset = torch.randn(5, generator=gen, dtype=torch.float64)
    mean = mean_ref + offset / offset.norm() * 0.6 * sigma  # delta = 0.6
    x = mean_ref + sigma * torch.randn(200_000, 5, generator=gen, dtype=torch.float64)  # (S, 5) ~ N(ref, s^2 I)
    log_u = (((x - mean_ref) ** 2).sum(1) - ((x - mean) ** 2).sum(1)) / (2 * sigma**2)  # log q/p, (S,)
    samples = F_OF_U[name](log_u.exp().numpy())
    stderr = samples.std() / math.sqrt(samples.size)
    value = gaussian_divergence(name, mean[None], mean_ref[None], sigma)  # (1,)
    assert value.shape == (1,)
    assert abs(samples.mean() - float(value[0])) < 5 * stderr


def test_kl_equals_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(2)
    mean = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    mean_ref = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)  # (B,)
    scale = sigma.reshape(3, 1, 1).expand(3, 2, 4)
    p = torch.distributions.Independent(torch.distributions.Normal(mean, scale), 2)
    q = torch.distributions.Independent(torch.distributions.Normal(mean_ref, scale), 2)
    expected = torch.distributions.kl_divergence(p, q)  # (3,)
    torch.testing.assert_close(gaussian_divergence("kl", mean, mean_ref, sigma), expected)


def test_js_bounded_monotone_and_continuous_at_series_switch() -> None:
    values = js(torch.linspace(0, 400, 4001, dtype=torch.float64))
    assert float(values.min()) >= 0 and float(values.max()) <= math.log(2)
    assert float(values.diff().min()) >= -1e-9
    assert float(values[-1]) == pytest.approx(math.log(2), abs=1e-9)
    below, above = js(torch.tensor([JS_SERIES_MAX_D2 * (1 - 1e-9), JS_SERIES_MAX_D2], dtype=torch.float64))
    assert float(below) == pytest.approx(float(above), rel=1e-8)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_per_dim_is_mean_of_one_dim_values(name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    mean_ref = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    sigma = 0.8
    got = gaussian_divergence(name, mean, mean_ref, sigma, per_dim=True)  # (3,)
    expected = torch.stack(
        [
            torch.stack([DIVERGENCES[name](d2_tensor(float(d) / sigma)) for d in (m - r).flatten()]).mean()
            for m, r in zip(mean, mean_ref, strict=True)
        ]
    )
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_at_zero_delta_is_zero(name: str, per_dim: bool, dtype: torch.dtype) -> None:
    # Training starts exactly here: LoRA at zero makes the trained and reference means identical.
    mean_ref = torch.randn(2, 3, 4, dtype=dtype)
    mean = mean_ref.clone().requires_grad_(True)
    value = gaussian_divergence(name, mean, mean_ref, torch.tensor([0.5, 1.0], dtype=dtype), per_dim=per_dim)
    assert torch.all(value == 0)
    value.sum().backward()
    assert torch.isfinite(mean.grad).all()
    assert torch.all(mean.grad == 0)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_gradient_finite_at_tiny_delta(name: str) -> None:
    d2 = torch.tensor([1e-30, 1e-12, 1e-6], requires_grad=True)
    DIVERGENCES[name](d2).sum().backward()
    assert torch.isfinite(d2.grad).all()


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_gradcheck_nonzero_d2(name: str) -> None:
    # Both sides of js's series switch (1e-2) and chi2 well below its clamp.
    d2 = torch.tensor([1e-3, 0.05, 0.5, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DIVERGENCES[name], (d2,))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("per_dim", [False, True])
def test_gradcheck_wrt_means(name: str, per_dim: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    mean_ref = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    mean = (mean_ref + 0.4 * torch.randn(2, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
    sigma = torch.tensor([0.6, 1.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: gaussian_divergence(name, m, mean_ref, sigma, per_dim), (mean,))


def test_js_gradient_near_zero_is_one_eighth() -> None:
    d2 = torch.tensor([0.0, 1e-8, 1e-4], requires_grad=True)  # float32, as in training
    js(d2).sum().backward()
    torch.testing.assert_close(d2.grad, torch.full((3,), 0.125), rtol=1e-3, atol=0)


def test_chi2_is_expm1_exactly_up_to_the_threshold() -> None:
    d2 = torch.cat([torch.linspace(0, CHI2_LINEAR_D2, 1001, dtype=torch.float64), torch.tensor([1e-30, 1e-8])])
    assert torch.equal(chi2(d2), torch.expm1(d2))
    assert torch.equal(chi2(d2.float()), torch.expm1(d2.float()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chi2_value_and_gradient_finite_and_positive_at_huge_drift(dtype: torch.dtype) -> None:
    # exp(d2) overflows float32 at d2 ~ 88; the old clamp at 50 had zero gradient above it.
    d2 = torch.tensor([10.0, 40.0, 100.0, 1e4, 1e8], dtype=dtype, requires_grad=True)
    value = chi2(d2)
    value.sum().backward()
    assert torch.isfinite(value).all() and (value > 0).all()
    assert torch.isfinite(d2.grad).all() and (d2.grad > 0).all()
    assert float(value.detach().diff().min()) > 0  # still increasing: a drifted policy is pulled back
    # Above the threshold the slope is that of exp at T (the tangent continuation).
    torch.testing.assert_close(d2.grad[1:], torch.full((4,), math.exp(CHI2_LINEAR_D2), dtype=dtype))
    tangent_at_100 = math.expm1(CHI2_LINEAR_D2) + math.exp(CHI2_LINEAR_D2) * (100 - CHI2_LINEAR_D2)
    assert float(value[2].detach()) == pytest.approx(tangent_at_100, rel=1e-6)


def test_chi2_value_and_slope_continuous_at_the_threshold() -> None:
    eps = 1e-7
    d2 = torch.tensor([CHI2_LINEAR_D2 - eps, CHI2_LINEAR_D2, CHI2_LINEAR_D2 + eps], dtype=torch.float64,
                      requires_grad=True)
    value = chi2(d2)
    (grad,) = torch.autograd.grad(value.sum(), d2)
    below, at, above = value.tolist()
    assert above - at == pytest.approx(at - below, rel=1e-6)  # no jump, the same slope on both sides
    torch.testing.assert_close(grad, torch.full((3,), math.exp(CHI2_LINEAR_D2), dtype=torch.float64), rtol=1e-6,
                               atol=0)
    assert torch.autograd.gradcheck(chi2, (torch.tensor([12.0, 50.0, 1e3], dtype=torch.float64,
                                                        requires_grad=True),))


def test_chi2_gradient_wrt_means_finite_on_a_large_latent() -> None:
    # A 4x64x64 latent drifted by sigma per coordinate: whole-vector d2 = 16384.
    mean_ref = torch.zeros(2, 4, 64, 64)
    mean = (mean_ref + 0.5).requires_grad_(True)
    value = gaussian_divergence("chi2", mean, mean_ref, 0.5)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(mean.grad).all() and (mean.grad > 0).all()


def test_per_dim_default_only_for_bounded_divergences_on_large_latents() -> None:
    testbed, sd = 3 * 16 * 16, 4 * 64 * 64
    assert testbed <= PER_DIM_AUTO_MAX_DIMS < sd
    for name in DIVERGENCES:
        assert per_dim_default(name, testbed) is False
        assert per_dim_default(name, sd) is (name in ("js", "hellinger", "tv"))
    # Why: on the SD latent a drift of 0.05 sigma per coordinate already saturates whole-vector hellinger
    # (d2 = 41, value within 0.6% of its bound 2), while the per-dimension form is far from its bound.
    mean_ref = torch.zeros(1, 4, 64, 64, dtype=torch.float64)
    whole = gaussian_divergence("hellinger", mean_ref + 0.05, mean_ref, 1.0)
    per_dim = gaussian_divergence("hellinger", mean_ref + 0.05, mean_ref, 1.0, per_dim=True)
    assert float(whole) > 0.99 * 2 and float(per_dim) < 1e-3


def test_whole_vector_delta() -> None:
    gen = torch.Generator().manual_seed(5)
    mean, mean_ref = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    expected = (mean - mean_ref).flatten(1).norm(dim=1) / sigma
    torch.testing.assert_close(whole_vector_delta(mean, mean_ref, sigma), expected)
    torch.testing.assert_close(whole_vector_delta(mean, mean_ref, 0.5), (mean - mean_ref).flatten(1).norm(dim=1) / 0.5)
    d2 = whole_vector_delta(mean, mean_ref, sigma) ** 2  # consistent with the divergences' d2: kl = d2 / 2
    torch.testing.assert_close(gaussian_divergence("kl", mean, mean_ref, sigma), d2 / 2)


def test_half_precision_inputs_computed_in_float32() -> None:
    mean = torch.randn(2, 64).to(torch.bfloat16)
    value = gaussian_divergence("js", mean, torch.zeros_like(mean), 1.0)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()


def test_step_weights() -> None:
    alpha_bar_prev = torch.tensor([0.2, 0.5, 0.8, 0.98], dtype=torch.float64)
    torch.testing.assert_close(step_weights(alpha_bar_prev, "uniform"), torch.ones(4, dtype=torch.float64))
    weights = step_weights(alpha_bar_prev, "normalized")
    raw = torch.tensor([4.0, 1.0, 0.25, 0.02 / 0.98], dtype=torch.float64)  # (1 - a) / a
    torch.testing.assert_close(weights, raw / raw.mean())
    assert float(weights.mean()) == pytest.approx(1.0)
    # The point of the mode: w_n * KL's factor a / (1 - a) is the same on every step.
    per_step = weights * alpha_bar_prev / (1 - alpha_bar_prev)
    torch.testing.assert_close(per_step, per_step[:1].expand(4))


def test_unknown_names_raise_bench_error_with_hint() -> None:
    mean = torch.zeros(1, 3)
    with pytest.raises(BenchError, match="did you mean 'hellinger'"):
        gaussian_divergence("helinger", mean, mean, 1.0)
    with pytest.raises(BenchError, match="did you mean 'normalized'"):
        step_weights(torch.tensor([0.5]), "normalised")


# ---- ROCM on the tiny model ------------------------------------------------------------------------------------
def rocm(policy, prompts, **fields):
    from bench.core.sampler import SamplerConfig
    from methods.rocm import ROCM, ROCMConfig
    from rewards.toy import Brightness

    return ROCM("rocm-test", ROCMConfig(batch_size=2, **fields), policy, SamplerConfig(steps=4), Brightness(),
                prompts, torch.Generator().manual_seed(0))


def test_rocm_chi2_at_huge_beta_and_lr_keeps_finite_gradients(tiny_policy, train_prompts) -> None:
    # With the old clamp (value exp(50) - 1 above d2 = 50) this configuration stopped with "non-finite gradient"
    # at step 2: lr = 1 throws the policy far from the reference, and beta exp(d2) did the rest.
    algo = rocm(tiny_policy, train_prompts, divergence="chi2", beta=1000.0, lr=1.0)
    logs = [algo.step() for _ in range(4)]
    assert all(math.isfinite(log["grad_norm"]) and math.isfinite(log["loss"]) for log in logs)
    # The drift really reached the linear continuation (delta^2 above its threshold on some step).
    assert max(log[f"delta_k{k}"] for log in logs for k in range(3)) ** 2 > CHI2_LINEAR_D2
    assert all(torch.isfinite(p).all() for p in tiny_policy.trainable_parameters())


def test_rocm_logs_resolved_per_dim_and_step_deltas(tiny_policy, train_prompts) -> None:
    from methods.rocm import ROCMConfig

    auto = rocm(tiny_policy, train_prompts, divergence="js", beta=40.0)  # tiny: 3x16x16 = 768 dims
    assert auto.per_dim is False
    logs = auto.step()
    assert logs["per_dim"] == 0.0
    assert {f"delta_k{k}" for k in range(3)} <= set(logs) and "delta_k3" not in logs
    assert all(logs[f"delta_k{k}"] == 0.0 for k in range(3))  # step 1: LoRA starts at zero
    assert rocm(tiny_policy, train_prompts, divergence="js", beta=40.0, per_dim="true").step()["per_dim"] == 1.0
    assert ROCMConfig(divergence="js").uses_per_dim(4 * 64 * 64) is True
    assert ROCMConfig(divergence="js", per_dim="false").uses_per_dim(4 * 64 * 64) is False
    assert ROCMConfig(divergence="kl").uses_per_dim(4 * 64 * 64) is False
    assert "delta_k0" not in rocm(tiny_policy, train_prompts, divergence="none", beta=0.0).step()


def test_rocm_rejects_a_bad_per_dim_setting(tiny_policy, train_prompts) -> None:
    with pytest.raises(BenchError, match="did you mean 'true'"):
        rocm(tiny_policy, train_prompts, divergence="js", per_dim="ture")
