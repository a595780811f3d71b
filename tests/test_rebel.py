"""REBEL (methods/rebel.py): its loss on hand-computed inputs and against a transcription of RLCM's formula; the
pair structure (same prompt, independent or shared initial noise); the memory-saving per-step backward gives the
same update as the one-graph default at one more forward per step; one step trains the tiny model; `bench run`
accepts it, bad values give one line, and 2 processes reproduce 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import methods.rebel as rebel_module
from bench.core.compute import ComputeMeter
from bench.core.errors import BenchError
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig, sample
from bench.core.tiny import tiny
from bench.registry.lookup import knobs_for, method_class
from methods.losses import rebel_loss
from methods.rebel import REBEL, REBELConfig
from rewards.toy import Brightness

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SMALL = ["--model", "tiny", "--rewards", "brightness", "--budget", "200nfe", "--no-progress",
         "--set", "eval.points=1", "--set", "eval.min_images=0", "--set", "eval.max_prompts=2",
         "--set", "rebel.batch_size=4", "--set", "rebel.train_batch_size=1"]


# ---- the loss -----------------------------------------------------------------------------------------------
def hand_inputs():
    """B = 2 pairs, K = 2 steps. Δ(y) = (0.25, -1), Δ(y') = (-0.5, 1); A - A' = (1.5, -1.5)."""
    lp = torch.tensor([[0.5, 0.25], [0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.25, 0.25], [0.0, 1.0]])
    lp_p = torch.tensor([[1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    old_p = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    adv_p = torch.tensor([-0.5, 0.5])
    return lp, old, lp_p, old_p, adv, adv_p


def test_rebel_loss_hand_computed() -> None:
    lp, old, lp_p, old_p, adv, adv_p = hand_inputs()
    loss, info = rebel_loss(lp, old, lp_p, old_p, adv, adv_p, eta=2.0)
    # η (Δ - Δ') = 2 (0.75, -2) = (1.5, -4); residuals (1.5 - 1.5, -4 + 1.5) = (0, -2.5); loss = 6.25 / 2.
    assert loss.item() == pytest.approx(3.125)
    assert info["gap"] == pytest.approx(2.75)  # mean(|1.5|, |-4|)
    assert info["agreement"] == 1.0  # both gaps have their target's sign
    assert info["explained"] == pytest.approx(1 - 3.125 / 2.25)  # mean target² = 2.25: an overshoot
    loss.backward()
    # ∂loss/∂ℓ_θ(k; y_b) = (2 / B) η residual_b, the same for every step k; the opposite for y'.
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.0], [-5.0, -5.0]]))
    torch.testing.assert_close(lp_p.grad, torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    torch.testing.assert_close(adv.grad, torch.tensor([0.0, 2.5]))


def test_rebel_loss_at_old_policy_is_the_squared_advantage_gap() -> None:
    lp = torch.randn(3, 4)
    adv, adv_p = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, -1.0])
    loss, info = rebel_loss(lp, lp, lp, lp, adv, adv_p, eta=10.0)
    assert loss.item() == pytest.approx((1 + 0 + 9) / 3)
    assert (info["gap"], info["agreement"], info["explained"]) == (0.0, 0.0, pytest.approx(0.0, abs=1e-7))
    empty = torch.zeros(3, 0)  # no stochastic step (sampler.steps = 1): Δ = 0
    assert rebel_loss(empty, empty, empty, empty, adv, adv_p, 1.0)[0].item() == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="eta"):
        rebel_loss(lp, lp, lp, lp, adv, adv_p, eta=0.0)


def rlcm_rebel_loss(sample1: dict, sample2: dict, rebel_lr: float, literal: bool = False) -> torch.Tensor:
    """Transcribed from Owen-Oertell/rlcm lcm_rl_pytorch/core/rebel_training_loop.py, lines 268-331, with the
    re-scored per-step log-probs given (sample["new_log_probs"], (B, T)) in place of its UNet and scheduler calls.
    `literal`: its torch.cat of the per-timestep (B,) tensors (lines 321-325), which sums over the minibatch too;
    otherwise the per-sample stack the old-policy sum (line 268) implies."""
    pi_theta_t_y = sample1["log_probs"].sum(dim=1)
    pi_theta_t_y_prime = sample2["log_probs"].sum(dim=1)
    num_timesteps = sample1["log_probs"].shape[1]
    pi_theta_y = [sample1["new_log_probs"][:, j] for j in range(num_timesteps)]
    pi_theta_y_prime = [sample2["new_log_probs"][:, j] for j in range(num_timesteps)]
    join = torch.cat if literal else torch.stack
    pi_theta_y = join(pi_theta_y, dim=-1)
    pi_theta_y_prime = join(pi_theta_y_prime, dim=-1)
    pi_theta_y = pi_theta_y.sum(dim=-1)
    pi_theta_y_prime = pi_theta_y_prime.sum(dim=-1)
    log_difference = pi_theta_y - pi_theta_t_y - (pi_theta_y_prime - pi_theta_t_y_prime)
    advantage_difference = sample1["advantages"] - sample2["advantages"]
    loss = rebel_lr * log_difference - advantage_difference
    return torch.square(loss).mean()


@pytest.mark.parametrize("eta", [1.0, 0.3, 50.0])
def test_rebel_loss_matches_rlcm_formula(eta: float) -> None:
    g = torch.Generator().manual_seed(0)
    pairs, steps = 5, 7
    s1, s2 = ({"log_probs": torch.randn(pairs, steps, generator=g),
               "new_log_probs": torch.randn(pairs, steps, generator=g) * 0.1,
               "advantages": torch.randn(pairs, generator=g)} for _ in range(2))
    s1["new_log_probs"] += s1["log_probs"]
    s2["new_log_probs"] += s2["log_probs"]
    ours, _ = rebel_loss(s1["new_log_probs"], s1["log_probs"], s2["new_log_probs"], s2["log_probs"],
                         s1["advantages"], s2["advantages"], eta)
    torch.testing.assert_close(ours, rlcm_rebel_loss(s1, s2, eta))
    # RLCM's literal concatenation agrees only with one pair per minibatch (its configs use 2: see the docstring).
    one = lambda s: {k: v[:1] for k, v in s.items()}  # noqa: E731
    ours_one, _ = rebel_loss(s1["new_log_probs"][:1], s1["log_probs"][:1], s2["new_log_probs"][:1],
                             s2["log_probs"][:1], s1["advantages"][:1], s2["advantages"][:1], eta)
    torch.testing.assert_close(ours_one, rlcm_rebel_loss(one(s1), one(s2), eta, literal=True))
    assert not torch.allclose(ours, rlcm_rebel_loss(s1, s2, eta, literal=True))


# ---- the method on the tiny model --------------------------------------------------------------------------
def rebel(policy, prompts, steps=3, **fields) -> REBEL:
    return REBEL("rebel", REBELConfig(**fields), policy, SamplerConfig(steps=steps), Brightness(), prompts,
                 torch.Generator().manual_seed(0))


def test_one_step_changes_the_lora_weights(tiny_policy, train_prompts) -> None:
    algo = rebel(tiny_policy, train_prompts, batch_size=8, train_batch_size=2)
    before = {k: v.clone() for k, v in tiny_policy.trainable_state_dict().items()}
    logs = algo.step()
    after = tiny_policy.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert logs["grad_norm"] > 0 and logs["loss"] > 0
    assert tiny_policy.meter.nfe_forward > 0  # it charged compute


@pytest.mark.parametrize("shared", [False, True])
def test_pairs_share_a_prompt_and_their_initial_noise_only_when_asked(tiny_policy, train_prompts, monkeypatch,
                                                                      shared) -> None:
    seen = {}

    def spy(policy, prompts, cfg, generator, **kw):
        traj = sample(policy, prompts, cfg, generator, **kw)
        seen.update(prompts=prompts, init=traj.states[:, 0])
        return traj

    monkeypatch.setattr(rebel_module, "sample", spy)
    rebel(tiny_policy, train_prompts, batch_size=8, train_batch_size=4, shared_init=shared).step()
    prompts, init = seen["prompts"], seen["init"]  # (8,), (8, C, H, W)
    assert prompts[0::2] == prompts[1::2] and len(set(prompts[0::2])) == 4  # pairs of 4 distinct prompts
    same = [torch.equal(init[2 * i], init[2 * i + 1]) for i in range(4)]
    assert all(same) if shared else not any(same)


def test_memory_saving_gives_the_same_gradient_for_one_more_forward_per_step(train_prompts) -> None:
    torch.manual_seed(0)
    policy = tiny(ModelConfig(), ComputeMeter())
    algo = rebel(policy, train_prompts, steps=4, batch_size=8, train_batch_size=2, eta=1e4)
    pairs = [p for p in train_prompts for _ in range(2)]  # (8,): 4 pairs
    traj = sample(policy, pairs, algo.sampler, torch.Generator().manual_seed(1))  # stored under θ_old
    algo.step()  # θ moves away from θ_old, so Δ ≠ 0 and every step's log-ratio enters the residual
    adv = torch.randn(8, generator=torch.Generator().manual_seed(2))
    grads = []

    def keep_gradient():  # in place of the optimizer step: record the summed gradient, leave θ unchanged
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
        algo.optimizer.zero_grad(set_to_none=True)
        return 0.0

    algo.update = keep_gradient
    logs, cost = [], []
    for saving in (False, True):
        algo.cfg.memory_saving = saving
        sums = dict.fromkeys(("loss", "gap", "agreement", "explained", "terms"), 0.0)
        m = policy.meter
        before = (m.nfe_forward, m.nfe_backward, m.nfe_recompute)
        algo.pair_update(traj, adv, 1.0, sums)
        cost.append((m.nfe_forward - before[0], m.nfe_backward - before[1], m.nfe_recompute - before[2]))
        logs.append(sums)
    assert logs[0]["gap"] > 0.1 and logs[0]["terms"] == logs[1]["terms"] == 1  # the regression term is active
    for key in ("loss", "gap", "agreement", "explained"):
        assert logs[1][key] == pytest.approx(logs[0][key], rel=1e-6, abs=1e-9), key
    assert grads[0].norm() > 0 and (grads[1] - grads[0]).norm() <= 1e-5 * grads[0].norm()
    # 8 trajectories x 3 stochastic steps: a forward and a backward each, and with memory_saving one more forward,
    # counted as recomputation (bench/core/compute.py): the algorithm's count is the same.
    assert cost == [(8 * 3, 8 * 3, 0), (8 * 3, 8 * 3, 8 * 3)]


def test_bad_pairing_and_values_are_errors(tiny_policy, train_prompts) -> None:
    for fields, match in (({"batch_size": 7}, "pairs"), ({"batch_size": 8, "train_batch_size": 3}, "pairs"),
                          ({"eta": 0.0}, "eta"), ({"inner_epochs": 0}, "inner_epochs"),
                          ({"stat_min_count": 40}, "stat_min_count")):
        with pytest.raises(BenchError, match=match):
            rebel(tiny_policy, train_prompts, **fields)


def test_registered_with_its_knobs() -> None:
    cls, overrides = method_class("rebel")
    assert cls is REBEL and overrides == {}
    knobs = knobs_for("rebel")
    assert set(knobs) == {"lr", "eta", "train_batch_size"}
    pairs = REBELConfig().batch_size // 2
    assert all(pairs % m == 0 for m in knobs["train_batch_size"].choices)  # every choice is a valid config
    assert knobs["eta"].low <= 1.0 <= knobs["eta"].high  # RLCM's rebel_lr


# ---- through the command line ------------------------------------------------------------------------------
def bench(*args):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def test_bench_run_and_one_line_errors(tmp_path) -> None:
    p = bench("run", "--methods", "rebel", *SMALL, "--out", str(tmp_path / "a"))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "a" / "runs" / "rebel__brightness__seed0" / "summary.json").read_text())
    assert summary["status"] == "complete" and 0 < summary["nfe"] <= 200 * 1.005
    for bad, match in (("rebel.eta=-1", "eta must be > 0"), ("rebel.train_batch_size=3", "twice a multiple")):
        p = bench("run", "--methods", "rebel", *SMALL, "--set", bad, "--out", str(tmp_path / "b"))
        err = p.stderr.strip()
        assert p.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
        assert match in err and "Traceback" not in err, err


def test_two_processes_match_one(tmp_path) -> None:
    # 2 pairs per process; memory_saving: its own backward loop, where a process may hold none of a minibatch
    args = ["run", "--methods", "rebel", *SMALL, "--set", "rebel.batch_size=8", "--set", "rebel.memory_saving=true"]
    from tests.multiprocess import one_and_two_processes

    one, two, _ = one_and_two_processes(args, tmp_path)
    run = "rebel__brightness__seed0"
    a, b = (json.loads((d / "runs" / run / "summary.json").read_text()) for d in (one, two))
    assert (a["processes"], b["processes"]) == (1, 2)
    assert (a["nfe"], a["steps"], a["images"]) == (b["nfe"], b["steps"], b["images"])
    wa, wb = (load_file(str(d / "runs" / run / "adapter.safetensors")) for d in (one, two))
    for k in wa:  # a minibatch of 1 pair lies in one process: the other joins the gradient sum with none
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=5e-5)
    assert any("lora_B" in k and wa[k].abs().max() > 0 for k in wa)
