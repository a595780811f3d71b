"""GRPO (methods/grpo.py): group advantages on hand-computed values and against Flow-GRPO's stat tracker, the
normalisation by the group's or the batch's std, shared initial noise and the trained fraction of steps; with
`ddpo-kl` (DDPO's regulariser, which GRPO shares: tests/test_ddpo_kl.py), one step on the tiny model, the command
line in one and two processes, and one-line config errors. (DPOK as published: tests/test_dpok.py.)"""

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
from bench.core.sampler import sample
from bench.core.tiny import tiny
from bench.registry.lookup import knobs_for, method_class
from methods.ddpo import DDPO, DDPOConfig
from methods.grpo import GRPO, GRPOConfig
from methods.losses import group_advantages
from tests.conftest import PG_SMALL as SMALL
from tests.conftest import build_on_brightness as build



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
    algo = build(GRPO, tiny_policy, train_prompts, prompts_per_step=2, samples_per_prompt=2, train_batch_size=2,
                 adv_norm="group")
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
    (GRPO, {}), (GRPO, {"same_latent": True, "timestep_fraction": 0.5, "beta": 0.0, "adv_norm": "group"}),
    (DDPO, {"beta": 0.3}), (DDPO, {"beta": 0.3, "divergence": "hellinger", "per_dim": "false"})])
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
    assert ("zero_std_share" in logs) == (cls is GRPO) and ("per_prompt_share" in logs) == (cls is DDPO)
    assert tiny_policy.meter.counters()["nfe"] > 0  # the step charged compute


# ---- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,fields,match", [
    (GRPO, {"timestep_fraction": 0.0}, r"timestep_fraction must be in \(0, 1\]"),
    (GRPO, {"timestep_fraction": 1.5}, r"timestep_fraction must be in \(0, 1\]"),
    (GRPO, {"samples_per_prompt": 1, "train_batch_size": 4}, "group size G"),
    (GRPO, {"stat_buffer": 5}, "GRPO's advantages use each step's group alone"),
    (GRPO, {"adv_eps": -1.0}, "adv_eps must be >= 0"),
    (GRPO, {"beta": -0.1}, "beta must be >= 0"),
    (GRPO, {"adv_norm": "batch"}, "unknown grpo.adv_norm 'batch'"),
    (DDPO, {"divergence": "kll"}, "did you mean 'kl'"),
    (DDPO, {"beta": float("nan")}, "beta must be a finite number"),
    (DDPO, {"per_dim": "maybe"}, "per_dim setting"),
    (DDPO, {"batch_size": 8}, "must equal prompts_per_step x samples_per_prompt"),
])
def test_bad_config_values_are_one_line_errors(tiny_policy, train_prompts, cls, fields, match) -> None:
    with pytest.raises(BenchError, match=match) as e:
        build(cls, tiny_policy, train_prompts, **fields)
    assert "\n" not in str(e.value)


def test_defaults_and_sweep_knobs() -> None:
    for name, cls, beta in (("grpo", GRPO, 0.04), ("ddpo-kl", DDPO, 0.3)):
        target, overrides = method_class(name)
        assert target is cls and overrides == ({} if name == "grpo" else {"beta": 0.3})
        assert set(knobs_for(name)) == {"lr", "clip_range", "samples_per_prompt", "beta"}
        knob = knobs_for(name)["beta"]
        assert knob.log and knob.low == pytest.approx(0.1 * beta) and knob.high == pytest.approx(10 * beta)
        for k in knobs_for(name)["samples_per_prompt"].choices:  # every swept group size is a valid config
            cfg = cls.Config(**overrides, samples_per_prompt=k)
            cfg.resolve(name)
            assert cfg.batch_size == cfg.prompts_per_step * k
    assert "beta" not in knobs_for("ddpo")  # β = 0: DDPO itself, no regulariser to sweep
    cfg = GRPOConfig()
    cfg.resolve("grpo")
    cfg.resolve("grpo")  # idempotent
    assert (cfg.batch_size, cfg.beta, cfg.adv_clip_max, cfg.same_latent, cfg.timestep_fraction) == (32, 0.04, 5.0,
                                                                                                     False, 1.0)
    assert cfg.adv_norm == "global"  # Flow-GRPO's sample.global_std = True (methods/grpo.py cites the line)
    assert isinstance(GRPOConfig(), DDPOConfig)


def test_grpo_advantage_normalisation_group_or_global(tiny_policy, train_prompts) -> None:
    rewards = torch.tensor([0.0, 2.0, 10.0, 10.0, 1.0, 1.0, 4.0, 6.0])
    for norm in ("group", "global"):
        algo = build(GRPO, tiny_policy, train_prompts, prompts_per_step=2, samples_per_prompt=4, train_batch_size=4,
                     adv_norm=norm)
        adv, _ = algo.advantages(["a"] * 4 + ["b"] * 4, rewards)
        r = rewards.double().view(2, 4)
        std = r.std(dim=1, correction=0, keepdim=True) if norm == "group" else rewards.double().std(correction=0)
        expected = ((r - r.mean(1, keepdim=True)) / (std + 1e-4)).clamp(-5, 5).flatten().float()
        torch.testing.assert_close(adv, expected)


# ---- the command line ------------------------------------------------------------------------------------
CLI = [sys.executable, "-m", "bench.cli.main", "run", "--model", "tiny", "--methods", "grpo,ddpo-kl", "--rewards",
       "brightness", "--budget", "200nfe", "--no-progress", "--set", "eval.points=1", "--set", "eval.min_images=0",
       "--set", "eval.max_prompts=2", "--set", "eval.samples_per_prompt=2",
       "--set", "grpo.prompts_per_step=1", "--set", "grpo.samples_per_prompt=2", "--set", "grpo.train_batch_size=2",
       "--set", "ddpo-kl.prompts_per_step=1", "--set", "ddpo-kl.samples_per_prompt=2",
       "--set", "ddpo-kl.train_batch_size=2"]


def test_bench_run_trains_both_and_a_bad_value_is_one_line(tmp_path) -> None:
    import json

    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    p = subprocess.run([*CLI, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("grpo", "ddpo-kl"):
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
    method's generator in every process) and ddpo-kl: the same compute and the same weights in 2 processes."""
    args = ["run", "--model", "tiny", "--methods", "grpo,ddpo-kl", "--rewards", "brightness", "--budget", "200nfe",
            "--no-progress", "--set", "eval.points=1", "--set", "eval.max_prompts=2", "--set", "eval.min_images=0",
            "--set", "method.prompts_per_step=2", "--set", "method.samples_per_prompt=4",
            "--set", "method.train_batch_size=4", "--set", "grpo.same_latent=true",
            "--set", "grpo.timestep_fraction=0.5", "--set", "grpo.beta=1", "--set", "sampler.steps=5"]
    from tests.multiprocess import assert_same_training, one_and_two_processes, tiny_initial_weights

    one, two, _ = one_and_two_processes(args, tmp_path)
    initial = tiny_initial_weights(0)
    for name in ("grpo__brightness__seed0", "ddpo-kl__brightness__seed0"):
        assert_same_training(one / "runs" / name, two / "runs" / name, initial)
