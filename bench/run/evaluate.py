"""The one evaluation harness: every metric on training prompts and on held-out prompts, uncharged.

At each evaluation point the policy draws a fixed number of images for every prompt of each evaluated split
(`per_prompt[split]`, chosen by the runner so that each split has enough images for its set metrics) from the
*same* noise (a fixed seed, the same for every method and point: paired comparisons), and every metric
is computed on them — not only the training reward, so reward hacking shows up as the training reward rising
while the others fall. `kl-to-base` is the KL divergence of the policy's trajectory distribution from the
base model's, Σ_k δ_k²/2 over the stochastic steps at the visited states (per sample), plus the final
deterministic step's, read as a Gaussian at the last σ (bench/core/sampler.py final_step_gaussian: the step that
makes the image counts as the last noisy step's x̂_0 does): the x axis of the report's reward-against-divergence
and frontier plots, measured the same way for every method.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from bench.core.divergences import gaussian_divergence
from bench.core.policy import Policy
from bench.core.reward import Reward, SetMetric
from bench.core.sampler import SamplerConfig, Trajectory, final_step_gaussian, sample

EVAL_BATCH = 32  # images per sampling call during evaluation
KL_VERSION = "2"
"""Version of the kl-to-base metric in evaluation rows. 1: the noisy steps only. 2: the final step too."""


def kl_to_base(traj: Trajectory) -> torch.Tensor:
    """(B,) Σ_k KL(π_θ ‖ π_ref) over the noisy steps k of a trajectory sampled with the reference's means and its
    final x̂_0 (with_reference, final_reference), plus the final step's KL at the last σ (final_step_gaussian)."""
    total = gaussian_divergence("kl", *final_step_gaussian(traj)).cpu()  # (B,)
    for k in range(traj.num_noisy_steps):
        total += gaussian_divergence("kl", traj.means[:, k], traj.ref_means[:, k], float(traj.schedule.sigmas[k])).cpu()
    return total


@torch.no_grad()
def draw_images(policy: Policy, sampler: SamplerConfig, prompts: list[str], samples_per_prompt: int,
                seed: int) -> tuple[torch.Tensor, list[str]]:
    """`samples_per_prompt` images per prompt from fixed noise, uncharged: (B, 3, H, W) and their prompts."""
    generator = torch.Generator().manual_seed(seed)
    all_prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    with policy.meter.paused():
        images = [sample(policy, all_prompts[i:i + EVAL_BATCH], sampler, generator).images.cpu()
                  for i in range(0, len(all_prompts), EVAL_BATCH)]
    return torch.cat(images), all_prompts


def prepare_references(policy: Policy, sampler: SamplerConfig, splits: dict[str, list[str]],
                       metrics: dict[str, object], per_prompt: dict[str, int], seed: int) -> None:
    """Set metrics whose reference is the base model (FID by default) get its images on each split once,
    drawn from other noise than the evaluation's, so that at fraction 0 they show the sampling noise floor."""
    needing = [m for m in metrics.values() if getattr(m, "needs_base_reference", False)]
    if not needing:
        return
    with policy.reference():
        for split, prompts in splits.items():
            images, all_prompts = draw_images(policy, sampler, prompts, per_prompt[split], seed)
            for m in needing:
                m.set_reference(images, all_prompts)


@torch.no_grad()
def evaluate(policy: Policy, sampler: SamplerConfig, splits: dict[str, list[str]], metrics: dict[str, object],
             per_prompt: dict[str, int], seed: int) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """Returns rows (split, metric, version, higher_is_better, value, stderr, n, n_prompts, n_images), each
    split's images, and each per-image metric's scores: {split: {metric: (n_prompts, images per prompt) float64}},
    image k of prompt p drawn from the same noise at every evaluation of every run. A set metric's `compute()`
    returns a value, or (value, standard error) where it has one."""
    rows, images_by_split, scores = [], {}, {}
    with policy.meter.paused():
        for split, prompts in splits.items():
            generator = torch.Generator().manual_seed(seed)
            all_prompts = [p for p in prompts for _ in range(per_prompt[split])]
            per_sample: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
            for m in metrics.values():
                if isinstance(m, SetMetric):
                    m.reset()
            images = []
            for start in range(0, len(all_prompts), EVAL_BATCH):
                batch = all_prompts[start:start + EVAL_BATCH]
                kl = "kl-to-base" in metrics
                traj = sample(policy, batch, sampler, generator, with_reference=kl, final_reference=kl)
                images.append(traj.images.cpu())
                for name, m in metrics.items():
                    if name == "kl-to-base":
                        per_sample[name].append(kl_to_base(traj))
                    elif isinstance(m, SetMetric):
                        m.update(traj.images, batch)
                    else:
                        per_sample[name].append(m(traj.images, batch).float().cpu())
            images_by_split[split] = torch.cat(images)
            for name, m in metrics.items():
                if isinstance(m, SetMetric):
                    out = m.compute()
                    value, stderr = (float(out[0]), float(out[1])) if isinstance(out, tuple) else (float(out), 0.0)
                    n, version, hib = len(all_prompts), m.version, m.higher_is_better
                else:
                    v = torch.cat(per_sample[name]).double()
                    n = len(v)
                    scores.setdefault(split, {})[name] = v.numpy().reshape(len(prompts), per_prompt[split])
                    value, stderr = float(v.mean()), float(v.std() / math.sqrt(n)) if n > 1 else 0.0
                    version, hib = (m.version, m.higher_is_better) if isinstance(m, Reward) else (KL_VERSION, False)
                rows.append({"split": split, "metric": name, "version": version, "higher_is_better": hib,
                             "value": value, "stderr": stderr, "n": n, "n_prompts": len(prompts),
                             "n_images": len(all_prompts)})
    return rows, images_by_split, scores


def image_grid_png(images: torch.Tensor, columns: int = 8) -> bytes:
    """(B, 3, H, W) in [0, 1] -> PNG bytes of a grid with a 1-pixel white gutter (upscaled to >= 64 px tiles)."""
    imgs = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    b, h, w, _ = imgs.shape
    scale = max(1, 64 // h)
    cols = min(columns, b)
    rows = -(-b // cols)
    grid = np.full((rows * (h * scale + 1) + 1, cols * (w * scale + 1) + 1, 3), 255, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        tile = img.repeat(scale, 0).repeat(scale, 1)
        grid[1 + r * (h * scale + 1):1 + r * (h * scale + 1) + h * scale,
             1 + c * (w * scale + 1):1 + c * (w * scale + 1) + w * scale] = tile
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()
