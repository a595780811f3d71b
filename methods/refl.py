"""ReFL on an LCM: reward feedback learning through one late sampling step (Xu et al. 2023, "ImageReward:
Learning and Evaluating Human Preferences for Text-to-Image Generation", NeurIPS; THUDM/ImageReward, read:
ImageReward/ReFL.py lines 712-763 and scripts/train_refl.sh, at commit c1392c6).

One outer step: draw a step j uniformly from {step_min, …, step_max}; run the shared sampler without gradient to
the state x_j entering step j (counted from the first, noisiest step 0), then take the consistency function's
prediction there with gradient, decode and score it:

    x̂_0 = f_θ(x_j, τ_j)                    (bench/core/sampler.py, last_step = j, grad_steps = 1)
    z = (r(decode(x̂_0), c) - m_0) / s_0     (m_0, s_0: the mean and sd of the reward over the first batch)
    loss = scale · mean( relu(shift - z) )  +  γ · mean ‖f_θ(x_j, τ_j) - f_ref(x_j, τ_j)‖² / D

(methods/losses.py refl_loss). ImageReward's ReFL samples 40 DDPM steps, picks j = random.randint(30, 39) (one of
the last 10, inclusive), runs steps 0 … j-1 under no_grad and back-propagates from the decoded
`pred_original_sample` of step j alone; its loss is relu(2 - r) · 1e-3 (`--grad_scale 0.001`), lr 1e-5 on the whole
UNet, batch 2 x 8 GPUs x 4 accumulation steps, gradient norm clipped at 1. Why a late j there: the x̂_0 predicted
from early, noisy DDPM states is too blurry for the reward to judge. On an LCM, x̂_0 = f_θ(x_j, τ_j) is a clean
image at every step (that is what a consistency model predicts), so the default range is every step after the first:
{1, …, N-1} (j = 0, the one-step generation from pure noise, which the N-step sampler never shows, is left out). The
whole trajectory is not run: the steps after j cost nothing. A range of the last step alone, {N-1}, is refused: j =
N-1 every step is DRaFT-1 (`draft-k`) with ReFL's hinge, another registered method, so ReFL needs N >= 3 with its
default range (at N = 2, set step_min = 0); the sweep's step_min runs over 0 … N-2 for the same reason.

The hinge in the reward's standard units: ImageReward's shift 2 and grad_scale 1e-3 are set for its score, which is
standardised (about zero mean and unit spread over its training images); a shift in another reward's raw units
(this file's earlier default, 30 in testbed-pref's) is never reached on a reward of another scale. So the reward
is standardised by the base model's own statistics: m_0 and s_0 are the mean and (sample) standard deviation of
the reward over the first outer step's batch — the base model's x̂_0 at that step's j, scored before any update,
the global batch in every process — kept for the whole run (and in checkpoints). shift = 2 then stops a sample
two of the base model's standard deviations above its mean, as ImageReward's does on its score, and scale = 1e-3
is ImageReward's slope per standard deviation, for any reward. A reward without spread over the first batch is an
error. (Under AdamW the scale hardly changes the update: Adam divides it out, except through max_grad_norm.)

The pre-training term: ReFL's paper alternates the reward loss with the model's pre-training loss on data;
ImageReward's public script has none (γ = 0 here by default, as there). There is no training data for the real
models here, so when γ > 0 the term is a distillation to the frozen starting model at the same state, the mean
squared difference of the two x̂_0 per latent dimension (D of them): it keeps f_θ near the LCM the pre-training
produced, at the states ReFL trains on, for one reference forward per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.api import BenchError, Dist, Knob, Method, SamplerConfig, TrainConfig, at_least, positive, sample
from methods.losses import refl_loss


@dataclass
class ReFLConfig(TrainConfig):
    """ReFL's fields. shift and scale are in standard deviations of the training reward over the base model's first
    batch (module docstring), so ImageReward's values, 2 and 1e-3, serve every reward.

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log), step_min (integer, 0 to N - 2: the range follows the sampler's N,
    from every step to the last two, never the last step alone; step_max stays the last) and pretrain_weight γ
    (relative, 0.1x to 10x the entry's value, log; dropped while it is 0, the default: swept only where regularised).
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {"step_min": Knob(0, high_steps=-2, integer=True),
                                                           "pretrain_weight": Knob(0.1, 10.0, log=True)}
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset({"pretrain_weight"})

    step_min: int = 1
    """Earliest step j the gradient is taken at (0 = the first, noisiest step; ImageReward: 30 of 40)."""
    step_max: int = -1
    """Latest step j (negative counts from the end as in Python: -1 = the final step N-1; ImageReward: 39 of 40)."""
    shift: float = 2.0
    """Standardised reward z above which a sample stops contributing, in standard deviations of the reward above
    the base model's mean over the first batch (ImageReward: 2 on its standardised score)."""
    scale: float = 1e-3
    """Loss multiplier per standard deviation of the reward (ImageReward's grad_scale: 1e-3)."""
    pretrain_weight: float = 0.0
    """γ: weight of the distillation to the frozen model, per mean squared latent difference (0: none, as
    ImageReward)."""
    lr: float = 3e-3

    def resolve(self, name: str) -> None:
        super().resolve(name)
        positive(f"{name}: scale", self.scale)
        at_least(f"{name}: pretrain_weight", self.pretrain_weight, 0)
        at_least(f"{name}: step_min", self.step_min, 0)  # 0 = the first sampling step
        if 0 <= self.step_max < self.step_min:
            raise BenchError(f"{name}: step_max ({self.step_max}) is below step_min ({self.step_min})")

    def validate(self, name: str, sampler: SamplerConfig) -> None:
        super().validate(name, sampler)
        self.step_range(name, sampler.steps)
        at_least(f"{name}: batch_size (the first batch's reward sd sets the hinge's units)", self.batch_size, 2)

    def step_range(self, name: str, steps: int) -> tuple[int, int]:
        """(j_min, j_max), inclusive step indices of an N = `steps` sampler; one-line error if empty or outside, or
        if it is the last step alone (DRaFT-1 with a hinge)."""
        j_max = self.step_max if self.step_max >= 0 else steps + self.step_max
        if not 0 <= self.step_min <= j_max < steps:
            raise BenchError(f"{name}: steps {self.step_min} … {self.step_max} are not a range within the "
                             f"{steps} sampling steps (0 … {steps - 1}, or negative from the end)")
        if self.step_min == steps - 1:
            raise BenchError(f"{name}: steps {self.step_min} … {j_max} are the last step alone at sampler.steps = "
                             f"{steps}: that is DRaFT-1 (draft-k) with a hinge; set step_min to at most {steps - 2}")
        return self.step_min, j_max

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        """Steps 0 … j forward (j = step_max at the costliest), the last one's backward, and the frozen model's
        forward at x_j when γ > 0."""
        j_max = self.step_range("refl", sampler.steps)[1]
        return self.batch_size * (j_max + 1 + 2 + (self.pretrain_weight > 0))


class ReFL(Method):
    """ReFL: the reward of one late step's x̂_0, back-propagated through that step only, with a hinge loss."""

    Config = ReFLConfig
    first_order = True
    STATE_ATTRS = ("base_mean", "base_sd")  # the first batch's reward statistics (the hinge's units)

    def __init__(self, name, cfg: ReFLConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.j_min, self.j_max = cfg.step_range(name, sampler.steps)
        self.base_mean, self.base_sd = float("nan"), float("nan")  # set by the first step

    def standardise(self, reward: torch.Tensor) -> torch.Tensor:
        """(b,) rewards -> (b,) in standard deviations above the base model's mean, the statistics taken over the
        first step's global batch (every process gathers it, so all hold the same)."""
        if self.steps_done == 0:
            first = self.dist.gather_rows(reward.detach(), self.cfg.batch_size).double()  # (B,) global batch
            self.base_mean, self.base_sd = float(first.mean()), float(first.std())
            if not self.base_sd > 0:
                raise BenchError(f"{self.name}: the reward has no spread over the first batch (sd {self.base_sd}), "
                                 f"so the hinge has no units; ReFL needs a reward that varies between samples")
        return (reward - self.base_mean) / self.base_sd

    def step_parts(self) -> int:
        return self.batch_parts(self.cfg.batch_size)  # the cost is per sample: a smaller batch, a smaller step

    def step(self, fraction: float = 1.0) -> dict[str, float]:
        cfg = self.cfg
        batch = self.partial_batch(cfg.batch_size, fraction)  # cfg.batch_size but for a time budget's last step
        rows = self.dist.rows(batch)  # this process's share of the global batch (all of it in one process)
        j = int(torch.randint(self.j_min, self.j_max + 1, (), generator=self.generator))  # the same in every process
        traj = sample(self.policy, self.draw_prompts(batch), self.sampler, self.generator, grad=True,
                      grad_steps=1, last_step=j, rows=rows)  # traj.x0 = f_θ(x_j, τ_j), with gradient
        reward = self.reward(traj.images, traj.prompts)  # (b,)
        loss, info = refl_loss(self.standardise(reward), cfg.shift, cfg.scale)
        pretrain = torch.zeros((), device=reward.device)
        if cfg.pretrain_weight > 0:
            with torch.no_grad(), self.policy.reference():  # (b, C, H, W) the frozen model's x̂_0 at the same x_j
                ref = self.policy.consistency(traj.states[:, -1], traj.schedule.timesteps[-1], traj.cond,
                                              self.sampler.guidance_scale)
            pretrain = (traj.x0 - ref).pow(2).mean()
            loss = loss + cfg.pretrain_weight * pretrain
        self.backward(loss, self.dist.share(len(rows), batch))
        grad_norm = self.update()
        self.steps_done += 1
        logs = self.dist.mean({"reward_mean": reward.mean().item(), "loss": loss.item(), "pretrain": pretrain.item(),
                               "step_j": float(j), **info})  # hinge_at: where the hinge stops, in reward units
        logs["hinge_at"] = self.base_mean + cfg.shift * self.base_sd
        return logs | {"grad_norm": grad_norm}
