"""Loss math shared by the policy-gradient methods: PPO-clip (DDPO/RLCM, GRPO), DPOK's clamped-ratio loss, per-step
DPO (D3PO), REBEL's regression, ReFL's hinge, advantages.

See docs/methods.md sections 4 and 5. Log-probabilities are per sampler step, shape (B,) (or any shape: every
loss here averages over all elements); how they are reduced over latent dimensions is the sampler's option.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate for one stored step, as DDPO/RLCM compute it.

    ratio = exp(log_prob - old_log_prob); loss = mean(max(-A ratio, -A clamp(ratio, 1 - eps, 1 + eps))).
    All inputs broadcast to one shape (normally (B,)). info: approx_kl = mean((log_prob - old)^2) / 2 and
    clipfrac = fraction of |ratio - 1| > eps, both Python floats.
    """
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        info = {
            "approx_kl": float(0.5 * (log_ratio**2).mean()),
            "clipfrac": float(((ratio - 1.0).abs() > clip_range).float().mean()),
        }
    return loss, info


def _clamped_log_ratio(log_prob: Tensor, ref_log_prob: Tensor, ratio_clip: float) -> Tensor:
    """log(clamp(exp(log_prob - ref_log_prob), 1 - c, 1 + c)), computed as a clamp of the log-ratio.

    Same value and same gradient (1 inside, 0 outside) as D3PO's form, but exp cannot overflow into
    0 * inf = NaN in the backward pass. c >= 1 leaves the ratio without a lower bound.
    """
    low = math.log(1.0 - ratio_clip) if ratio_clip < 1.0 else -math.inf
    return torch.clamp(log_prob - ref_log_prob, low, math.log1p(ratio_clip))


def d3po_loss(
    logp_w: Tensor,
    ref_logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_l: Tensor,
    beta: float,
    ratio_clip: float,
) -> tuple[Tensor, dict[str, float]]:
    """Per-step DPO loss of D3PO on the winner (w) and loser (l) trajectories' step j, averaged.

    loss = -log sigmoid(beta [log r_w - log r_l]),  r = clamp(exp(logp - ref_logp), 1 - c, 1 + c).
    The clamp goes on each trajectory's ratio *before* the log, separately for winner and loser, exactly as
    yk7333/d3po scripts/train.py (lines 411-413) and scripts/rm/train_d3po.py (lines 597-599) do
    ("clip the Q value"); their default c = train.eps = 0.1 (config/base.py). A clamped ratio passes no
    gradient. Ties are the caller's business (D3PO's compare() gives a tie zero weight: drop tied pairs).

    info (floats): accuracy = fraction of pairs whose implicit reward margin
    beta [(logp_w - ref_logp_w) - (logp_l - ref_logp_l)] is > 0, margin = its mean (both *unclamped*: they
    describe the policy, not the loss), clipfrac = fraction of the 2 x B ratios the clamp changed.
    """
    if ratio_clip <= 0:
        raise ValueError(f"ratio_clip must be > 0, got {ratio_clip}")
    log_ratio_w = _clamped_log_ratio(logp_w, ref_logp_w, ratio_clip)
    log_ratio_l = _clamped_log_ratio(logp_l, ref_logp_l, ratio_clip)
    # logsigmoid: same value as D3PO's log(sigmoid(.)) without underflow to log(0).
    loss = -F.logsigmoid(beta * (log_ratio_w - log_ratio_l)).mean()
    with torch.no_grad():
        raw_w = logp_w - ref_logp_w
        raw_l = logp_l - ref_logp_l
        margin = beta * (raw_w - raw_l)
        changed = torch.cat([(raw_w != log_ratio_w).flatten(), (raw_l != log_ratio_l).flatten()])
        info = {
            "accuracy": float((margin > 0).float().mean()),
            "margin": float(margin.mean()),
            "clipfrac": float(changed.float().mean()),
        }
    return loss, info


