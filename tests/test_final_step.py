"""The step that makes the image, measured and (optionally) regularised: evaluation's kl-to-base includes the final
deterministic step, read as a Gaussian at the last σ (bench/core/sampler.py final_step_gaussian), so it changes
when only the last step's output changes; ROCM's `final_step` option adds the same term to its regulariser."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.divergences import gaussian_divergence
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig, sample
from bench.core.tiny import tiny
from bench.prompts.sets import PROMPT_SETS
from bench.run.evaluate import KL_VERSION, evaluate, kl_to_base
from methods.rocm import ROCM, ROCMConfig, regulariser
from rewards.toy import Brightness

PROMPTS = PROMPT_SETS["tiny"]["train"][:4]
SHIFT = 0.1  # added to every element of the policy's final x̂_0


@pytest.fixture
def policy():
    torch.manual_seed(0)
    return tiny(ModelConfig())  # LoRA B = 0: the policy is the reference


def shift_last_step(policy, monkeypatch, final_t: int) -> None:
    """The policy's output changes at the final step only (the reference's, and every noisy step's, do not)."""
    real = policy.consistency

    def consistency(x, t, cond, w):
        out = real(x, t, cond, w)
        return out + SHIFT if t == final_t and not policy.in_reference else out

    monkeypatch.setattr(policy, "consistency", consistency)


def kl_rows(policy, steps: int = 4) -> float:
    rows, _, _ = evaluate(policy, SamplerConfig(steps=steps), {"train": PROMPTS}, {"kl-to-base": None}, {"train": 2}, 7)
    (row,) = rows
    assert row["metric"] == "kl-to-base" and row["version"] == KL_VERSION == "2"
    return row["value"]


@pytest.mark.parametrize("steps", [1, 4])
def test_kl_to_base_changes_when_only_the_last_steps_output_changes(policy, monkeypatch, steps):
    assert kl_rows(policy, steps) == 0.0  # the policy is the reference: every step's KL is exactly 0
    final_t = int(sample(policy, PROMPTS[:1], SamplerConfig(steps=steps), torch.Generator()).schedule.timesteps[-1])
    shift_last_step(policy, monkeypatch, final_t)
    # The noisy steps are untouched, so their KL stays 0; the final step's is ᾱ_f ‖Δx̂_0‖² / (2(1 - ᾱ_f)),
    # with ‖Δx̂_0‖² = D · SHIFT² for the D = 768 latent dimensions. Tolerance: float32 sums of 768 equal squares.
    a = float(policy.scheduler.alphas_cumprod[final_t])
    expected = a * 768 * SHIFT**2 / (2 * (1 - a))
    assert kl_rows(policy, steps) == pytest.approx(expected, rel=1e-5)


def test_kl_to_base_is_the_noisy_steps_plus_the_final_step(policy):
    with torch.no_grad():
        for q in policy.trainable_parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=torch.Generator().manual_seed(1)))
    traj = sample(policy, PROMPTS, SamplerConfig(steps=4), torch.Generator().manual_seed(3), with_reference=True,
                  final_reference=True)
    by_hand = torch.zeros(len(PROMPTS))
    for k in range(3):
        sq = (traj.means[:, k] - traj.ref_means[:, k]).pow(2).sum(dim=(1, 2, 3))
        by_hand += sq / (2 * traj.schedule.sigmas[k] ** 2)
    a = traj.schedule.alpha_bar_final
    final = a * (traj.x0 - traj.ref_x0).pow(2).sum(dim=(1, 2, 3)) / (2 * (1 - a))
    assert (final > 0).all() and torch.equal(a, traj.schedule.alpha_bar_prev[-1])  # the last σ: the last noisy step's
    # float32 sums of 768 squares, in another order: ~1e-6 relative
    torch.testing.assert_close(kl_to_base(traj), by_hand + final, rtol=1e-5, atol=0)


def test_rocm_final_step_option_regularises_the_last_step(policy, monkeypatch):
    final_t = int(sample(policy, PROMPTS[:1], SamplerConfig(steps=4), torch.Generator()).schedule.timesteps[-1])
    shift_last_step(policy, monkeypatch, final_t)
    traj = sample(policy, PROMPTS, SamplerConfig(steps=4), torch.Generator().manual_seed(0), grad=True,
                  with_reference=True, final_reference=True)
    plain, logs = regulariser(traj, ROCMConfig(divergence="kl"), per_dim=False)
    assert (plain == 0).all() and "delta_final" not in logs  # the noisy steps did not move
    with_final, logs = regulariser(traj, ROCMConfig(divergence="kl", final_step=True), per_dim=False)
    a = float(traj.schedule.alpha_bar_final)
    expected = a * 768 * SHIFT**2 / (2 * (1 - a))
    torch.testing.assert_close(with_final.detach(), torch.full((4,), expected), rtol=1e-5, atol=0)
    assert logs["delta_final"] == pytest.approx(math.sqrt(2 * expected), rel=1e-5)
    # gradient reaches θ through the final step's x̂_0 (the reference side is frozen)
    with_final.sum().backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in policy.trainable_parameters())


def test_rocm_with_final_step_trains_and_logs_it(policy):
    with torch.no_grad():
        for q in policy.trainable_parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=torch.Generator().manual_seed(1)))
    cfg = ROCMConfig(divergence="js", beta=1.0, final_step=True, step_weighting="normalized", batch_size=4)
    algo = ROCM("rocm-js", cfg, policy, SamplerConfig(steps=4), Brightness(), PROMPTS,
                torch.Generator().manual_seed(0))
    logs = algo.step()
    assert logs["delta_final"] > 0 and {f"delta_k{k}" for k in range(3)} <= set(logs)
    # the regulariser is the same measure as kl-to-base's final term, with this entry's divergence
    traj = sample(policy, PROMPTS, SamplerConfig(steps=4), torch.Generator().manual_seed(5), with_reference=True,
                  final_reference=True)
    divergence, _ = regulariser(traj, cfg, per_dim=False)
    from bench.core.divergences import step_weights
    from bench.core.sampler import final_step_gaussian

    w = step_weights(torch.cat([traj.schedule.alpha_bar_prev, traj.schedule.alpha_bar_final[None]]), "normalized")
    by_hand = sum(w[k] * gaussian_divergence("js", traj.means[:, k], traj.ref_means[:, k],
                                             traj.schedule.sigmas[k].item()) for k in range(3))
    by_hand = by_hand + w[3] * gaussian_divergence("js", *final_step_gaussian(traj))
    torch.testing.assert_close(divergence, by_hand, rtol=1e-6, atol=1e-9)
