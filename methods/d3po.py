"""D3PO on an LCM: direct preference optimisation on sampling trajectories (docs/methods.md §5; Yang et al.
2024, yk7333/d3po).

One outer step: for batch_size/2 prompts, sample two trajectories from the **same initial noise** (their
per-step noise differs); the reward model decides the winner of each pair (the preference rule: the higher
reward wins; exact ties carry no preference and are dropped and counted). Then at every stochastic step k,
with the frozen reference policy, the per-step DPO loss

    -log σ( β · [ log r_w(k) - log r_l(k) ] ),   r(k) = clamp(π_θ / π_ref at step k, 1 ± ratio_clip)

is accumulated over the steps of a minibatch of pairs before one optimizer update. The reward need not be
differentiable: only its ordering of each pair is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import Dist, Knob, Method, SamplerConfig, TrainConfig, check_pair_batch, positive, sample, step_log_prob
from methods.losses import d3po_loss


@dataclass
class D3POConfig(TrainConfig):
    """Defaults tuned on the testbed (4 pairs per step were too noisy; D3PO's own lr 3e-5 barely moved a
    small LoRA within the budget). D3PO's public defaults: β 0.1, ratio clamp 0.1, lr 3e-5, AdamW.

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log) and the DPO β, 0.1 to 100 (log). Why not around 0.1: the clamp
    keeps each step's log-ratio difference x within ±0.2, so for β below ~1 the loss -log σ(βx) is nearly
    linear in βx and β only scales the gradient, which Adam undoes; β acts through σ(-βx), which stops
    weighting pairs already won once 0.2β is a few units (β ~ 10 to 100).
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {"beta": Knob(0.1, 100.0, log=True)}

    batch_size: int = 32
    """Images sampled per outer step (batch_size / 2 pairs, each pair from one initial noise)."""
    beta: float = 0.1
    """DPO inverse temperature β (D3PO: 0.1)."""
    ratio_clip: float = 0.1
    """Per-step likelihood ratio clamped to 1 ± this (D3PO: train.eps = 0.1)."""
    train_batch_size: int = 4
    """Pairs per minibatch update."""
    lr: float = 1e-3

    def resolve(self, name: str) -> None:
        super().resolve(name)
        check_pair_batch(name, self.batch_size, self.train_batch_size)
        positive(f"{name}: beta", self.beta)
        positive(f"{name}: ratio_clip", self.ratio_clip)

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        """Sampling (N forwards per image), then at each stochastic step for winner and loser a reference forward
        and a policy forward and backward; a tied pair (dropped) costs none of the latter."""
        return self.batch_size * (sampler.steps + 4 * (sampler.steps - 1))


class D3PO(Method):
    """D3PO: per-step DPO on pairs of trajectories from the same initial noise."""

    Config = D3POConfig
    STATE_ATTRS = ("ties",)  # ties dropped so far, logged as ties_total (saved in checkpoints)

    def __init__(self, name, cfg: D3POConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.ties = 0

    def step(self) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.batch_size
        pairs = n // 2
        prompts = self.draw_prompts(pairs)
        init = torch.randn((pairs, *self.policy.latent_shape), generator=self.generator)  # shared x_{τ_N}
        # Layout: samples 2i and 2i+1 are the pair of prompt i; a process keeps whole pairs.
        rows = self.dist.rows(n, group=2)
        traj = sample(self.policy, [p for p in prompts for _ in range(2)], self.sampler, self.generator,
                      init=init.repeat_interleave(2, dim=0), rows=rows)
        with torch.no_grad():
            reward = self.dist.gather_rows(self.reward(traj.images, traj.prompts), n, group=2).view(pairs, 2)
        keep = reward[:, 0] != reward[:, 1]  # ties carry no preference
        self.ties += int((~keep).sum())
        first_wins = reward[:, 0] > reward[:, 1]
        pair_idx = torch.arange(pairs)[keep.cpu()]
        winners = 2 * pair_idx + (~first_wins[keep]).long().cpu()  # global sample indices
        losers = 2 * pair_idx + first_wins[keep].long().cpu()
        steps, norms = traj.num_noisy_steps, []
        sums = dict.fromkeys(("loss", "accuracy", "margin", "clipfrac", "terms"), 0.0)  # same keys in every process
        order = torch.randperm(len(pair_idx), generator=self.generator)  # the same in every process
        for start in range(0, len(pair_idx), cfg.train_batch_size):
            sel = order[start:start + cfg.train_batch_size]
            local_w = self.dist.local_positions(rows, winners[sel], n)
            win, lose = traj.select(local_w), traj.select(self.dist.local_positions(rows, losers[sel], n))

            def step_loss(k, win=win, lose=lose):
                with torch.no_grad():
                    ref_w = step_log_prob(self.policy, win, k, self.sampler, reference=True)
                    ref_l = step_log_prob(self.policy, lose, k, self.sampler, reference=True)
                logp_w = step_log_prob(self.policy, win, k, self.sampler)
                logp_l = step_log_prob(self.policy, lose, k, self.sampler)
                return d3po_loss(logp_w, ref_w, logp_l, ref_l, cfg.beta, cfg.ratio_clip)

            if steps:
                norms.append(self.minibatch_update(steps, self.dist.share(len(local_w), len(sel)), step_loss, sums))
        self.steps_done += 1
        return {"reward_mean": reward.mean().item(), "reward_std": reward.std().item(), "pairs": float(len(pair_idx)),
                "ties_total": float(self.ties), **self.mean_logs(sums, norms)}
