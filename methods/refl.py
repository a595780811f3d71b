"""ReFL on an LCM: reward feedback learning through one late sampling step (Xu et al. 2023, "ImageReward:
Learning and Evaluating Human Preferences for Text-to-Image Generation", NeurIPS; THUDM/ImageReward, read:
ImageReward/ReFL.py lines 712-763 and scripts/train_refl.sh, at commit c1392c6).

One outer step: draw a step j uniformly from {step_min, …, step_max}; run the shared sampler without gradient to
the state x_j entering step j (counted from the first, noisiest step 0), then take the consistency function's
prediction there with gradient, decode and score it:

    x̂_0 = f_θ(x_j, τ_j)                    (bench/core/sampler.py, last_step = j, grad_steps = 1)
    loss = scale · mean( relu(shift - r(decode(x̂_0), c)) )  +  γ · mean ‖f_θ(x_j, τ_j) - f_ref(x_j, τ_j)‖² / D

(methods/losses.py refl_loss). ImageReward's ReFL samples 40 DDPM steps, picks j = random.randint(30, 39) (one of
the last 10, inclusive), runs steps 0 … j-1 under no_grad and back-propagates from the decoded
`pred_original_sample` of step j alone; its loss is relu(2 - r) · 1e-3 (`--grad_scale 0.001`), lr 1e-5 on the whole
UNet, batch 2 x 8 GPUs x 4 accumulation steps, gradient norm clipped at 1. Why a late j there: the x̂_0 predicted
from early, noisy DDPM states is too blurry for the reward to judge. On an LCM, x̂_0 = f_θ(x_j, τ_j) is a clean
image at every step (that is what a consistency model predicts), so the default range is every step after the first:
{1, …, N-1} (j = N-1 is DRaFT-1 with ReFL's loss; j = 0, the one-step generation from pure noise, which the N-step
sampler never shows, is left out). The whole trajectory is not run: the steps after j cost nothing.

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
    """ReFL's fields. shift and scale are in the training reward's units and must follow its scale: ImageReward's
    (2, 1e-3) suit its standardised score (`--set refl.shift=2 --set refl.scale=1e-3` with `--rewards
    imagereward`). The defaults are for testbed-pref, chosen from its spread on the base model, not tuned: over
    270 base samples of the 90 training prompts its mean is 10.9 and its standard deviation 10.2, so shift = 30 is
    about mean + 2 sd as ImageReward's 2 is (the hinge is active for ~97% of base samples and stops pulling a sample
    once it is well above the base model's best), and scale = 1e-4 ≈ 1e-3 / sd gives the loss ImageReward's slope per
    standard deviation of reward. Under AdamW the scale hardly changes the update (Adam divides it out), only how
    often the gradient clip at max_grad_norm binds (at 1e-4 it never does on the testbed).

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log), step_min (integer, 0 to 3: at the default N = 4 steps, from every
    step to the last step only; step_max stays the last) and pretrain_weight γ (relative, 0.1x to 10x the entry's
    value, log; dropped while it is 0, the default: swept only where regularised).
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {"step_min": Knob(0, 3, integer=True),
                                                           "pretrain_weight": Knob(0.1, 10.0, log=True)}
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset({"pretrain_weight"})

    step_min: int = 1
    """Earliest step j the gradient is taken at (0 = the first, noisiest step; ImageReward: 30 of 40)."""
    step_max: int = -1
    """Latest step j (negative counts from the end as in Python: -1 = the final step N-1; ImageReward: 39 of 40)."""
    shift: float = 30.0
    """Reward above which a sample stops contributing (reward units; ImageReward: 2 on its standardised score)."""
    scale: float = 1e-4
    """Loss multiplier (per reward unit; ImageReward's grad_scale: 1e-3)."""
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

    def step_range(self, name: str, steps: int) -> tuple[int, int]:
        """(j_min, j_max), inclusive step indices of an N = `steps` sampler; one-line error if empty or outside."""
        j_max = self.step_max if self.step_max >= 0 else steps + self.step_max
        if not 0 <= self.step_min <= j_max < steps:
            raise BenchError(f"{name}: steps {self.step_min} … {self.step_max} are not a range within the "
                             f"{steps} sampling steps (0 … {steps - 1}, or negative from the end)")
        return self.step_min, j_max


class ReFL(Method):
    """ReFL: the reward of one late step's x̂_0, back-propagated through that step only, with a hinge loss."""

    Config = ReFLConfig
    first_order = True

    def __init__(self, name, cfg: ReFLConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.j_min, self.j_max = cfg.step_range(name, sampler.steps)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        rows = self.dist.rows(cfg.batch_size)  # this process's share of the global batch (all of it in one process)
        j = int(torch.randint(self.j_min, self.j_max + 1, (), generator=self.generator))  # the same in every process
        traj = sample(self.policy, self.draw_prompts(cfg.batch_size), self.sampler, self.generator, grad=True,
                      grad_steps=1, last_step=j, rows=rows)  # traj.x0 = f_θ(x_j, τ_j), with gradient
        reward = self.reward(traj.images, traj.prompts)  # (b,)
        loss, info = refl_loss(reward, cfg.shift, cfg.scale)
        pretrain = torch.zeros((), device=reward.device)
        if cfg.pretrain_weight > 0:
            with torch.no_grad(), self.policy.reference():  # (b, C, H, W) the frozen model's x̂_0 at the same x_j
                ref = self.policy.consistency(traj.states[:, -1], traj.schedule.timesteps[-1], traj.cond,
                                              self.sampler.guidance_scale)
            pretrain = (traj.x0 - ref).pow(2).mean()
            loss = loss + cfg.pretrain_weight * pretrain
        self.backward(loss, self.dist.share(len(rows), cfg.batch_size))
        grad_norm = self.update()
        self.steps_done += 1
        logs = self.dist.mean({"reward_mean": reward.mean().item(), "loss": loss.item(), "pretrain": pretrain.item(),
                               "step_j": float(j), **info})
        return logs | {"grad_norm": grad_norm}
