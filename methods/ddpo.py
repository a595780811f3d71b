"""DDPO on an LCM: policy gradient with PPO-clip over the sampler's stochastic steps, as RLCM applies it
(METHODS.md §3; Black et al. 2023, Owen-Oertell/rlcm).

One outer step: sample a batch without gradients and store the trajectory; score the final images (any
reward: it need not be differentiable); turn rewards into advantages with per-prompt running statistics,
clipped to ±A_max; then for each inner epoch and each minibatch, re-score every stored noisy step under the
current parameters and take the PPO-clip loss, accumulating gradients over the steps of the minibatch
before one optimizer update (as DDPO accumulates over timesteps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.distributed import Dist
from bench.errors import BenchError
from bench.method import Method, TrainConfig
from bench.sampler import sample, step_log_prob
from methods.losses import PerPromptStatTracker, clip_advantages, ppo_clip_loss


@dataclass
class DDPOConfig(TrainConfig):
    """Defaults tuned on the testbed (batch 8 was too noisy to learn; clip 1e-4 clipped most updates).
    RLCM's values on LCM-Dreamshaper-v7: lr 1e-4, clip 1e-4, A_max 10, LoRA, max grad norm 5."""

    batch_size: int = 32
    """Trajectories sampled per outer step."""
    train_batch_size: int = 8
    """Trajectories per minibatch update (batch_size must be a multiple of it)."""
    inner_epochs: int = 1
    """Passes over each sampled batch."""
    clip_range: float = 1e-3
    """PPO clip ε on the per-step likelihood ratio (RLCM: 1e-4)."""
    adv_clip_max: float = 10.0
    """Advantages are clipped to ±this (RLCM: 10)."""
    stat_buffer: int = 32
    """Per-prompt reward history kept for advantage statistics (rewards)."""
    stat_min_count: int = 16
    """Below this many rewards for a prompt, the batch mean/std is used instead."""
    lr: float = 1e-3


class DDPO(Method):
    """DDPO/RLCM: PPO-clip policy gradient over the LCM sampler's stochastic steps."""

    Config = DDPOConfig

    def __init__(self, name, cfg: DDPOConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        if cfg.batch_size % cfg.train_batch_size:
            raise BenchError(f"{name}: batch_size ({cfg.batch_size}) must be a multiple of train_batch_size "
                             f"({cfg.train_batch_size})")
        self.tracker = PerPromptStatTracker(cfg.stat_buffer, cfg.stat_min_count)

    def step(self) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.batch_size
        prompts = self.draw_prompts(n)
        rows = self.dist.rows(n)  # this process's trajectories (all of them in one process)
        traj = sample(self.policy, prompts, self.sampler, self.generator, grad=False, rows=rows)
        with torch.no_grad():
            reward = self.dist.gather_rows(self.reward(traj.images, traj.prompts), n)  # (B,) global batch
        adv = clip_advantages(self.tracker.update(prompts, reward.cpu().numpy()), cfg.adv_clip_max)
        adv = torch.as_tensor(adv, dtype=torch.float32, device=reward.device)[rows.to(reward.device)]  # local
        steps, norms = traj.num_noisy_steps, []
        sums = dict.fromkeys(("loss", "approx_kl", "clipfrac", "terms"), 0.0)  # the same keys in every process
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(n, generator=self.generator)  # the same global order in every process
            for start in range(0, n, cfg.train_batch_size):
                mb_global = order[start:start + cfg.train_batch_size]
                local = self.dist.local_positions(rows, mb_global, n)
                mb = traj.select(local)

                def step_loss(k, mb=mb, local=local):  # every stochastic step of the stored trajectories
                    log_prob = step_log_prob(self.policy, mb, k, self.sampler)
                    return ppo_clip_loss(log_prob, mb.log_probs[:, k], adv[local], cfg.clip_range)

                if steps:
                    norms.append(self.minibatch_update(steps, self.dist.share(len(local), len(mb_global)),
                                                       step_loss, sums))
        self.steps_done += 1
        return {"reward_mean": reward.mean().item(), "reward_std": reward.std().item() if n > 1 else 0.0,
                **self.mean_logs(sums, norms)}
