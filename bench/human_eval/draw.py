"""The images raters compare: every method's final adapter and the base model on the reported prompts, each
(prompt, sample) drawn from the same initial and per-step noise for every system, so a pair differs only by
the method.

A *system* is one (method, training reward) of the suite, its adapter taken from the lowest seed of its
complete runs (`summary.json` and `adapter.safetensors` present), plus `base` (the model with adapters off).
Its name is the method, or `method@reward` when the suite trained on several rewards. The noise comes from
`bench.run.evaluate.draw_images` with one seed: the same prompt list in the same order gives every system the same
noise for image (prompt i, sample k). Every image is also scored by every per-image metric of the runs (the
automatic metrics that analysis.py compares with the raters).

Files (SUITE/human_eval/): `images/<id>.png` (native resolution; the page upscales them) and `images.json`:
settings, prompts, systems, metric directions, and per image id its system, prompt index, sample index and
scores. Ids are random tokens, so neither a file name nor a URL names a method. A system already drawn is kept;
systems of runs completed later are added from the same noise. images.json is rewritten atomically after each
system, so an interrupted draw keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import typing
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from bench.human_eval import FOLDER
from bench.results.io import read_json, write_bytes_atomic, write_json_atomic

BASE = "base"
"""The system name of the base model (adapters disabled)."""


@dataclass
class DrawConfig:
    """Which images the raters see."""

    samples_per_prompt: int = 2
    """Images per prompt and system (sample k of every system shares its noise)."""
    seed: int = 31337
    """Seed of the noise generator: one stream for every system (apart from the evaluation's seeds)."""
    split: str = "test"
    """Prompt split shown: the reported test prompts, seen by no training and no tuning."""
    device: str = "auto"
    """cpu, cuda, cuda:1 or auto."""


def images_path(suite_dir: Path) -> Path:
    return Path(suite_dir) / FOLDER / "images.json"


def read_index(suite_dir: Path) -> dict:
    """images.json, or a BenchError saying how to make it."""
    path = images_path(suite_dir)
    if not path.exists():
        raise BenchError(f"no human-evaluation images in {path.parent}: run `bench human-eval {suite_dir}` first")
    index = read_json(path)
    if not isinstance(index, dict) or not isinstance(index.get("images"), dict):
        raise BenchError(f"corrupt human-evaluation index {path}: not written by bench human-eval")
    return index


def final_runs(suite_dir: Path) -> dict[str, Path]:
    """{system name: run folder} of the suite's complete runs, lowest seed per (method, reward)."""
    runs_dir = Path(suite_dir) / "runs"
    if not runs_dir.is_dir():
        raise BenchError(f"no runs folder in {suite_dir}: is it a suite folder (bench run --out SUITE)?")
    chosen: dict[tuple[str, str], tuple[int, Path]] = {}
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and ".interrupted-" not in p.name):
        if not ((d / "summary.json").exists() and (d / "adapter.safetensors").exists()):
            continue
        cfg = read_json(d / "config.json")
        try:
            key, seed = (str(cfg["method"]), str(cfg["reward"])), int(cfg["seed"])
        except (TypeError, KeyError, ValueError):
            raise BenchError(f"bad run config {d / 'config.json'}: needs method, reward and an integer seed") from None
        if key not in chosen or seed < chosen[key][0]:
            chosen[key] = (seed, d)
    if not chosen:
        raise BenchError(f"no complete run with an adapter under {runs_dir}: finish the suite first (bench run)")
    several = len({r for _, r in chosen}) > 1
    return {(f"{m}@{r}" if several else m): d for (m, r), (_, d) in sorted(chosen.items())}


