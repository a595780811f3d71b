"""DDPO's update written out, and its optional per-step regulariser (methods/ddpo.py; the `ddpo-kl` entry, which
GRPO shares through the DDPO base): the regularised PPO loss on hand-computed values, the KL at the stored states
between the policy's and the frozen model's means (against Flow-GRPO's formula), its gradient, the other
f-divergences from divergences.py, and GRPO's place in the class tree."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from bench.core.method import Method
from bench.core.policy import ModelConfig
from bench.core.sampler import sample, step_log_prob, step_mean
from bench.core.tiny import tiny
from methods.ddpo import DDPO
from methods.grpo import GRPO
from methods.losses import ppo_clip_loss, regularised_ppo_loss
from tests.conftest import PG_SMALL as SMALL
from tests.conftest import build_on_brightness as build
from tests.conftest import perturb_lora as perturb



# ---- the regularised PPO loss ----------------------------------------------------------------------------
def test_regularised_ppo_loss_hand_computed() -> None:
    advantages = torch.tensor([1.0, -2.0], dtype=torch.float64)
    old = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    log_prob = (old + torch.tensor([1.5, 1.1], dtype=torch.float64).log()).requires_grad_(True)
    divergence = torch.tensor([0.2, 0.4], dtype=torch.float64, requires_grad=True)
    loss, info = regularised_ppo_loss(log_prob, old, advantages, 0.2, divergence, beta=0.5)
    # PPO: max(-1 x 1.5, -1 x 1.2) = -1.2 (clipped), max(2 x 1.1, 2 x 1.1) = 2.2: mean 0.5. KL: 0.5 x mean 0.3.
    assert loss.item() == pytest.approx(0.5 + 0.15)
    assert info["policy_loss"] == pytest.approx(0.5) and info["divergence"] == pytest.approx(0.3)
    assert info["clipfrac"] == pytest.approx(0.5) and all(isinstance(v, float) for v in info.values())
    loss.backward()
    torch.testing.assert_close(divergence.grad, torch.tensor([0.25, 0.25], dtype=torch.float64))  # β / n
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, 1.1], dtype=torch.float64))  # -A r / n, unclipped


def test_regularised_ppo_loss_with_zero_beta_is_ppo_clip() -> None:
    gen = torch.Generator().manual_seed(0)
    log_prob, old, adv = (torch.randn(16, generator=gen) for _ in range(3))
    loss, info = regularised_ppo_loss(log_prob, old, adv, 0.1, torch.rand(16, generator=gen), beta=0.0)
    ppo, ppo_info = ppo_clip_loss(log_prob, old, adv, 0.1)
    assert loss.item() == ppo.item() and {k: info[k] for k in ppo_info} == ppo_info
    with pytest.raises(ValueError, match="beta"):
        regularised_ppo_loss(log_prob, old, adv, 0.1, torch.rand(16), beta=-1.0)


# ---- the per-step KL at the stored states (ddpo-kl, GRPO) --------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_is_at_the_stored_state_policy_mean_against_reference_mean(tiny_policy, train_prompts, reduction) -> None:
    perturb(tiny_policy)
    algo = build(DDPO, tiny_policy, train_prompts, reduction=reduction, beta=0.7, **SMALL)
    traj = sample(tiny_policy, algo.draw_prompt_groups(2, 2), algo.sampler, algo.generator)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for k in range(traj.num_noisy_steps):
        loss, info = algo.step_loss(traj, k, adv)
        with torch.no_grad():
            mean = step_mean(tiny_policy, traj, k, algo.sampler)  # at the stored state x_k
            ref = step_mean(tiny_policy, traj, k, algo.sampler, reference=True)
        sigma = traj.schedule.sigmas[k].item()
        # Flow-GRPO's kl_loss (scripts/train_sd3.py), transcribed: ((μ - μ_ref)²).mean(dims) / (2σ²), batch mean;
        # the whole-vector KL (the sum over dims) when log-probabilities are sums.
        sq = (mean - ref) ** 2
        kl = (sq.mean(dim=(1, 2, 3)) if reduction == "mean" else sq.sum(dim=(1, 2, 3))) / (2 * sigma**2)
        assert kl.mean().item() > 0
        assert info["divergence"] == pytest.approx(kl.mean().item(), rel=1e-5)
        ppo, _ = ppo_clip_loss(step_log_prob(tiny_policy, traj, k, algo.sampler), traj.log_probs[:, k], adv, 1e-3)
        assert info["policy_loss"] == pytest.approx(ppo.item(), rel=1e-6, abs=1e-9)
        assert loss.item() == pytest.approx(ppo.item() + 0.7 * kl.mean().item(), rel=1e-5)


def test_kl_gradient_pulls_the_policy_mean_towards_the_reference(tiny_policy, train_prompts) -> None:
    # With zero advantages only the KL acts: one SGD-like update along its gradient must shrink it.
    perturb(tiny_policy)
    algo = build(DDPO, tiny_policy, train_prompts, beta=1.0, **SMALL)
    traj = sample(tiny_policy, algo.draw_prompt_groups(2, 2), algo.sampler, algo.generator)
    zero = torch.zeros(4)
    loss, before = algo.step_loss(traj, 0, zero)
    loss.backward()
    params = tiny_policy.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p -= 1e-2 * p.grad / max(float(p.grad.norm()), 1e-12)
            p.grad = None
    _, after = algo.step_loss(traj, 0, zero)
    assert after["divergence"] < before["divergence"]


def test_other_divergences_come_from_divergences_py(tiny_policy, train_prompts) -> None:
    from bench.core.divergences import gaussian_divergence

    perturb(tiny_policy)
    for name in ("js", "hellinger", "tv", "chi2"):
        algo = build(DDPO, tiny_policy, train_prompts, divergence=name, beta=0.3, **SMALL)
        traj = sample(tiny_policy, algo.draw_prompt_groups(2, 2), algo.sampler, algo.generator)
        _, info = algo.step_loss(traj, 1, torch.zeros(4))
        with torch.no_grad():
            mean, ref = (step_mean(tiny_policy, traj, 1, algo.sampler, reference=r) for r in (False, True))
        expected = gaussian_divergence(name, mean, ref, traj.schedule.sigmas[1].item(), per_dim=True).mean()
        assert info["divergence"] == pytest.approx(expected.item(), rel=1e-5) and info["divergence"] > 0


# ---- DDPO's update, written out -----------------------------------------------------------------------------
def one_ddpo_step(cls=DDPO, **fields) -> dict[str, torch.Tensor]:
    """The LoRA weights after one DDPO-like step (2 inner epochs of 2 minibatches, clip 1e-5 so that both PPO
    branches are taken), from the same start every call."""
    from bench.prompts.sets import PROMPT_SETS

    torch.manual_seed(0)
    policy = tiny(ModelConfig())
    prompts = PROMPT_SETS["tiny"]["train"][:4]
    algo = build(cls, policy, prompts, prompts_per_step=2, samples_per_prompt=4, train_batch_size=4,
                 inner_epochs=2, clip_range=1e-5, **fields)
    algo.step()
    return policy.trainable_state_dict()


class _Stop(Exception):
    pass


def test_ddpo_first_update_is_the_policy_gradient_written_out(monkeypatch) -> None:
    """DDPO's first minibatch gradient, against the same gradient computed here from its stored trajectory in
    plain torch: advantages (r - mean_prompt) / (std_prompt + 1e-6) over each prompt's K = 4 samples (its own
    statistics from the first visit), and, because the first update's weights are the ones that sampled
    (ratio = 1, inside the clip), PPO-clip's gradient is that of -mean over samples and steps of A · log π.

    Tolerance: both sides sum the same 8 x 3 per-(sample, step) terms in float32, in another order (DDPO
    back-propagates each step's mean separately and accumulates); reordering a float32 sum of n terms moves it by
    at most ~n·2^-24 times the sum of their magnitudes, so 1e-5 of the largest gradient element bounds the
    difference with room to spare, on any machine. (It replaces a bit-exact comparison against weights saved on
    another machine, whose CPU kernels round differently.)"""
    import methods.ddpo
    from bench.api import step_log_prob
    from bench.prompts.sets import PROMPT_SETS

    torch.manual_seed(0)
    policy = tiny(ModelConfig())
    algo = build(DDPO, policy, PROMPT_SETS["tiny"]["train"][:4], prompts_per_step=2, samples_per_prompt=4,
                 train_batch_size=8, inner_epochs=1, clip_range=1e-5)
    seen, sample_of_ddpo = {}, methods.ddpo.sample
    monkeypatch.setattr(methods.ddpo, "sample", lambda *a, **k: seen.setdefault("traj", sample_of_ddpo(*a, **k)))
    params = policy.trainable_parameters()

    def capture() -> float:
        seen["grads"] = [p.grad.clone() for p in params]
        raise _Stop

    monkeypatch.setattr(algo, "update", capture)
    with pytest.raises(_Stop):
        algo.step()
    traj = seen["traj"]
    for p in params:
        p.grad = None
    with torch.no_grad():
        r = algo.reward(traj.images, traj.prompts).double().view(2, 4)  # (P, K): two prompts' groups of four
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + 1e-6)).clamp(-10, 10)
    logp = torch.stack([step_log_prob(policy, traj, k, algo.sampler) for k in range(traj.num_noisy_steps)], 1)
    (-(adv.flatten().float()[:, None] * logp).mean()).backward()  # logp: (B, N-1)
    ours = [p.grad for p in params]
    scale = max(float(g.abs().max()) for g in ours)
    assert scale > 0
    for got, want in zip(seen["grads"], ours):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_the_regulariser_changes_the_update_and_grpo_is_not_dpok() -> None:
    ddpo = one_ddpo_step()
    regularised = one_ddpo_step(beta=100.0)
    assert any(not torch.equal(ddpo[k], regularised[k]) for k in ddpo)
    # GRPO shares DDPO's loss through the DDPO base, one level below it, and nothing of DPOK's value function
    assert GRPO.__mro__[1:3] == (DDPO, Method)
    assert not any("dpok" in c.__module__ for c in GRPO.__mro__)
