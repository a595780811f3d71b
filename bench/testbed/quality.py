"""The generator's quality table: attribute accuracy and FID of the distilled LCM at 1, 2, 4, 8 steps (through
`bench.sampler.sample`, exactly as the benchmark samples) and of the teacher with 50 DDIM steps and CFG.

Accuracy is judged by the attribute classifier (digit, ink, background, all three), FID in the feature
network's 32-d space against the held-out real images. Prompts cycle through a split's prompt list so every
prompt is equally represented; the same prompts and seed are used for every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.models import Policy
from bench.sampler import SamplerConfig, sample
from bench.testbed.evaluators import attribute_accuracy, frechet_distance
from bench.testbed.generator import TextEncoder, teacher_sample
from bench.testbed.nets import AttributeClassifier, FeatureNet
from bench.testbed.world import attributes
from bench.testbed.world_prompts import HELDOUT_PROMPTS, TRAIN_PROMPTS


@dataclass
class QualityConfig:
    samples: int = 360  # images per row for the train prompts (4 per prompt)
    heldout_samples: int = 100  # images per row for the held-out (unseen-combination) prompts
    steps: tuple[int, ...] = (1, 2, 4, 8)  # LCM step counts
    guidance_scale: float = 8.0  # LCM guidance scale w = the teacher's CFG scale (SamplerConfig's default)
    teacher_steps: int = 50  # DDIM steps of the teacher
    batch: int = 256


def _cycle(prompts: list[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)]


def score_images(images: torch.Tensor, prompts: list[str], classifier: AttributeClassifier, features: FeatureNet,
                 ref: dict[str, torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        row = attribute_accuracy(classifier(images), attributes(prompts))
        row["fid"] = frechet_distance(features.encode(images).numpy(), ref["ref_mu"].numpy(), ref["ref_cov"].numpy())
    return row


def lcm_images(policy: Policy, prompts: list[str], steps: int, cfg: QualityConfig, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sampler = SamplerConfig(steps=steps, guidance_scale=cfg.guidance_scale)
    with torch.no_grad(), policy.meter.paused():
        return torch.cat([sample(policy, prompts[i:i + cfg.batch], sampler, gen).images
                          for i in range(0, len(prompts), cfg.batch)])


def quality_table(policy: Policy, teacher: torch.nn.Module | None, text: TextEncoder,
                  classifier: AttributeClassifier, features: FeatureNet, ref: dict[str, torch.Tensor],
                  cfg: QualityConfig, seed: int, log=print) -> dict:
    """{"train": {"lcm-1": row, ..., "teacher-ddim-50": row}, "heldout": {...}, "config": ...};
    a row holds the attribute accuracies and the FID."""
    table: dict = {"config": {**cfg.__dict__, "steps": list(cfg.steps)}}
    for split, names, n in (("train", TRAIN_PROMPTS, cfg.samples), ("heldout", HELDOUT_PROMPTS, cfg.heldout_samples)):
        prompts = _cycle(names, n)
        rows = {}
        for steps in cfg.steps:
            t0 = time.time()
            rows[f"lcm-{steps}"] = score_images(lcm_images(policy, prompts, steps, cfg, seed), prompts, classifier,
                                                features, ref)
            rows[f"lcm-{steps}"]["seconds"] = round(time.time() - t0, 1)
        if teacher is not None:
            t0 = time.time()
            images = teacher_sample(teacher, text, prompts, cfg.teacher_steps, cfg.guidance_scale,
                                    torch.Generator().manual_seed(seed), policy.scheduler.config.prediction_type,
                                    cfg.batch)
            rows[f"teacher-ddim-{cfg.teacher_steps}"] = score_images(images, prompts, classifier, features, ref)
            rows[f"teacher-ddim-{cfg.teacher_steps}"]["seconds"] = round(time.time() - t0, 1)
        table[split] = rows
        for name, row in rows.items():
            log(f"quality {split:8s} {name:16s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return table
