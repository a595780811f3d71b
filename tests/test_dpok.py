"""DPOK as published (methods/dpok.py): its loss on hand-made values and against DPOK's own formula, one policy
update's gradient against the published update computed here by hand, the KL term against DPOK's squared
ε-difference, the value baseline and its training, the replay buffer, a learning check on the tiny model, the
command line in one and two processes, and one-line config errors."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.errors import BenchError
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig, gaussian_log_prob, mean_at
from bench.core.tiny import tiny
from bench.prompts.sets import PROMPT_SETS
from methods.dpok import DPOK, DPOKConfig
from methods.losses import dpok_loss
from rewards.toy import Brightness
from tests.conftest import perturb_lora as perturb

PROMPTS = PROMPT_SETS["tiny"]["train"]
SMALL = {"batch_size": 4, "updates_per_step": 1, "accumulation": 2, "train_batch_size": 3}


def build(steps: int = 4, seed: int = 0, **fields) -> DPOK:
    torch.manual_seed(seed)
    policy = tiny(ModelConfig())
    return DPOK("dpok", DPOKConfig(**(SMALL | fields)), policy, SamplerConfig(steps=steps, checkpointing=False),
                Brightness(), PROMPTS, torch.Generator().manual_seed(seed))


# ---- the loss ----------------------------------------------------------------------------------------------------
def test_dpok_loss_hand_computed() -> None:
    old = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    log_prob = torch.tensor([0.05, -0.3, math.log(1.5)], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 4.0], dtype=torch.float64)
    kl = torch.tensor([0.1, 0.2, 0.6], dtype=torch.float64, requires_grad=True)
    loss, info = dpok_loss(log_prob, old, adv, 0.2, kl, reward_weight=10.0, kl_weight=0.5)
    # ratios e^0.05 (inside 1 ± 0.2), e^-0.3 = 0.741 -> 0.8, 1.5 -> 1.2 (both clamped)
    r0 = math.exp(0.05)
    policy = (-10 * 2 * r0 + -10 * -1 * 0.8 + -10 * 4 * 1.2) / 3
    assert loss.item() == pytest.approx(policy + 0.5 * 0.3)
    assert info["policy_loss"] == pytest.approx(policy) and info["kl"] == pytest.approx(0.3)
    assert info["ratio"] == pytest.approx((r0 + 0.8 + 1.2) / 3) and info["clipfrac"] == pytest.approx(2 / 3)
    loss.backward()
    # d/d log_prob: -w A ρ / n inside the band, 0 where the ratio is clamped (whatever the sign of A)
    torch.testing.assert_close(log_prob.grad, torch.tensor([-10 * 2 * r0 / 3, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(kl.grad, torch.full((3,), 0.5 / 3, dtype=torch.float64))


def test_dpok_loss_is_dpoks_formula() -> None:
    """google-research/DPOK train_online_pg.py `_train_policy_func`, transcribed as an independent check (its
    division by gradient_accumulation_steps is the caller's, methods/dpok.py)."""
    gen = torch.Generator().manual_seed(0)
    log_prob, old = 1e-4 * torch.randn(64, generator=gen), 1e-4 * torch.randn(64, generator=gen)
    adv, kl = torch.randn(64, generator=gen), torch.rand(64, generator=gen)
    ratio_clip, reward_weight, kl_weight = 1e-4, 100.0, 0.01
    ratio = torch.exp(log_prob - old)
    ratio = torch.clamp(ratio, 1.0 - ratio_clip, 1.0 + ratio_clip)
    theirs = (-reward_weight * adv.float() * ratio.float().reshape([64, 1])[:, 0]).mean()
    theirs = theirs + kl_weight * kl.mean()
    ours, _ = dpok_loss(log_prob, old, adv, ratio_clip, kl, reward_weight, kl_weight)
    # float32: the clamp of the log-ratio and of the ratio agree to rounding of exp/log (~1e-7 relative), summed
    # over 64 terms of size ~100
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_one_policy_update_is_the_published_update_by_hand(monkeypatch) -> None:
    """The gradient of one update (accumulation 2 x 3 replayed transitions) against the same update computed here
    from the transitions it drew: A = r - V(x_k), ρ = clamp(exp(ℓ_θ - ℓ_old), 1 ± c), loss = mean(-w A ρ) +
    kl_weight mean KL, the KL ‖μ_θ - μ_ref‖² / (2σ²) per dimension, each minibatch's loss / accumulation.

    Tolerance: both sides sum the same per-transition terms in float32 in another grouping (the method runs one
    denoiser call per step); reordering moves a float32 sum of n terms by at most ~n·2^-24 of their magnitudes,
    so 1e-5 of the largest gradient element bounds it."""
    algo = build(kl_weight=5.0, ratio_clip=0.05)
    perturb(algo.policy)
    algo.step()  # fills the buffer; the next update is the one checked
    drawn, real = [], algo.gather
    monkeypatch.setattr(algo, "gather", lambda ids: drawn.append(real(ids)) or drawn[-1])
    params = algo.policy.trainable_parameters()

    class Stop(Exception):
        pass

    def capture():
        captured.extend(p.grad.clone() for p in params)
        raise Stop

    captured = []
    monkeypatch.setattr(algo, "update", capture)
    with pytest.raises(Stop):
        algo.policy_update(dict.fromkeys(DPOK.LOG_KEYS, 0.0))
    for p in params:
        p.grad = None
    policy, cfg = algo.policy, algo.cfg
    for batch in drawn:  # the accumulated minibatches
        loss_terms = []
        for i in range(len(batch["k"])):
            k = int(batch["k"][i])
            x, nxt = batch["x"][i:i + 1], batch["next"][i:i + 1]
            t, a_prev = algo.schedule.timesteps[k], algo.schedule.alpha_bar_prev[k]
            sigma = algo.schedule.sigmas[k]
            cond = policy.encode_prompts(batch["prompts"][i:i + 1])
            mean = a_prev.sqrt() * policy.consistency(x, t, cond, algo.sampler.guidance_scale)
            with torch.no_grad(), policy.reference():
                ref = a_prev.sqrt() * policy.consistency(x, t, cond, algo.sampler.guidance_scale)
                text = cond.mean(1)
                value = algo.value_net(x, text, batch["k"][i:i + 1])
            log_prob = gaussian_log_prob(nxt, mean, sigma, "mean")
            ratio = torch.clamp(torch.exp(log_prob - batch["old"][i]), 1 - cfg.ratio_clip, 1 + cfg.ratio_clip)
            adv = batch["reward"][i] - value
            kl = ((mean - ref) ** 2).mean() / (2 * sigma**2)
            loss_terms.append(-cfg.reward_weight * adv * ratio + cfg.kl_weight * kl)
        (torch.cat(loss_terms).mean() / cfg.accumulation).backward()
    ours = [p.grad for p in params]
    scale = max(float(g.abs().max()) for g in ours)
    assert scale > 0
    for got, want in zip(captured, ours):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_kl_is_dpoks_squared_noise_difference_times_the_step_factor() -> None:
    """KL_k = ᾱ_prev c_out² (1 - ᾱ_t) / (2σ_k² ᾱ_t) · mean (ε_θ - ε_ref)², ε from the UNet's own output (the tiny
    UNet predicts x̂_0: ε = (x - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t)). Tolerance: both are float32 products of the same
    differences, rounded in another order (~1e-6 relative)."""
    algo = build()
    policy = algo.policy
    perturb(policy)
    x = torch.randn(3, *policy.latent_shape, generator=torch.Generator().manual_seed(2))
    cond = policy.encode_prompts(PROMPTS[:3])
    w = policy.unet.config.time_cond_proj_dim
    from bench.core.policy import guidance_embedding
    from bench.core.sampler import mean_at

    for k in range(algo.noisy_steps):
        t = algo.schedule.timesteps[k]
        with torch.no_grad():
            mean = mean_at(policy, x, algo.schedule, k, cond, algo.sampler)
            ref = mean_at(policy, x, algo.schedule, k, cond, algo.sampler, reference=True)
            emb = guidance_embedding(torch.full((3,), algo.sampler.guidance_scale - 1.0), w) if w else None
            ts = torch.full((3,), t)
            out = policy.unet(x, ts, encoder_hidden_states=cond, timestep_cond=emb).sample
            with policy.reference():
                out_ref = policy.unet(x, ts, encoder_hidden_states=cond, timestep_cond=emb).sample
        a_t, a_prev, sigma = policy.scheduler.alphas_cumprod[t], algo.schedule.alpha_bar_prev[k], algo.schedule.sigmas[k]
        eps, eps_ref = ((x - a_t.sqrt() * o) / (1 - a_t).sqrt() for o in (out, out_ref))
        c_out = policy.scheduler.get_scalings_for_boundary_condition_discrete(t)[1]
        factor = a_prev * c_out**2 * (1 - a_t) / (2 * sigma**2 * a_t)
        dpok_term = ((eps - eps_ref) ** 2).mean(dim=(1, 2, 3))  # DPOK's kl_regularizer, its .mean()
        from bench.core.divergences import gaussian_divergence

        ours = gaussian_divergence("kl", mean, ref, sigma.item(), per_dim=True)
        torch.testing.assert_close(ours, factor * dpok_term, rtol=1e-4, atol=0)
        assert ours.min() > 0


# ---- the value baseline, the buffer --------------------------------------------------------------------------
def test_advantage_is_reward_minus_the_value(monkeypatch) -> None:
    algo = build()
    algo.step()
    monkeypatch.setattr(algo, "value", lambda batch: torch.full_like(batch["reward"], 0.25))
    sums = dict.fromkeys(DPOK.LOG_KEYS, 0.0)
    drawn, real = [], algo.gather
    monkeypatch.setattr(algo, "gather", lambda ids: drawn.append(real(ids)) or drawn[-1])
    algo.policy_update(sums)
    rewards = torch.cat([b["reward"] for b in drawn])
    assert sums["advantage"] / sums["terms"] == pytest.approx((rewards - 0.25).mean().item(), rel=1e-5)


def test_value_function_regresses_the_final_reward() -> None:
    """Repeated value updates on a fixed buffer fit the rewards: the error falls far below the rewards' spread
    around the untrained value (an unconditional baseline would already remove the mean)."""
    algo = build(value_lr=1e-3, value_batch_size=64)
    algo.step()
    losses = [algo.train_value() for _ in range(60)]
    assert losses[-1] < 0.05 * losses[0], losses[::10]


def test_buffer_keeps_the_last_rounds_and_gather_returns_their_transitions() -> None:
    algo = build(buffer_steps=2)
    for _ in range(3):
        algo.step()
    assert len(algo.buffer) == 2 and algo.transitions == 2 * 4 * 3
    ids = torch.arange(algo.transitions)
    batch = algo.gather(ids)
    for j, i in enumerate(ids.tolist()):
        r, row, k = i // 12, (i % 12) // 3, i % 3
        rnd = algo.buffer[r]
        assert torch.equal(batch["x"][j], rnd["states"][row, k]) and torch.equal(batch["next"][j], rnd["states"][row, k + 1])
        assert batch["old"][j] == rnd["log_probs"][row, k] and batch["reward"][j] == rnd["rewards"][row]
        assert batch["k"][j] == k and batch["prompts"][j] == rnd["prompts"][row]


def test_one_round_trains_policy_and_value_and_logs() -> None:
    algo = build()
    policy_before = {k: v.clone() for k, v in algo.policy.trainable_state_dict().items()}
    value_before = [p.detach().clone() for p in algo.value_net.parameters()]
    algo.step()
    logs = algo.step()
    after = algo.policy.trainable_state_dict()
    assert any(not torch.equal(policy_before[k], after[k]) for k in after)
    assert any(not torch.equal(a, b) for a, b in zip(value_before, algo.value_net.parameters()))
    assert set(logs) == {"reward_mean", "reward_std", "value_loss", "buffer", "loss", "policy_loss", "kl", "ratio",
                         "clipfrac", "advantage", "grad_norm"}
    assert all(math.isfinite(v) for v in logs.values()) and logs["buffer"] == 2 * 4 * 3
    c = algo.policy.meter.counters()
    assert c["flops_value"] > 0  # the value function's forwards and backwards are charged


# ---- learning (fast, tiny) -----------------------------------------------------------------------------------
def test_dpok_updates_raise_the_likelihood_of_the_advantaged_transitions(monkeypatch) -> None:
    """The fast learning check (the testbed's is tests/test_learning.py, slow): with a baseline that centres the
    rewards, a few DPOK updates on the replay buffer raise the advantage-weighted log-likelihood of its
    transitions, Σ A (ℓ_θ - ℓ_old) — the surrogate DPOK's gradient ascends —, and with the advantages' signs
    flipped they raise the flipped one: the update follows the advantage, not the samples. (On the tiny
    random model a whole DPOK run is no reliable learner within seconds: its brightness spreads 0.3% across
    samples, so the value function's error swamps the reward differences; measured, 5 seeds of 10 rounds
    gained -0.026 … +0.002.)"""
    gains = []
    for sign in (1.0, -1.0):
        algo = build(kl_weight=0.0, lr=1e-2, ratio_clip=0.5, updates_per_step=1, accumulation=1,
                     train_batch_size=12)
        algo.step()  # one round in the buffer (and one round of updates)
        batch = algo.gather(torch.arange(algo.transitions))
        mean = batch["reward"].mean()
        advantage = sign * (batch["reward"] - mean)  # (T,)
        monkeypatch.setattr(algo, "value", lambda b, mean=mean, sign=sign: b["reward"] - sign * (b["reward"] - mean))

        def surrogate() -> float:
            with torch.no_grad():
                total = 0.0
                for k in range(algo.noisy_steps):
                    at = (batch["k"] == k).nonzero()[:, 0]
                    cond = algo.policy.encode_prompts([batch["prompts"][i] for i in at.tolist()])
                    mu = mean_at(algo.policy, batch["x"][at], algo.schedule, k, cond, algo.sampler)
                    logp = gaussian_log_prob(batch["next"][at], mu, algo.schedule.sigmas[k], "mean")
                    total += float((advantage[at] * (logp - batch["old"][at])).sum())
            return total

        start = surrogate()
        for _ in range(3):
            algo.policy_update(dict.fromkeys(DPOK.LOG_KEYS, 0.0))
        gains.append(surrogate() - start)
    # Above float noise: |A| < 0.01 (brightness spreads ~0.002 here), each log-density ~1 is rounded to ~1e-7 in
    # float32, so the surrogate's rounding over 12 transitions is below 12 x 0.01 x 1e-6 = 1.2e-7 (measured gains:
    # 1.4e-5 and 1.5e-5). A bug that ignored A would move the two surrogates in opposite directions.
    assert all(g > 1.2e-7 for g in gains), gains


# ---- configuration ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, steps, match", [
    ({}, 1, "sampler.steps must be >= 2"),
    ({"batch_size": 1, "train_batch_size": 4}, 4, "fewer than train_batch_size"),
    ({"kl_weight": -1.0}, 4, "kl_weight must be >= 0"),
    ({"ratio_clip": 0.0}, 4, "ratio_clip must be > 0"),
    ({"buffer_steps": 0}, 4, "buffer_steps must be >= 1"),
    ({"value_lr": 0.0}, 4, "value_lr must be > 0"),
])
def test_bad_config_is_one_line(fields, steps, match) -> None:
    with pytest.raises(BenchError, match=match) as e:
        build(steps=steps, **fields)
    assert "\n" not in str(e.value)


# ---- two processes ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_match_one(tmp_path) -> None:
    """(~1-3 minutes: `pytest -m slow tests/test_dpok.py`.) tests/test_distributed.py's check for DPOK: every process draws the same prompts, noise and replay indices,
    keeps its own rows of each round, and sums the policy's and the value function's gradients: the same compute
    and, within assert_same_training's float tolerance, the same weights as one process."""
    args = ["run", "--model", "tiny", "--methods", "dpok", "--rewards", "brightness", "--budget", "150nfe",
            "--no-progress", "--set", "eval.points=1", "--set", "eval.max_prompts=2", "--set", "eval.min_images=0",
            "--set", "dpok.batch_size=4", "--set", "dpok.updates_per_step=2", "--set", "dpok.accumulation=2",
            "--set", "dpok.train_batch_size=4", "--set", "dpok.kl_weight=1"]
    from tests.multiprocess import assert_same_training, one_and_two_processes, tiny_initial_weights

    one, two, _ = one_and_two_processes(args, tmp_path)
    name = "dpok__brightness__seed0"
    assert_same_training(one / "runs" / name, two / "runs" / name, tiny_initial_weights(0))
