"""GRPO (methods/grpo.py) and DPOK (methods/dpok.py): their loss math on hand-computed values and against the
originals' formulas, the KL at the stored states, DDPO's behaviour kept bit for bit by the refactor that made
its per-step loss overridable, one step on the tiny model, the command line, and one-line config errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig, sample, step_log_prob, step_mean
from bench.core.tiny import tiny
from bench.registry.lookup import knobs_for, method_class
from methods.ddpo import DDPO, DDPOConfig
from methods.dpok import DPOK, DPOKConfig
from methods.grpo import GRPO, GRPOConfig
from methods.losses import group_advantages, ppo_clip_loss, regularised_ppo_loss
from rewards.toy import Brightness

SMALL = {"prompts_per_step": 2, "samples_per_prompt": 4, "train_batch_size": 4}


def build(cls, policy, prompts, steps: int = 3, reduction: str = "mean", **fields):
    sampler = SamplerConfig(steps=steps, logprob_reduction=reduction)
    return cls(cls.__name__.lower(), cls.Config(**fields), policy, sampler, Brightness(), prompts,
               torch.Generator().manual_seed(0))


def perturb(policy, scale: float = 0.05) -> None:
    """Move the LoRA B matrices off zero, so that the policy differs from the reference."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.unet.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


# ---- group advantages -----------------------------------------------------------------------------------
def test_group_advantages_hand_computed() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 4.0, 2.0], dtype=torch.float64)
    adv, zero = group_advantages(rewards, 3, eps=0.0)
    # Group 0: mean 2, population std sqrt(2/3): A = ∓sqrt(3/2). Group 1: no spread. Group 2: mean 2, std sqrt(8/3).
    s0, s2 = math.sqrt(2 / 3), math.sqrt(8 / 3)
    expected = [-1 / s0, 0.0, 1 / s0, 0.0, 0.0, 0.0, -2 / s2, 2 / s2, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))
    assert zero.tolist() == [False] * 3 + [True] * 3 + [False] * 3
    adv_eps, _ = group_advantages(rewards, 3, eps=0.5)
    assert adv_eps[0].item() == pytest.approx(-1 / (s0 + 0.5)) and adv_eps[4].item() == 0.0


def test_zero_std_groups_give_zero_advantage_not_nan() -> None:
    # 0.1 is not exact in binary: the group mean of three 0.1s differs from 0.1 by rounding, which eps = 1e-8
    # would blow up to ~1e-9 / 1e-8; and eps = 0 would give 0/0. Both must give exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], dtype=torch.float32)
    for eps in (0.0, 1e-8, 1e-4):
        for global_std in (False, True):
            adv, zero = group_advantages(rewards, 3, eps=eps, global_std=global_std)
            assert torch.isfinite(adv).all() and (adv == 0).all() and zero.all()
            assert adv.dtype == torch.float32
    adv, zero = group_advantages(torch.full((4,), 3.0), 4, eps=0.0, global_std=True)  # batch std 0 too
    assert (adv == 0).all() and zero.all()


def test_global_std_divides_by_the_batch_spread() -> None:
    rewards = torch.tensor([0.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    adv, zero = group_advantages(rewards, 2, eps=0.0, global_std=True)
    batch_std = math.sqrt(0.5)  # population std of [0, 2, 1, 1]
    torch.testing.assert_close(adv, torch.tensor([-1 / batch_std, 1 / batch_std, 0.0, 0.0], dtype=torch.float64))
    assert zero.tolist() == [False, False, True, True]


def test_group_advantages_agree_with_flow_grpo_stat_tracker() -> None:
    """Flow-GRPO's flow_grpo/stat_tracking.py (type 'grpo'), transcribed as an independent check: per prompt,
    (r - mean) / (std + 1e-4) with numpy's population std, or the whole batch's std when global_std."""
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=24)
    prompts = np.repeat([f"p{i}" for i in range(4)], 6)
    for global_std in (False, True):
        expected = np.empty_like(rewards)
        for p in np.unique(prompts):
            r = rewards[prompts == p]
            std = np.std(rewards) + 1e-4 if global_std else np.std(r) + 1e-4
            expected[prompts == p] = (r - np.mean(r)) / std
        adv, _ = group_advantages(torch.from_numpy(rewards), 6, eps=1e-4, global_std=global_std)
        np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_group_advantages_refuse_a_batch_that_is_not_whole_groups() -> None:
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="eps"):
        group_advantages(torch.zeros(4), 2, eps=-1.0)


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


# ---- DPOK's KL at the stored states ----------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dpok_kl_is_at_the_stored_state_policy_mean_against_reference_mean(tiny_policy, train_prompts,
                                                                           reduction) -> None:
    perturb(tiny_policy)
    algo = build(DPOK, tiny_policy, train_prompts, reduction=reduction, beta=0.7, **SMALL)
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


def test_dpok_kl_gradient_pulls_the_policy_mean_towards_the_reference(tiny_policy, train_prompts) -> None:
    # With zero advantages only the KL acts: one SGD-like update along its gradient must shrink it.
    perturb(tiny_policy)
    algo = build(DPOK, tiny_policy, train_prompts, beta=1.0, **SMALL)
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