def from_dict(cls: type, values: dict):
    """A config dataclass from its JSON form (lists back to tuples where the field is a tuple)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if typing.get_origin(hints[f.name]) is tuple and isinstance(v, list) else v
    return cls(**kwargs)


def draw(suite_dir: Path, cfg: DrawConfig = DrawConfig(), log=print) -> dict:
    """Draw the images of every system not drawn yet; returns the index (images.json)."""
    if cfg.samples_per_prompt < 1:
        raise BenchError(f"--images-per-prompt must be >= 1, got {cfg.samples_per_prompt}")
    suite_dir = Path(suite_dir)
    runs = final_runs(suite_dir)
    run_cfg = read_json(next(iter(runs.values())) / "config.json")
    if not all(isinstance(run_cfg.get(k), dict) for k in ("model", "sampler", "prompts")):
        raise BenchError(f"bad run config in {next(iter(runs.values()))}: needs model, sampler and prompts")
    prompts = list(run_cfg["prompts"].get(cfg.split) or [])
    if not prompts:
        raise BenchError(f"the suite's runs have no '{cfg.split}' prompts to show")
    settings = {"split": cfg.split, "seed": cfg.seed, "samples_per_prompt": cfg.samples_per_prompt,
                "model": run_cfg["model"], "sampler": run_cfg["sampler"], "prompts": prompts}
    path = images_path(suite_dir)
    index = read_index(suite_dir) if path.exists() else {**settings, "systems": {}, "metrics": {}, "images": {}}
    differ = [k for k, v in settings.items() if index.get(k) != v]
    if differ:
        raise BenchError(f"{path} was drawn with other settings ({', '.join(differ)}); its votes refer to those "
                         f"images: use the same options, or move {path.parent} aside to start afresh")
    todo = [s for s in [BASE, *runs] if s not in index["systems"]]
    if not todo:
        return index  # without importing torch: serving a drawn suite starts fast

    import torch
    from safetensors.torch import load_file

    from bench.core.compute import ComputeMeter
    from bench.core.device import resolve_device
    from bench.core.policy import ModelConfig
    from bench.core.reward import Reward
    from bench.core.sampler import SamplerConfig
    from bench.registry.lookup import is_remote, metric_class, model_builder
    from bench.run.evaluate import draw_images

    device = resolve_device(cfg.device)
    meter = ComputeMeter()
    model_cfg = from_dict(ModelConfig, run_cfg["model"])
    sampler = from_dict(SamplerConfig, run_cfg["sampler"])
    torch.manual_seed(0)  # the LoRA initialisation, overwritten by every adapter and unused by the base model
    policy = model_builder(model_cfg.name)(model_cfg, meter).to(device)
    # Per-image metrics only (not set metrics or kl-to-base); a served reward's server may not be running now.
    names = [m for m in run_cfg.get("metrics", []) if m != "kl-to-base" and not is_remote(m)]
    metrics = {m: metric_class(m)(device, meter) for m in names if issubclass(metric_class(m), Reward)}
    index["metrics"] = {m: {"higher_is_better": bool(r.higher_is_better), "version": r.version}
                        for m, r in metrics.items()}
    for system in todo:
        log(f"drawing {len(prompts) * cfg.samples_per_prompt} images of {system}")
        if system == BASE:
            with policy.reference():
                images, all_prompts = draw_images(policy, sampler, prompts, cfg.samples_per_prompt, cfg.seed)
        else:
            policy.load_trainable_state_dict(load_file(str(runs[system] / "adapter.safetensors")))
            images, all_prompts = draw_images(policy, sampler, prompts, cfg.samples_per_prompt, cfg.seed)
        with torch.no_grad(), meter.paused():
            scores = {m: r(images.to(device), all_prompts).float().cpu().tolist() for m, r in metrics.items()}
        for i, image in enumerate(images):
            image_id = secrets.token_hex(8)
            write_bytes_atomic(path.parent / "images" / f"{image_id}.png", png_bytes(image))
            index["images"][image_id] = {"system": system, "prompt": i // cfg.samples_per_prompt,
                                         "sample": i % cfg.samples_per_prompt,
                                         "scores": {m: s[i] for m, s in scores.items()}}
        index["systems"][system] = {"run": None if system == BASE else runs[system].name}
        write_json_atomic(path, index)
    return index


def png_bytes(image) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes at native resolution."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