def rebel_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    log_prob_prime: Tensor,
    old_log_prob_prime: Tensor,
    advantages: Tensor,
    advantages_prime: Tensor,
    eta: float,
) -> tuple[Tensor, dict[str, float]]:
    """REBEL's squared regression loss on pairs (y, y') of trajectories of one prompt (Gao et al. 2024), in
    RLCM's form (Owen-Oertell/rlcm lcm_rl_pytorch/core/rebel_training_loop.py, lines 268-331):

        Δ(y) = Σ_k [log_prob(k; y) - old_log_prob(k; y)]          (a sum over the stochastic steps k)
        loss = mean over pairs of ( eta · (Δ(y) - Δ(y')) - (A(y) - A(y')) )²

    Log-probabilities are (B, K): B pairs, K steps (the last dim is summed; K = 0 gives Δ = 0); advantages
    are (B,). `eta` is RLCM's `rebel_lr` (1 there), i.e. 1/η of the paper's (1/η)·log-ratio form. Δ is per
    trajectory: RLCM's new-policy sum (its lines 321-325) also runs over the minibatch's samples, which its
    own old-policy sum (line 268) does not do; we read that as a slip and sum over steps only.

    info (floats, on the pairs): gap = mean |eta (Δ(y) - Δ(y'))|; agreement = fraction of pairs whose
    log-ratio gap has the sign of their advantage gap (0 while θ = θ_old); explained = 1 - loss /
    mean((A - A')²), the share of the target's square the fit removes (0 at θ_old, 1 at a perfect fit).
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    gap = eta * ((log_prob - old_log_prob).sum(-1) - (log_prob_prime - old_log_prob_prime).sum(-1))  # (B,)
    target = advantages - advantages_prime  # (B,)
    loss = ((gap - target) ** 2).mean()
    with torch.no_grad():
        info = {
            "gap": float(gap.abs().mean()),
            "agreement": float((gap * target > 0).float().mean()),
            "explained": float(1.0 - loss / (target**2).mean().clamp_min(1e-12)),
        }
    return loss, info


def refl_loss(reward: Tensor, shift: float, scale: float) -> tuple[Tensor, dict[str, float]]:
    """ReFL's reward loss (Xu et al. 2023; THUDM/ImageReward ImageReward/ReFL.py at c1392c6, lines 755-756):

        loss = scale · mean( relu(shift - reward) )

    ImageReward's constants are shift = 2 and scale = grad_scale = 1e-3 (scripts/train_refl.sh), set for its
    score, which is standardised (about zero mean, unit spread): a reward stops pulling once it is above `shift`
    (about two standard deviations above the mean there), and `scale` only shrinks the gradient (under Adam it
    matters through gradient clipping and ε alone). methods/refl.py passes every reward standardised by the base
    model's statistics, so those constants serve any reward. reward: (B,).

    info (floats): active = fraction of rewards below shift (those with gradient), hinge = mean relu(shift - r).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    hinge = F.relu(shift - reward)  # (B,)
    with torch.no_grad():
        info = {"active": float((reward < shift).float().mean()), "hinge": float(hinge.mean())}
    return hinge.mean() * scale, info


def dpok_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    ratio_clip: float,
    kl: Tensor,
    reward_weight: float,
    kl_weight: float,
) -> tuple[Tensor, dict[str, float]]:
    """DPOK's policy loss on a batch of replayed single transitions (Fan et al. 2023; google-research/DPOK
    train_online_pg.py `_train_policy_func`):

        ρ = clamp( exp(log_prob - old_log_prob), 1 - c, 1 + c )
        loss = mean( -reward_weight · A · ρ )  +  kl_weight · mean(kl)

    A clamp of the ratio, not PPO's pessimistic min of the clipped and unclipped terms: outside the band a
    transition passes no policy gradient, whatever the sign of A. (Computed as a clamp of the log-ratio, the same
    value and gradient without an overflowing exp.) All inputs (B,), A = reward - V(x_k) from the value baseline,
    kl the per-transition divergence to the frozen model (with gradient through the policy's side only).

    info (floats): ratio = mean clamped ratio (DPOK's logged "ratio"), clipfrac = share of transitions outside the
    band, kl = mean(kl), policy_loss = the first term.
    """
    if ratio_clip <= 0:
        raise ValueError(f"ratio_clip must be > 0, got {ratio_clip}")
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(_clamped_log_ratio(log_prob, old_log_prob, ratio_clip))
    policy_loss = (-reward_weight * advantages * ratio).mean()
    mean_kl = kl.mean()
    loss = policy_loss + kl_weight * mean_kl
    with torch.no_grad():
        info = {"ratio": float(ratio.mean()), "kl": float(mean_kl), "policy_loss": float(policy_loss),
                "clipfrac": float(((torch.exp(log_ratio) - 1.0).abs() > ratio_clip).float().mean())}
    return loss, info


def clip_advantages(adv: Tensor | np.ndarray, max_abs: float) -> Tensor | np.ndarray:
    """Advantages clipped to [-max_abs, max_abs] (DDPO's adv_clip_max); keeps the input's type."""
    if max_abs <= 0:
        raise ValueError(f"max_abs must be > 0, got {max_abs}")
    if isinstance(adv, Tensor):
        return torch.clamp(adv, -max_abs, max_abs)
    return np.clip(adv, -max_abs, max_abs)


