"""The reward contract (docs/methods.md §0): every training reward and per-image metric is a `Reward`;
FID-like metrics over a whole set of images are `SetMetric`s (evaluation only).

A reward maps images in [0, 1] of shape (B, 3, H, W) and their prompts to a (B,) tensor. Preprocessing is
done in torch so that, for a differentiable reward, gradients reach the pixels. Constructors never download:
weights come from the local cache, and a missing weight is a `BenchError` naming the command that fetches it.
Calls are charged to the compute meter, except under `meter.paused()`: `reward_calls` counts images scored,
`flops_reward` the FLOPs of `score` (counted once per reward and image shape: they do not depend on the prompts'
content, which is tokenised to a fixed length), and 2x those FLOPs for a backward when gradient reaches the
scores (first-order methods; DDPO and D3PO score under no_grad, so no backward is charged). A reward that caches
work per prompt (a CLIP text tower) runs it inside `prompt_forward`, so that it is charged per cache miss and
not as part of every image's count.
"""

from __future__ import annotations

import torch

from bench.core.compute import ComputeMeter


class Reward:
    name: str = "reward"
    version: str = "0"  # bump when the score changes for the same images; written into every result row
    higher_is_better: bool = True
    differentiable: bool = True
    autocast_dtype: str | None = None
    """Scoring runs under autocast in this dtype on a GPU ("bfloat16", "float16"; None or "float32": full
    precision); the runner sets the model's `model.dtype`. Scores are returned as float32."""

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        self.device = torch.device(device)
        self.meter = meter or ComputeMeter()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], B prompts -> (B,). Subclasses implement this."""
        raise NotImplementedError

    def prompt_forward(self, shape: tuple[int, ...], n: int):
        """Context for work the reward caches per prompt (its text tower on the n prompts not seen yet, token ids
        of per-prompt `shape`): charged to the reward per cache miss, like the policy's text encoder, and left out
        of the per-image count of `score`, which it would otherwise inflate on every later call."""
        return self.meter.forward("reward", ("prompts", type(self).__qualname__, self.name, tuple(shape)), n)

    def autocast(self):
        """The autocast context of every scoring call: `autocast_dtype` on a GPU (the runner sets the model's
        dtype), float32 otherwise."""
        if self.device.type == "cuda" and self.autocast_dtype not in (None, "float32"):
            return torch.autocast("cuda", dtype=getattr(torch, self.autocast_dtype))
        return torch.autocast("cpu", enabled=False)

    def clear_prompt_cache(self) -> None:
        """Forget what `prompt_forward` cached (a reward that caches per prompt overrides this), so that the next
        use of each prompt is computed, and charged, again: uncharged work done before training (a standardised
        reward's normaliser, bench/run/standardise.py) then leaves the run's charges as they would have been."""

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: expected (B, 3, H, W) images and B prompts, got "
                             f"{tuple(images.shape)} and {len(prompts)} prompts")
        b = images.shape[0]
        self.meter.charge_reward(b)
        with self.meter.forward("reward", (type(self).__qualname__, self.name, tuple(images.shape[1:])), b) as call, \
                self.autocast():
            out = self.score(images, prompts).float()
        if out.shape != (b,):
            raise ValueError(f"{self.name}: score returned shape {tuple(out.shape)}, expected ({b},)")
        return self.meter.watch(out, call)  # (B,): the backward through the reward is charged if it happens


class SetMetric:
    """A metric of a whole set of images (FID, diversity): `update` batches, then `compute` one number.
    Constructors take `(device="cpu")`; evaluation is never charged to the compute budget."""

    name: str = "set-metric"
    version: str = "0"
    higher_is_better: bool = False

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError

