"""REBEL on an LCM: regression of relative rewards onto relative log-ratios of trajectory pairs (Gao et al. 2024,
"REBEL: Reinforcement Learning via Regressing Relative Rewards", arXiv 2404.16767), as RLCM applies it to
LCMs beside PPO (Owen-Oertell/rlcm, lcm_rl_pytorch/core/rebel_training_loop.py and conf/task/*.yaml, read at
commit b8330ed; line numbers below are of those files).

One outer step: draw batch_size/2 distinct prompts and sample two trajectories y, y' of each from θ_old
without gradients (each with its own initial noise, as RLCM samples the prompt list twice), storing them; score
the final images (any reward: it need not be differentiable); turn rewards into advantages A with the per-prompt
stat tracker; then, for each minibatch of pairs, with ℓ_θ(k; y) the log-density of stored step k of y under θ,

    Δ(y) = Σ_k [ℓ_θ(k; y) - ℓ_θold(k; y)]                        (k over the N-1 stochastic steps)
    loss = mean over pairs of ( η · (Δ(y) - Δ(y')) - (A(y) - A(y')) )²      (methods/losses.py rebel_loss)

and one optimizer update. Both members of a pair have the same prompt, so the tracker's per-prompt mean cancels
in A(y) - A(y'): what the statistics set is the scale, (r - r') / std. Where the regression is met, the policy
has moved by the mirror-descent step of REBEL's paper with step size 1/η: a small η lets θ move far, a large η
keeps it near θ_old (a trust region without clipping). With the sampler's per-dimension "mean" log-probs (RLCM's
too), Δ is 1/D of the true log-ratio (D latent dimensions), so at RLCM's η = 1 the target is far out of reach
within one step (on the testbed η|Δ - Δ'| stays near 1e-4 against |A - A'| ~ 1) and the loss acts as a pairwise
policy gradient, -2η (A - A') ∇(Δ - Δ'); η binds only once η Δ reaches the size of A - A'.

Why not `minibatch_update`'s per-step accumulation: the loss is a square of a sum over steps, so step k's
gradient, 2 (η (Δ - Δ') - (A - A')) η ∇ℓ_θ(k), needs every step's log-ratio. By default a minibatch keeps all
N-1 steps of its 2m trajectories in one graph (as RLCM does, lines 274-334) and is one term of minibatch_update.
With `memory_saving`, the same gradient is taken exactly one step at a time: a no-grad pass gives every step's
ℓ_θ, then for each k the loss is recomputed with only step k live and the others as constants; the chain rule's
terms ∂loss/∂ℓ_k · ∇ℓ_k then sum to the full gradient, for one more denoiser forward per step (the no-grad
pass: work redone to save memory, charged as recomputation, nfe_recompute, as the sampler's checkpointing is) and
one step's activations instead of N-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import (
    Dist,
    Knob,
    Method,
    SamplerConfig,
    TrainConfig,
    Trajectory,
    at_least,
    check_pair_batch,
    positive,
    sample,
    stat_counts,
    step_log_prob,
)
from methods.losses import PerPromptStatTracker, rebel_loss


@dataclass
class REBELConfig(TrainConfig):
    """What RLCM's REBEL does (rebel_training_loop.py; conf/task/aesthetic.yaml, the other tasks alike), and ours.

    RLCM, read at commit b8330ed:
      - pairs: one prompt list (`dataset.sample()`, line 56: drawn with replacement, core/dataloader.py line 23)
        is sampled twice (lines 60-66 and 84-90) without passing latents, so y and y' have the same prompt and
        independent initial noise (diffusers_patch/pipeline.py prepare_latents, lines 413-414) and step noise;
      - Δ is a sum over steps of per-step log-probs (old: `log_probs.sum(dim=1)`, line 268; new: lines 321-325),
        each step's log-prob the mean over latent dimensions (diffusers_patch/lcm_scheduler.py line 501). Its
        new-policy sum concatenates the minibatch's samples before summing (lines 321-325), mixing the two
        pairs of a minibatch; we sum per trajectory, as its old-policy sum (line 268) and the paper do. Its
        patched scheduler adds noise on the last step too (lcm_scheduler.py lines 437-441, 482-487), so it sums
        N terms; our sampler's last step is deterministic (bench/core/sampler.py), so Δ sums the N-1 stochastic ones;
      - loss = mean((rebel_lr · log_difference - advantage_difference)²), lines 327-331, rebel_lr = η = 1
        (aesthetic.yaml line 23; every task);
      - advantages: PerPromptStatTracker (util/stat_tracking.py, DDPO's) over both halves' rewards and prompts
        together (lines 152-195, update at line 184), buffer 32, min_count 16 (aesthetic.yaml lines 18-19;
        16/16 for compression); not clipped (adv_clip_max is read only by the PPO loop);
      - optimisation: Adam (line 27) at lr 1e-4 (aesthetic.yaml line 7; 4e-4 for prompt alignment), decayed
        linearly once per epoch to 2/3 of it over 100 epochs (LinearLR to 0 over 3 x num_epochs, lines 28-33);
        no gradient clipping (max_grad_norm is read only by the PPO loop); 8 prompts per GPU (8 pairs, 16
        images: sample_batch_size_per_gpu 8, num_sample_iters 1), minibatches of 2 pairs
        (train_batch_size_per_gpu 2) accumulated over 4 (gradient_accumulation_steps, scripts/main.py lines
        43-48), i.e. one update per 8 pairs; num_inner_epochs 1; 8 sampling steps; fp16; LoRA r 8. Its README
        (line 5): "you may have to increase the learning rate … otherwise all hyperparameters should be the same".

    Ours (testbed defaults, pending the sweep): distinct prompts per step (draw_prompt_groups, not with
    replacement); no LR decay (no method here has one); AdamW without weight decay (= Adam); the shared
    max_grad_norm 1 (RLCM: none; at η = 1 the gradient norm stays near 0.02, so it never acts); 16 pairs per step
    in minibatches of 4 pairs (D3PO's sizes here); lr 1e-3 (RLCM's README: the lr may need raising). RLCM's η,
    independent noise, tracker settings and inner epochs are kept. Measured on the testbed (testbed-pref gain on
    the training prompts, tests/test_learning.py's settings, 15000 NFE = 36 steps): seeds 0-2 +1.28, +2.29,
    +1.58, gold unchanged (+0.007, -0.017, +0.004); seed 0 at 6000 NFE: lr 1e-3 +0.25, 3e-3 -0.30, 1e-2 -21
    (collapse); seed 0 at 15000 NFE: η = 1000 +0.97, shared_init +1.29 (seeds 1, 2: +1.75, +2.09).

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log), η (0.1 to 1000, log: around RLCM's 1, up to where η Δ with
    mean-reduced log-probs reaches the size of A - A' within a few updates) and pairs per minibatch
    train_batch_size in {1, 2, 4, 8} (updates per step against noise per update; all divide 16 pairs).
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {
        "eta": Knob(0.1, 1000.0, log=True),
        "train_batch_size": Knob(choices=(1, 2, 4, 8)),
    }

    batch_size: int = 32
    """Images sampled per outer step: batch_size / 2 pairs, each pair two trajectories of one prompt."""
    train_batch_size: int = 4
    """Pairs per minibatch update (batch_size / 2 must be a multiple of it; RLCM: 2 x 4 accumulated = 8)."""
    inner_epochs: int = 1
    """Passes over each sampled batch (RLCM: num_inner_epochs 1). Δ is always against θ_old, the sampler."""
    eta: float = 1.0
    """η (RLCM's rebel_lr, 1): scales Δ(y) - Δ(y'), whose unit is the sampler's log-prob (per-dimension mean by
    default); 1/η is the paper's mirror-descent step size."""
    shared_init: bool = False
    """Start both trajectories of a pair from the same initial noise (as D3PO does) instead of independent
    noise (RLCM, REBEL's paper: y, y' ~ π_θold independently)."""
    stat_buffer: int = 32
    """Per-prompt reward history kept for advantage statistics (RLCM: stat_buffer_size 32)."""
    stat_min_count: int = 16
    """Below this many rewards for a prompt, the batch's std scales its pair instead (RLCM: 16). A prompt
    brings 2 rewards per visit, so its own statistics need 8 visits: with 90 prompts and 16 pairs per step, a
    visit every 5.6 steps, so a 36-step testbed run ends with per_prompt_share about 0.3-0.5 (in the logs)."""
    memory_saving: bool = False
    """Back-propagate one sampler step at a time, exactly (see the module docstring): memory of one step instead
    of N-1, for one more denoiser forward per stochastic step (counted as recomputation, in no count budget)."""
    lr: float = 1e-3

    def resolve(self, name: str) -> None:
        super().resolve(name)
        check_pair_batch(name, self.batch_size, self.train_batch_size)
        positive(f"{name}: eta", self.eta)
        at_least(f"{name}: inner_epochs", self.inner_epochs, 1)
        stat_counts(name, self.stat_min_count, self.stat_buffer)

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        """Sampling (N forwards per image), then per inner epoch every stochastic step of every image re-scored, a
        forward and a backward (memory_saving's extra no-grad pass is recomputation, not counted here)."""
        return self.batch_size * (sampler.steps + 3 * self.inner_epochs * (sampler.steps - 1))


class REBEL(Method):
    """REBEL: regress pairwise advantage gaps onto pairwise log-ratio gaps of trajectory pairs (RLCM's loop)."""

    Config = REBELConfig
    STATE_ATTRS = ("tracker",)  # the per-prompt reward history, carried across steps (saved in checkpoints)

    def __init__(self, name, cfg: REBELConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.tracker = PerPromptStatTracker(cfg.stat_buffer, cfg.stat_min_count)

    def step(self) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.batch_size
        pairs = n // 2
        # Layout: samples 2i and 2i+1 are the pair of prompt i ([p_0, p_0, p_1, p_1, …]); a process keeps whole pairs.
        prompts = self.draw_prompt_groups(pairs, 2)
        init = None
        if cfg.shared_init:
            init = torch.randn((pairs, *self.policy.latent_shape), generator=self.generator).repeat_interleave(2, 0)
        rows = self.dist.rows(n, group=2)
        traj = sample(self.policy, prompts, self.sampler, self.generator, grad=False, init=init, rows=rows)
        with torch.no_grad():
            reward = self.dist.gather_rows(self.reward(traj.images, traj.prompts), n, group=2)  # (n,) global
        adv, per_prompt = self.tracker.update_with_mask(prompts, reward.cpu().numpy())  # (n,), (n,) bool
        adv = torch.as_tensor(adv, dtype=torch.float32, device=reward.device)[rows.to(reward.device)]  # local
        norms = []
        sums = dict.fromkeys(("loss", "gap", "agreement", "explained", "terms"), 0.0)  # same keys in every process
        for _ in range(cfg.inner_epochs):
            order = torch.randperm(pairs, generator=self.generator)  # the same in every process
            for start in range(0, pairs, cfg.train_batch_size):
                sel = order[start:start + cfg.train_batch_size]  # (m,) pair indices
                members = torch.stack([2 * sel, 2 * sel + 1], 1).flatten()  # (2m,) global rows, pairs adjacent
                local = self.dist.local_positions(rows, members, n)  # whole pairs, order kept
                if traj.num_noisy_steps:
                    share = self.dist.share(len(local), len(members))
                    norms.append(self.pair_update(traj.select(local), adv[local], share, sums))
        self.steps_done += 1
        pair_reward = reward.view(pairs, 2)
        return {"reward_mean": reward.mean().item(), "reward_std": reward.std().item(),
                "reward_gap": (pair_reward[:, 0] - pair_reward[:, 1]).abs().mean().item(),  # mean |r - r'|
                "per_prompt_share": float(per_prompt.mean()), **self.mean_logs(sums, norms)}

    def pair_update(self, mb: Trajectory, adv: torch.Tensor, share: float, sums: dict[str, float]) -> float:
        """One optimizer update from m whole pairs: `mb` holds 2m trajectories (pair i at rows 2i, 2i+1), `adv`
        their (2m,) advantages. `share`: this process's fraction of the minibatch (0: it joins the sum only)."""
        k_steps = mb.num_noisy_steps
        old = mb.log_probs.view(-1, 2, k_steps)  # (m, 2, K) under θ_old, stored by the sampler
        pair_adv = adv.view(-1, 2)  # (m, 2)

        def loss_of(log_probs: torch.Tensor):  # (2m, K) under θ -> (loss, info)
            lp = log_probs.view(-1, 2, k_steps)
            return rebel_loss(lp[:, 0], old[:, 0], lp[:, 1], old[:, 1], pair_adv[:, 0], pair_adv[:, 1], self.cfg.eta)

        def all_steps() -> torch.Tensor:  # (2m, K): one batched denoiser call of both members per step
            return torch.stack([step_log_prob(self.policy, mb, k, self.sampler) for k in range(k_steps)], 1)

        if not self.cfg.memory_saving:  # every step of the minibatch in one graph: one term of minibatch_update
            return self.minibatch_update(1, share, lambda _: loss_of(all_steps()), sums)
        if share > 0:
            with torch.no_grad(), self.policy.meter.recomputing():  # redone only to keep one step's graph at a time
                frozen = all_steps()  # (2m, K): ℓ_θ at the current θ, the constants of every other step
            loss, info = loss_of(frozen)
            for k in range(k_steps):
                live = step_log_prob(self.policy, mb, k, self.sampler)[:, None]  # (2m, 1), with gradient
                self.backward(loss_of(torch.cat([frozen[:, :k], live, frozen[:, k + 1:]], 1))[0], share)
            for key, value in (("loss", loss.item()), *info.items(), ("terms", 1.0)):
                sums[key] += value
        return self.update()
