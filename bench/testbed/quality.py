"""The generator's quality table: attribute accuracy and FID of the distilled LCM at 1, 2, 4, 8 steps (through
`bench.core.sampler.sample`, exactly as the benchmark samples) and of the teacher with 50 DDIM steps and CFG.

Accuracy is judged by the attribute classifier (digit, ink, background, all three), FID in the feature
network's 32-d space against the held-out real images, diversity as the mean feature distance between two
images of the same prompt (`evaluators.diversity_of`, the `testbed-diversity` metric's formula). A "real" row gives the
same numbers for real digits of the same prompts in their colours (training images for the train prompts,
held-out images for the held-out ones), the yardstick of the diversity target. Prompts cycle through a split's
prompt list so every prompt is equally represented; the same prompts and seed are used for every row.

The table is a deterministic function of the weights it measures (`measured_key`): a build whose generator, teacher
and evaluators are bit-identical to those a recorded table was measured on (the shipped weights, rebuilt from
scratch on this project's machine) takes that table instead of sampling the same images again (460 teacher images
at 50 guided DDIM steps, the LCM's at 1 to 8 steps: ~2 of a rebuild's minutes); `bench testbed build --remeasure`
measures anyway.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.core.policy import Policy
from bench.core.sampler import SamplerConfig, sample
from bench.prompts.testbed import HELDOUT_IMAGES, HELDOUT_PROMPTS, PRETRAIN_IMAGES, TRAIN_PROMPTS
from bench.testbed.evaluators import attribute_accuracy, diversity_of, frechet_distance
from bench.testbed.generator import TextEncoder, teacher_sample
from bench.testbed.nets import AttributeClassifier, FeatureNet
from bench.testbed.world import DigitSampler, attributes


@dataclass
class QualityConfig:
    samples: int = 360  # images per row for the train prompts (4 per prompt)
    heldout_samples: int = 100  # images per row for the held-out (unseen-combination) prompts
    steps: tuple[int, ...] = (1, 2, 4, 8)  # LCM step counts
    guidance_scale: float = 2.0  # LCM guidance scale w = the teacher's CFG scale (the testbed's sampling default)
    teacher_steps: int = 50  # DDIM steps of the teacher
    batch: int = 256  # LCM images per sampling call (the noise is drawn per call: it decides which image gets which)
    teacher_batch: int = 64  # teacher images per DDIM call (128 rows with the guidance pair). The teacher's only noise
    # is its initial one, drawn per call in order, and a forward's rows do not depend on the batch: any value gives
    # the same images, bit for bit; on 2 CPU threads a UNet forward costs ~30% less per row at 128 rows than at 512


QUALITY_CODE = 1
"""Version of what quality_table measures: bump it when its numbers change for the same weights (a new column, another
formula), so that no table measured by older code is reused (`measured_key`)."""


def measured_key(weights: list[Path], cfg: QualityConfig, seed: int) -> str:
    """sha256 of everything the table is a function of: the weight files it measures (generator, teacher,
    classifier, feature network with its reference statistics), its config (but `teacher_batch`, which changes the
    cost and never the images), the seed, torch's version and thread count, QUALITY_CODE."""
    h = hashlib.sha256()
    for path in weights:
        h.update(Path(path).read_bytes())
    settings = {k: v for k, v in asdict(cfg).items() if k != "teacher_batch"}
    h.update(json.dumps({"config": settings, "seed": seed, "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "code": QUALITY_CODE}, sort_keys=True).encode())
    return h.hexdigest()


def measured_before(key: str, recorded: list[dict]) -> dict | None:
    """The quality table one of the `recorded` metrics dicts (metrics.json files) holds for `key` — measured on these
    very weights, with this config, seed, torch and thread count, by this code: the same numbers, bit for bit — or
    None."""
    for metrics in recorded:
        table = metrics.get("generator_quality") if isinstance(metrics, dict) else None
        if isinstance(table, dict) and table.get("key") == key:
            return table
    return None


def _cycle(prompts: list[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)]


def score_images(images: torch.Tensor, prompts: list[str], classifier: AttributeClassifier, features: FeatureNet,
                 ref: dict[str, torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        row = attribute_accuracy(classifier(images), attributes(prompts))
        feats = features.encode(images).double().numpy()
    row["fid"] = frechet_distance(feats, ref["ref_mu"].numpy(), ref["ref_cov"].numpy())
    row["diversity"] = diversity_of(feats, prompts)
    return row


def real_images(prompts: list[str], image_ids: range, seed: int) -> torch.Tensor:
    """A real digit of each prompt's digit (drawn from `image_ids`) in its colours: (B, 3, 16, 16)."""
    return DigitSampler(image_ids, []).for_prompts(prompts, torch.Generator().manual_seed(seed))


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
    a row holds the attribute accuracies, the FID and the diversity; "real" rows score real digits."""
    table: dict = {"config": {**cfg.__dict__, "steps": list(cfg.steps)}}
    splits = (("train", TRAIN_PROMPTS, cfg.samples, PRETRAIN_IMAGES),
              ("heldout", HELDOUT_PROMPTS, cfg.heldout_samples, HELDOUT_IMAGES))
    for split, names, n, image_ids in splits:
        prompts = _cycle(names, n)
        rows = {"real": score_images(real_images(prompts, image_ids, seed), prompts, classifier, features, ref)}
        for steps in cfg.steps:
            t0 = time.time()
            rows[f"lcm-{steps}"] = score_images(lcm_images(policy, prompts, steps, cfg, seed), prompts, classifier,
                                                features, ref)
            rows[f"lcm-{steps}"]["seconds"] = round(time.time() - t0, 1)
        if teacher is not None:
            t0 = time.time()
            images = teacher_sample(teacher, text, prompts, cfg.teacher_steps, cfg.guidance_scale,
                                    torch.Generator().manual_seed(seed), policy.scheduler.config.prediction_type,
                                    cfg.teacher_batch)
            rows[f"teacher-ddim-{cfg.teacher_steps}"] = score_images(images, prompts, classifier, features, ref)
            rows[f"teacher-ddim-{cfg.teacher_steps}"]["seconds"] = round(time.time() - t0, 1)
        table[split] = rows
        for name, row in rows.items():
            log(f"quality {split:8s} {name:16s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return table