def test_dpok_other_divergences_come_from_divergences_py(tiny_policy, train_prompts) -> None:
    from bench.core.divergences import gaussian_divergence

    perturb(tiny_policy)
    for name in ("js", "hellinger", "tv", "chi2"):
        algo = build(DPOK, tiny_policy, train_prompts, divergence=name, **SMALL)
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


def test_dpok_with_zero_beta_is_ddpo_exactly() -> None:
    ddpo, dpok = one_ddpo_step(), one_ddpo_step(DPOK, beta=0.0)
    assert all(torch.equal(ddpo[k], dpok[k]) for k in ddpo)
    regularised = one_ddpo_step(DPOK, beta=100.0)
    assert any(not torch.equal(ddpo[k], regularised[k]) for k in ddpo)


# ---- GRPO's pieces ---------------------------------------------------------------------------------------
def test_grpo_shared_initial_noise_within_groups_only(tiny_policy, train_prompts) -> None:
    algo = build(GRPO, tiny_policy, train_prompts, same_latent=True, **SMALL)
    prompts = algo.draw_prompt_groups(2, 4)
    traj = sample(tiny_policy, prompts, algo.sampler, algo.generator, init=algo.initial_noise(prompts))
    start = traj.states[:, 0].flatten(1)  # (8, D)
    assert all(torch.equal(start[i], start[0]) for i in range(4))
    assert all(torch.equal(start[i], start[4]) for i in range(4, 8))
    assert not torch.equal(start[0], start[4])
    assert not torch.equal(traj.states[0, 1], traj.states[1, 1])  # their per-step noise differs
    assert build(GRPO, tiny_policy, train_prompts, **SMALL).initial_noise(prompts) is None  # Flow-GRPO's default


def test_grpo_timestep_fraction_trains_a_random_subset_of_steps(tiny_policy, train_prompts) -> None:
    algo = build(GRPO, tiny_policy, train_prompts, steps=8, timestep_fraction=0.5, **SMALL)
    draws = [algo.trained_steps(7) for _ in range(50)]
    assert all(len(d) == 3 and d == sorted(set(d)) and 0 <= d[0] and d[-1] < 7 for d in draws)  # int(0.5 x 7)
    assert len({tuple(d) for d in draws}) > 5  # not always the same steps
    assert build(GRPO, tiny_policy, train_prompts, timestep_fraction=0.01, **SMALL).trained_steps(3) != []
    assert build(GRPO, tiny_policy, train_prompts, **SMALL).trained_steps(3) == [0, 1, 2]


def test_grpo_fraction_lowers_the_compute_of_a_step(train_prompts) -> None:
    backward = {}
    for fraction in (1.0, 0.34):
        torch.manual_seed(0)
        policy = tiny(ModelConfig())
        algo = build(GRPO, policy, train_prompts, steps=4, timestep_fraction=fraction, beta=0.0, **SMALL)
        algo.step()
        backward[fraction] = policy.meter.counters()["nfe_backward"]
    assert backward == {1.0: 8 * 3, 0.34: 8 * 1}  # 8 samples x trained steps (int(0.34 x 3) = 1)


def test_grpo_advantages_are_by_position_and_log_the_zero_spread_share(tiny_policy, train_prompts) -> None:
    algo = build(GRPO, tiny_policy, train_prompts, prompts_per_step=2, samples_per_prompt=2, train_batch_size=2)
    same = ["a"] * 4  # one prompt drawn twice (prompt_replacement): still two groups
    adv, logs = algo.advantages(same, torch.tensor([1.0, 3.0, 2.0, 2.0]))
    a = 1 / (1 + 1e-4)  # group 0: ±1 / (std 1 + ε)
    torch.testing.assert_close(adv, torch.tensor([-a, a, 0.0, 0.0]))
    assert logs == {"zero_std_share": 0.5}
    adv, _ = build(GRPO, tiny_policy, train_prompts, adv_clip_max=0.5, **SMALL).advantages(
        ["a"] * 8, torch.arange(8.0))
    assert adv.abs().max().item() == 0.5  # clipped to ±A_max


# ---- one step on the tiny model --------------------------------------------------------------------------
@pytest.mark.parametrize("cls,fields", [
    (GRPO, {}), (GRPO, {"same_latent": True, "timestep_fraction": 0.5, "beta": 0.0, "global_std": True}),
    (DPOK, {}), (DPOK, {"divergence": "hellinger", "per_dim": "false"})])
def test_one_step_changes_the_lora_weights(tiny_policy, train_prompts, cls, fields) -> None:
    algo = build(cls, tiny_policy, train_prompts, steps=4, **SMALL, **fields)
    before = {k: v.clone() for k, v in tiny_policy.trainable_state_dict().items()}
    algo.step()  # the first step's ratio is 1 and its PPO term -mean(A): gradient, but a second one checks more
    logs = algo.step()
    after = tiny_policy.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(math.isfinite(v) for v in logs.values()) and logs["grad_norm"] > 0
    regularised = fields.get("beta", 1.0) > 0
    assert ("divergence" in logs) == regularised and (logs.get("divergence", 1.0) > 0)
    assert ("zero_std_share" in logs) == (cls is GRPO) and ("per_prompt_share" in logs) == (cls is DPOK)
    assert tiny_policy.meter.counters()["nfe"] > 0  # the step charged compute


