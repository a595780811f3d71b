"""Loss math shared by the policy-gradient methods: PPO-clip (DDPO/RLCM), per-step DPO (D3PO), advantages.

See METHODS.md sections 3 and 4. Log-probabilities are per sampler step, shape (B,) (or any shape: every
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


def clip_advantages(adv: Tensor | np.ndarray, max_abs: float) -> Tensor | np.ndarray:
    """Advantages clipped to [-max_abs, max_abs] (DDPO's adv_clip_max); keeps the input's type."""
    if max_abs <= 0:
        raise ValueError(f"max_abs must be > 0, got {max_abs}")
    if isinstance(adv, Tensor):
        return torch.clamp(adv, -max_abs, max_abs)
    return np.clip(adv, -max_abs, max_abs)


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
