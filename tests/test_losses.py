"""Tests of methods/losses.py on hand-computed values: PPO-clip, D3PO's per-step DPO loss, advantages."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from methods.losses import PerPromptStatTracker, clip_advantages, d3po_loss, ppo_clip_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_ppo_clip_loss_hand_computed() -> None:
    eps = 0.2
    # (advantage, ratio): A>0 above / below the range, A<0 above / below, and inside the range.
    advantages = torch.tensor([1.0, 1.0, -2.0, -2.0, 0.5], dtype=torch.float64)
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1], dtype=torch.float64)
    old_log_prob = torch.tensor([-3.0, -1.0, 0.5, 2.0, -0.2], dtype=torch.float64)
    log_prob = (old_log_prob + ratios.log()).requires_grad_(True)
    loss, info = ppo_clip_loss(log_prob, old_log_prob, advantages, eps)
    # max(-A r, -A clamp(r)): -1.2 (clipped), -0.5, 3.0, 1.6 (clipped), -0.55.
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 3.0 + 1.6 - 0.55) / 5)
    loss.backward()
    # d loss / d log_prob = -A r / n where the unclipped term is active, 0 where the clamp is.
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, -0.1, 0.6, 0.0, -0.11], dtype=torch.float64))
    assert info["clipfrac"] == pytest.approx(4 / 5)
    assert info["approx_kl"] == pytest.approx(0.5 * float((ratios.log() ** 2).mean()))
    assert all(isinstance(v, float) for v in info.values())


def test_ppo_ratio_one_gives_minus_mean_advantage() -> None:
    advantages = torch.tensor([0.3, -1.7, 2.0, 0.0])
    log_prob = torch.tensor([-1.0, 0.0, 4.0, 2.5])
    loss, info = ppo_clip_loss(log_prob, log_prob.clone(), advantages, 1e-4)
    assert loss.item() == pytest.approx(-float(advantages.mean()))
    assert info == {"approx_kl": 0.0, "clipfrac": 0.0}


def test_d3po_loss_inside_clamp() -> None:
    beta, clip = 0.1, 0.1
    logp_w = torch.tensor([0.05], dtype=torch.float64, requires_grad=True)
    logp_l = torch.tensor([-0.05], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    loss, info = d3po_loss(logp_w, zero, logp_l, zero, beta, clip)
    # -log sigmoid(x) = softplus(-x), x = 0.1 * (0.05 - (-0.05)) = 0.01.
    assert loss.item() == pytest.approx(softplus(-0.01))
    loss.backward()
    sig = 1 / (1 + math.exp(0.01))  # d softplus(-x) / dx = -sigmoid(-x)
    assert float(logp_w.grad) == pytest.approx(-beta * sig)
    assert float(logp_l.grad) == pytest.approx(beta * sig)
    assert info["accuracy"] == 1.0 and info["margin"] == pytest.approx(0.01) and info["clipfrac"] == 0.0


def test_d3po_loss_hits_ratio_clamp() -> None:
    beta, clip = 0.1, 0.1
    # Winner's ratio e^1 > 1.1, loser's e^-1 < 0.9: both clamped, so no gradient flows.
    logp_w = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    ref_logp_w = torch.tensor([-2.0], dtype=torch.float64)
    logp_l = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    ref_logp_l = torch.tensor([-2.0], dtype=torch.float64)
    loss, info = d3po_loss(logp_w, ref_logp_w, logp_l, ref_logp_l, beta, clip)
    assert loss.item() == pytest.approx(softplus(-beta * (math.log(1.1) - math.log(0.9))))
    loss.backward()
    assert float(logp_w.grad) == 0.0 and float(logp_l.grad) == 0.0
    # Unclamped margin 0.1 * (1 - (-1)) = 0.2; both ratios were changed by the clamp.
    assert info["margin"] == pytest.approx(0.2) and info["clipfrac"] == 1.0


def test_d3po_matches_clamp_before_log_and_survives_overflow() -> None:
    gen = torch.Generator().manual_seed(0)
    logp_w, ref_w, logp_l, ref_l = (0.3 * torch.randn(64, generator=gen, dtype=torch.float64) for _ in range(4))
    loss, _ = d3po_loss(logp_w, ref_w, logp_l, ref_l, 0.1, 0.1)
    # D3PO's form (docs/methods.md section 5): the ratio is clamped, then logged.
    ratio_w = torch.clamp(torch.exp(logp_w - ref_w), 0.9, 1.1)
    ratio_l = torch.clamp(torch.exp(logp_l - ref_l), 0.9, 1.1)
    expected = -torch.log(torch.sigmoid(0.1 * (ratio_w.log() - ratio_l.log()))).mean()
    torch.testing.assert_close(loss, expected)
    # A log-ratio of 1000 overflows exp(); the loss and its (zero) gradient must stay finite.
    huge = torch.tensor([1000.0], requires_grad=True)
    loss, _ = d3po_loss(huge, torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, 0.1)
    loss.backward()
    assert math.isfinite(loss.item()) and float(huge.grad) == 0.0


def test_d3po_accuracy() -> None:
    logp_w = torch.tensor([0.2, 0.0, -0.1])
    logp_l = torch.tensor([0.0, 0.1, -0.3])
    zeros = torch.zeros(3)
    _, info = d3po_loss(logp_w, zeros, logp_l, zeros, 2.0, 0.5)
    assert info["accuracy"] == pytest.approx(2 / 3)
    assert info["margin"] == pytest.approx(2.0 * (0.2 - 0.1 + 0.2) / 3)


def test_clip_advantages_keeps_type() -> None:
    clipped = clip_advantages(torch.tensor([-12.0, 3.0, 10.5]), 10.0)
    torch.testing.assert_close(clipped, torch.tensor([-10.0, 3.0, 10.0]))
    np.testing.assert_array_equal(clip_advantages(np.array([-1.0, 0.2, 5.0]), 1.0), [-1.0, 0.2, 1.0])


def normalise(values: list[float], source: list[float]) -> np.ndarray:
    return (np.array(values) - np.mean(source)) / (np.std(source) + 1e-6)


def test_stat_tracker_batch_fallback_then_per_prompt_then_truncation() -> None:
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    # Neither prompt has 3 rewards yet: both use the batch's statistics.
    adv = tracker.update(["a", "a", "b"], np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(adv, normalise([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    # "a" now holds [1, 2, 3] (per-prompt statistics); "b" holds [3, 5] (still the batch [3, 5]).
    adv = tracker.update(["a", "b"], torch.tensor([3.0, 5.0]))
    np.testing.assert_allclose(adv, [normalise([3.0], [1.0, 2.0, 3.0])[0], normalise([5.0], [3.0, 5.0])[0]])
    assert adv.dtype == np.float64
    # "a" gets 3 more: its buffer keeps only the last 4, [3, 10, 11, 12].
    adv = tracker.update(["a", "a", "a"], [10.0, 11.0, 12.0])
    np.testing.assert_allclose(adv, normalise([10.0, 11.0, 12.0], [3.0, 10.0, 11.0, 12.0]))
    assert tracker.get_stats()["a"]["count"] == 4


def test_stat_tracker_state_round_trip() -> None:
    tracker = PerPromptStatTracker(buffer_size=5, min_count=2)
    tracker.update(["x", "y", "x"], np.array([0.5, -1.0, 1.5]))
    state = json.loads(json.dumps(tracker.state_dict()))  # must be plain JSON
    restored = PerPromptStatTracker(buffer_size=5, min_count=2)
    restored.load_state_dict(state)
    batch = (["x", "y", "z"], np.array([2.0, 0.0, 1.0]))
    np.testing.assert_array_equal(restored.update(*batch), tracker.update(*batch))
    assert restored.state_dict() == tracker.state_dict()


def test_stat_tracker_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        PerPromptStatTracker(4, 2).update(["a"], np.array([1.0, 2.0]))


def test_stat_tracker_mask_says_which_statistics_were_used() -> None:
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    # The same sequence as the fallback test above: the mask follows each prompt's buffer length.
    adv, own = tracker.update_with_mask(["a", "a", "b"], np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(own, [False, False, False])
    np.testing.assert_allclose(adv, normalise([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    adv, own = tracker.update_with_mask(["a", "b"], torch.tensor([3.0, 5.0]))
    np.testing.assert_array_equal(own, [True, False])
    assert own.dtype == bool and own.shape == (2,)
    # update() is update_with_mask()'s advantages.
    twin = PerPromptStatTracker(buffer_size=4, min_count=3)
    twin.load_state_dict(tracker.state_dict())
    batch = (["b", "a", "c"], np.array([0.0, 4.0, 1.0]))
    adv, own = tracker.update_with_mask(*batch)
    np.testing.assert_array_equal(twin.update(*batch), adv)
    np.testing.assert_array_equal(own, [True, True, False])


def test_stat_tracker_groups_of_min_count_use_their_own_statistics_at_once() -> None:
    # P = 3 prompts x K = 4 samples with min_count = K: each group is normalised by itself on its first visit.
    tracker = PerPromptStatTracker(buffer_size=8, min_count=4)
    prompts = [p for p in "xyz" for _ in range(4)]
    rewards = np.arange(12.0) ** 1.5
    adv, own = tracker.update_with_mask(prompts, rewards)
    assert own.all()
    for g in range(3):
        group = rewards[4 * g:4 * g + 4]
        np.testing.assert_allclose(adv[4 * g:4 * g + 4], normalise(list(group), list(group)))
        assert abs(adv[4 * g:4 * g + 4].sum()) < 1e-9  # a per-prompt baseline: zero-sum within the group