# ---- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,fields,match", [
    (GRPO, {"timestep_fraction": 0.0}, r"timestep_fraction must be in \(0, 1\]"),
    (GRPO, {"timestep_fraction": 1.5}, r"timestep_fraction must be in \(0, 1\]"),
    (GRPO, {"samples_per_prompt": 1, "train_batch_size": 4}, "group size G"),
    (GRPO, {"stat_buffer": 5}, "GRPO's advantages use each step's group alone"),
    (GRPO, {"adv_eps": -1.0}, "adv_eps must be >= 0"),
    (GRPO, {"beta": -0.1}, "beta must be >= 0"),
    (DPOK, {"divergence": "kll"}, "did you mean 'kl'"),
    (DPOK, {"beta": float("nan")}, "beta must be >= 0"),
    (DPOK, {"per_dim": "maybe"}, "per_dim setting"),
    (DPOK, {"batch_size": 8}, "must equal prompts_per_step x samples_per_prompt"),
])
def test_bad_config_values_are_one_line_errors(tiny_policy, train_prompts, cls, fields, match) -> None:
    with pytest.raises(BenchError, match=match) as e:
        build(cls, tiny_policy, train_prompts, **fields)
    assert "\n" not in str(e.value)


def test_defaults_and_sweep_knobs() -> None:
    for name, cls in (("grpo", GRPO), ("dpok", DPOK)):
        target, overrides = method_class(name)
        assert target is cls and overrides == {}
        assert set(knobs_for(name)) == {"lr", "clip_range", "samples_per_prompt", "beta"}
        beta = knobs_for(name)["beta"]
        assert beta.log and beta.low == pytest.approx(0.1 * cls.Config.beta) and beta.high == pytest.approx(
            10 * cls.Config.beta)
        for k in knobs_for(name)["samples_per_prompt"].choices:  # every swept group size is a valid config
            cfg = cls.Config(samples_per_prompt=k)
            cfg.resolve(name)
            assert cfg.batch_size == cfg.prompts_per_step * k
    cfg = GRPOConfig()
    cfg.resolve("grpo")
    cfg.resolve("grpo")  # idempotent
    assert (cfg.batch_size, cfg.beta, cfg.adv_clip_max, cfg.same_latent, cfg.timestep_fraction) == (32, 0.04, 5.0,
                                                                                                     False, 1.0)
    assert isinstance(DPOKConfig(), DDPOConfig)


# ---- the command line ------------------------------------------------------------------------------------
CLI = [sys.executable, "-m", "bench.cli.main", "run", "--model", "tiny", "--methods", "grpo,dpok", "--rewards",
       "brightness", "--budget", "200nfe", "--no-progress", "--set", "eval.points=1", "--set", "eval.min_images=0",
       "--set", "eval.max_prompts=2", "--set", "eval.samples_per_prompt=2",
       "--set", "grpo.prompts_per_step=1", "--set", "grpo.samples_per_prompt=2", "--set", "grpo.train_batch_size=2",
       "--set", "dpok.prompts_per_step=1", "--set", "dpok.samples_per_prompt=2", "--set", "dpok.train_batch_size=2"]


def test_bench_run_trains_both_and_a_bad_value_is_one_line(tmp_path) -> None:
    import json

    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    p = subprocess.run([*CLI, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("grpo", "dpok"):
        run = tmp_path / "runs" / f"{name}__brightness__seed0"
        rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
        assert rows and all(r["nfe"] > 0 for r in rows) and "divergence" in rows[-1]
        assert json.loads((run / "summary.json").read_text())["nfe"] <= 200 * 1.005
    bad = subprocess.run([*CLI, "--set", "grpo.timestep_fraction=0", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("error: ") and "timestep_fraction" in bad.stderr


def test_two_processes_match_one(tmp_path) -> None:
    """tests/test_distributed.py's check for GRPO (shared initial noise and a step subset, both drawn from the
    method's generator in every process) and DPOK: the same compute and the same weights in 2 processes."""
    args = ["run", "--model", "tiny", "--methods", "grpo,dpok", "--rewards", "brightness", "--budget", "200nfe",
            "--no-progress", "--set", "eval.points=1", "--set", "eval.max_prompts=2", "--set", "eval.min_images=0",
            "--set", "method.prompts_per_step=2", "--set", "method.samples_per_prompt=4",
            "--set", "method.train_batch_size=4", "--set", "grpo.same_latent=true",
            "--set", "grpo.timestep_fraction=0.5", "--set", "grpo.beta=1", "--set", "sampler.steps=5"]
    from tests.multiprocess import assert_same_training, one_and_two_processes, tiny_initial_weights

    one, two, _ = one_and_two_processes(args, tmp_path)
    initial = tiny_initial_weights(0)
    for name in ("grpo__brightness__seed0", "dpok__brightness__seed0"):
        assert_same_training(one / "runs" / name, two / "runs" / name, initial)
