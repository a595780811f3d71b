"""Normalisers of standardised rewards: μ₀ and σ₀ of every `z(NAME)` a run trains on or evaluates, measured at
its start on the base model (docs/methods.md §0, docs/results-format.md).

What is measured, identically for every run of a suite: the base model (adapters off, `policy.reference()`)
draws `ceil(MIN_IMAGES / n)` images for each of the n training prompts through the suite's sampler, from the
noise of seed `eval.seed + 2` (not the evaluation's own noise, `eval.seed`, nor the FID reference's, + 1); NAME
scores them; μ₀ is their mean and σ₀ their standard deviation (n − 1). Nothing of the other splits, nor of the
policy being trained, enters. It is not charged (`meter.paused()`, like evaluation), and the per-prompt caches it
fills (the policy's text embeddings, a CLIP reward's text tower) are emptied again, so that a run on z(NAME) is
charged exactly what one on NAME is. It runs before anything else uses the policy, in every run, resumed ones
included.

The suite keeps one record, SUITE/standardisation.json: the first run to measure a NAME writes it there and every
run uses the recorded value, so a suite's methods share one normaliser even where their runs went to machines
whose last bits differ. Each run also writes the normalisers it used into its own standardisation.json.
"""

from __future__ import annotations

import math

import torch

from bench.core.combine import Combined, Standardised
from bench.core.distributed import Dist
from bench.core.errors import BenchError
from bench.core.policy import Policy
from bench.core.sampler import SamplerConfig
from bench.results import io as results
from bench.results import schema
from bench.results.locks import file_lock
from bench.run.evaluate import EVAL_BATCH, draw_images

MIN_IMAGES = 256
"""At least this many base-model images per normaliser: σ₀'s relative standard error is then about
1/√(2 (n − 1)) ≈ 4.4% for a roughly normal reward."""
SEED_OFFSET = 2
"""The normalisers' noise is seed eval.seed + SEED_OFFSET."""
FILE = "standardisation.json"


def standardised(objects) -> dict[str, list[Standardised]]:
    """Every z(NAME) object among `objects` (rewards and metrics; the terms of weighted sums included), by name."""
    found: dict[str, list[Standardised]] = {}
    stack = list(objects)
    while stack:
        obj = stack.pop(0)
        if isinstance(obj, Standardised):
            found.setdefault(obj.name, []).append(obj)
        elif isinstance(obj, Combined):
            stack += list(obj.parts.values())
    return found


def base_images(policy: Policy, sampler: SamplerConfig, prompts: list[str],
                seed: int) -> tuple[torch.Tensor, list[str]]:
    """The base model's images of `prompts`, the same number for each, at least MIN_IMAGES in all (uncharged)."""
    per_prompt = max(1, -(-MIN_IMAGES // max(len(prompts), 1)))
    with policy.reference():
        return draw_images(policy, sampler, prompts, per_prompt, seed)


def measure(obj: Standardised, images: torch.Tensor, prompts: list[str], n_prompts: int, seed: int,
            model: str) -> schema.Normaliser:
    """μ₀, σ₀ of obj's reward over `images` (B, 3, H, W) of `prompts` (uncharged)."""
    with torch.no_grad(), obj.meter.paused():
        scores = torch.cat([obj.inner(images[i:i + EVAL_BATCH].to(obj.inner.device), prompts[i:i + EVAL_BATCH])
                            .detach().double().cpu() for i in range(0, len(prompts), EVAL_BATCH)])
    return schema.Normaliser(reward=obj.inner.name, version=obj.inner.version, mean=float(scores.mean()),
                             std=float(scores.std()) if len(scores) > 1 else math.nan, n_images=len(scores),
                             n_prompts=n_prompts, seed=seed, model=model)


def standardise(objects, policy: Policy, sampler: SamplerConfig, train_prompts: list[str], eval_seed: int,
                model: str, run_dir, dist: Dist = Dist()) -> dict[str, schema.Normaliser]:
    """Measure, record and set the normaliser of every z(NAME) among `objects` (the training reward and the
    metrics); returns them by name ({} when there is none). Process 0 measures and writes; every process sets the
    same values."""
    found = standardised(objects)
    if not found:
        return {}
    used: dict[str, schema.Normaliser] = {}
    if dist.is_main:
        seed = eval_seed + SEED_OFFSET
        fresh = policy.cached_prompts == 0
        images, prompts = base_images(policy, sampler, train_prompts, seed)
        measured = {name: measure(objs[0], images, prompts, len(train_prompts), seed, model)
                    for name, objs in found.items()}
        # Leave the per-prompt caches as they were, so the run is charged as one without z(...) would be
        if fresh:
            policy.clear_prompt_cache()
        for objs in found.values():
            objs[0].clear_prompt_cache()
        used = suite_record(run_dir.parent.parent, measured)
        results.write_json_atomic(run_dir / FILE, {k: v.to_json() for k, v in used.items()})
    # every process gets process 0's values (the others add 0)
    values = dist.sum({f"{name}/{k}": (getattr(used[name], k) if dist.is_main else 0.0)
                       for name in found for k in ("mean", "std")})
    for name, objs in found.items():
        for obj in objs:
            obj.set_normaliser(values[f"{name}/mean"], values[f"{name}/std"])
    return used


def suite_record(suite_dir, measured: dict[str, schema.Normaliser]) -> dict[str, schema.Normaliser]:
    """The suite's normalisers for these names: those SUITE/standardisation.json holds, the measured ones added to
    it for the others. A recorded one made with another version of the reward, another seed or image count is an
    error: the suite's runs would not share one normaliser."""
    path = suite_dir / FILE
    with file_lock(suite_dir / ".standardisation.lock"):
        record = schema.read_normalisers(results.read_json(path), path) if path.exists() else {}
        changed = False
        for name, new in measured.items():
            old = record.get(name)
            if old is None:
                record[name], changed = new, True
            elif (old.reward, old.version, old.seed, old.n_images, old.n_prompts, old.model) != \
                    (new.reward, new.version, new.seed, new.n_images, new.n_prompts, new.model):
                raise BenchError(f"{path} records {name}'s normaliser for {old.reward} version {old.version} on "
                                 f"{old.n_images} images of {old.model} (seed {old.seed}), and this run measures it "
                                 f"for version {new.version} on {new.n_images} images of {new.model} (seed "
                                 f"{new.seed}); choose another --out")
        if changed:
            results.write_json_atomic(path, {k: v.to_json() for k, v in sorted(record.items())})
    return {name: record[name] for name in measured}