def regularised_ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    divergence: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip on one stored step plus β times the batch mean of a per-sample divergence to the reference
    policy at that step (DPOK, Fan et al. 2023; Flow-GRPO's per-step KL, Liu et al. 2025):

        loss = ppo_clip_loss(log_prob, old_log_prob, A, eps) + beta * mean(divergence)

    divergence: (B,) D(π_θ(·|x_k) ‖ π_ref(·|x_k)) at the stored states x_k, with gradient w.r.t. θ only
    through the policy's mean (the caller computes the reference mean without gradient). beta = 0 gives
    ppo_clip_loss exactly. info: ppo_clip_loss's, plus policy_loss (the PPO term) and divergence (its mean).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    policy_loss, info = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
    mean_divergence = divergence.mean()
    loss = policy_loss + beta * mean_divergence
    info |= {"divergence": float(mean_divergence.detach()), "policy_loss": float(policy_loss.detach())}
    return loss, info


def group_advantages(
    rewards: Tensor,
    group_size: int,
    eps: float = 1e-4,
    global_std: bool = False,
) -> tuple[Tensor, Tensor]:
    """GRPO's group-relative advantages (Flow-GRPO, DanceGRPO): rewards (B,) laid out as B / G consecutive
    groups of G samples of one prompt, [g_0] * G + [g_1] * G + …, and

        A_i = (r_i - mean_G r) / (std_G r + eps),

    mean and std over the sample's own group, std the population one (ddof 0, as Flow-GRPO's np.std; DanceGRPO
    uses torch.std, ddof 1). global_std: divide by the std of the whole batch instead (Flow-GRPO's
    sample.global_std). A group whose rewards are all equal carries no preference: its advantages are exactly
    0 (never 0/0 = NaN, nor rounding noise divided by eps, whatever eps, even 0).

    Computed in float64; returns (advantages (B,) in the rewards' dtype, zero_std (B,) bool: True where the
    sample's group had no spread). The caller clips them (clip_advantages) if it wants.
    """
    if group_size < 1 or rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size {group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    r = rewards.detach().to(torch.float64).reshape(-1, group_size)  # (B/G, G)
    centred = r - r.mean(dim=1, keepdim=True)  # (B/G, G)
    if global_std:  # (1, 1): the whole batch's spread
        std = r.reshape(-1).std(correction=0).reshape(1, 1)
    else:  # (B/G, 1): each group's own
        std = r.std(dim=1, correction=0, keepdim=True)
    zero = (r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)).expand_as(r)  # (B/G, G)
    # The denominator of a zero-spread group is replaced by 1 so that no 0/0 is ever formed (its value is 0).
    adv = torch.where(zero, torch.zeros_like(r), centred / torch.where(zero, torch.ones_like(std), std + eps))
    return adv.reshape(-1).to(rewards.dtype), zero.reshape(-1)


class PerPromptStatTracker:
    """Running per-prompt reward mean/std, as DDPO's ddpo_pytorch/stat_tracking.py keeps them.

    Each prompt keeps its last `buffer_size` rewards. update() first appends the batch's rewards to their
    prompts' buffers, then normalises each reward with its prompt's buffer statistics once that buffer holds
    at least `min_count` rewards, and with the whole batch's statistics before that. The batch fallback mostly
    measures "was this an easy prompt", so how often it happens matters: update_with_mask says which rewards
    got which (a batch of groups of >= min_count samples per prompt never falls back).
    """

    def __init__(self, buffer_size: int, min_count: int) -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: np.ndarray | Tensor) -> np.ndarray:
        """Advantages (r - mean) / (std + 1e-6), float64, shape (B,), for rewards of shape (B,)."""
        return self.update_with_mask(prompts, rewards)[0]

    def update_with_mask(self, prompts: list[str], rewards: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(advantages, per_prompt), both (B,): the advantages of update(), and a bool mask, True where a
        reward was normalised with its own prompt's statistics, False where with the batch's."""
        if isinstance(rewards, Tensor):
            rewards = rewards.detach().cpu().numpy()
        rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)  # (B,)
        if len(prompts) != len(rewards):
            raise ValueError(f"{len(prompts)} prompts but {len(rewards)} rewards")
        prompt_array = np.asarray(prompts, dtype=object)
        advantages = np.empty_like(rewards)
        per_prompt = np.zeros(rewards.shape, dtype=bool)
        for prompt in dict.fromkeys(prompts):  # unique, in first-seen order
            mask = prompt_array == prompt
            buffer = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            own = len(buffer) >= self.min_count
            source = np.asarray(buffer) if own else rewards
            advantages[mask] = (rewards[mask] - source.mean()) / (source.std() + 1e-6)
            per_prompt[mask] = own
        return advantages, per_prompt

    def get_stats(self) -> dict[str, dict[str, float]]:
        """Per-prompt mean, std and count of the buffered rewards (for logging)."""
        return {
            prompt: {"mean": float(np.mean(buf)), "std": float(np.std(buf)), "count": len(buf)}
            for prompt, buf in self.stats.items()
        }

    def state_dict(self) -> dict:
        """JSON-serialisable state: settings and each prompt's buffered rewards as a plain list."""
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "stats": {prompt: [float(r) for r in buf] for prompt, buf in self.stats.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore buffers from state_dict(); this tracker's own buffer_size and min_count are kept."""
        self.stats = {
            prompt: deque((float(r) for r in rewards), maxlen=self.buffer_size)
            for prompt, rewards in state["stats"].items()
        }
