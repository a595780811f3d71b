"""Rebuild every shipped testbed weight from scratch: `python -m bench.testbed.build [--out DIR] [--seed 0]`.

Stages (each seeded from `seed`, so a build is deterministic for a seed on a given machine and thread count):
  1. attribute classifier and FID feature network (+ reference statistics of the held-out real images);
  2. gold templates (mean real stroke per digit);
  3. generator: diffusion pre-training of the teacher, then latent consistency distillation of the student;
  4. the generator's quality table (accuracy and FID at 1/2/4/8 LCM steps and for the teacher);
  5. the preference proxy, on gold-labelled pairs drawn from the generator's neighbourhood (`preference.py`).
Outputs in `out`: generator / teacher / classifier / features / gold / proxy `.safetensors` (configs in their
metadata) and `metrics.json` (every measurement above, stage timings, versions). The full build took 24 minutes
(1,417 s, pre-training 1,105 s of it) on this project's 2-core machine with 2 torch threads; `quick=True` runs
tiny versions of every stage in well under a minute (tests the pipeline).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.core.policy import ModelConfig
from bench.prompts.testbed import PRETRAIN_IMAGES
from bench.results.io import writable_folder
from bench.testbed.distill import DistillConfig, distill
from bench.testbed.evaluators import EvaluatorConfig, train_classifier, train_features
from bench.testbed.generator import GeneratorSpec, PretrainConfig, pretrain
from bench.testbed.gold import GoldSpec, templates_from
from bench.testbed.model import TEACHER_NAME, WEIGHTS_NAME, load_parts, policy_from, save_generator
from bench.testbed.nets import WEIGHTS_DIR, ClassifierSpec, FeatureSpec, PreferenceSpec, save_module, save_weights
from bench.testbed.preference import PreferenceConfig, train_proxy
from bench.testbed.quality import QualityConfig, quality_table
from bench.testbed.world import digit_masks


@dataclass
class BuildConfig:
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluators: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    @staticmethod
    def quick() -> "BuildConfig":
        """Tiny versions of every stage: exercises the whole pipeline, produces useless weights."""
        return BuildConfig(pretrain=PretrainConfig(steps=8, batch=16, warmup=2),
                           distill=DistillConfig(steps=4, batch=8, warmup=1),
                           evaluators=EvaluatorConfig(classifier_steps=10, feature_steps=10, batch=32),
                           preference=PreferenceConfig(train_pairs=64, test_pairs=32, far_pairs=16, generators=2,
                                                       finetuned=1, finetune_steps=2, finetune_saves=(2,),
                                                       finetune_batch=4, epochs=1, batch=32),
                           quality=QualityConfig(samples=40, heldout_samples=20, steps=(1, 4), teacher_steps=2))


def build_all(out_dir: Path, seed: int = 0, quick: bool = False, log=print, config: BuildConfig | None = None,
              reuse_teacher: bool = False) -> dict:
    """Train and save every testbed weight into `out_dir`; returns (and writes) the metrics dict.
    reuse_teacher: load `out_dir`'s teacher instead of pre-training it again (stage 3's diffusion pre-training is
    the slow part; everything after it is rebuilt); the metrics then keep the teacher build's timing."""
    cfg = config or (BuildConfig.quick() if quick else BuildConfig())
    out_dir = Path(out_dir)
    if reuse_teacher:  # before anything is trained or written: a missing or mismatched teacher fails at once
        if not (out_dir / f"{TEACHER_NAME}.safetensors").is_file():
            raise BenchError(f"--reuse-teacher: no {TEACHER_NAME}.safetensors in {out_dir}; build without "
                             f"--reuse-teacher to pre-train one (nothing was written)")
        teacher, text, spec = load_parts(out_dir, TEACHER_NAME)
        if spec != cfg.generator:
            raise BenchError(f"--reuse-teacher: {out_dir}'s teacher was built with {spec}, not {cfg.generator}")
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.time()

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        log(f"== {name} done in {timings[name]}s (total {time.time() - start:.0f}s)")

    t0 = time.time()
    classifier, classifier_acc = train_classifier(cfg.evaluators, seed, log)
    save_module(out_dir / "classifier.safetensors", classifier, ClassifierSpec())
    features, ref = train_features(cfg.evaluators, seed, log)
    save_module(out_dir / "features.safetensors", features, FeatureSpec(), extra=ref)
    masks, labels = digit_masks()
    ids = torch.tensor(list(PRETRAIN_IMAGES))
    templates = templates_from(masks[ids], labels[ids])
    save_weights(out_dir / "gold.safetensors", {"templates": templates}, asdict(GoldSpec()))
    stage("evaluators", t0)

    t0 = time.time()
    if reuse_teacher:
        previous = json.loads((out_dir / "metrics.json").read_text()) if (out_dir / "metrics.json").is_file() else {}
        timings["pretrain"] = previous.get("timings_s", {}).get("pretrain", float("nan"))
        log(f"== pretrain: reusing {out_dir / TEACHER_NAME}.safetensors (built in {timings['pretrain']}s)")
    else:
        teacher, text = pretrain(cfg.generator, cfg.pretrain, seed, log)
        save_generator(out_dir / f"{TEACHER_NAME}.safetensors", teacher, text, cfg.generator)
        stage("pretrain", t0)
    t0 = time.time()
    student = distill(teacher, text, cfg.generator, cfg.distill, seed, log)
    save_generator(out_dir / f"{WEIGHTS_NAME}.safetensors", student, text, cfg.generator)
    stage("distill", t0)

    t0 = time.time()
    policy = policy_from(student, text, cfg.generator, ModelConfig(name="testbed", lora_rank=0))
    quality = quality_table(policy, teacher, text, classifier, features, ref, cfg.quality, seed, log)
    stage("quality", t0)

    t0 = time.time()
    proxy, proxy_summary = train_proxy(policy, templates, cfg.preference, seed, log)
    save_module(out_dir / "proxy.safetensors", proxy, PreferenceSpec())
    stage("proxy", t0)

    timings["total"] = round(time.time() - start + (timings["pretrain"] if reuse_teacher else 0.0), 1)
    metrics = {"seed": seed, "quick": quick, "reused_teacher": reuse_teacher, "config": asdict(cfg), "timings_s": timings,
               "classifier_heldout_real_accuracy": classifier_acc, "generator_quality": quality,
               "proxy": proxy_summary,
               "generator_params": sum(p.numel() for p in student.parameters()),
               "text_encoder_params": sum(p.numel() for p in text.parameters()),
               "versions": {"torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads()},
               "weights_bytes": {p.name: p.stat().st_size for p in sorted(out_dir.glob("*.safetensors"))}}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(f"== build finished in {timings['total']}s -> {out_dir}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("testbed-weights"),
                        help="output folder (default: testbed-weights in the working directory)")
    parser.add_argument("--replace-shipped", action="store_true",
                        help="allow --out to be the shipped weights folder (bench/testbed/weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny versions of every stage (pipeline test)")
    parser.add_argument("--reuse-teacher", action="store_true",
                        help="keep --out's diffusion teacher and rebuild everything after pre-training")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (2 on a quiet 2-core machine; 1 where other jobs share the cores)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.out.resolve() == WEIGHTS_DIR.resolve() and not args.replace_shipped:
        raise BenchError(f"--out {args.out} is the shipped testbed weights, which every published number was made "
                         f"with; write elsewhere, or pass --replace-shipped to overwrite them")
    writable_folder(args.out)
    torch.set_num_threads(args.threads)
    build_all(args.out, args.seed, args.quick, reuse_teacher=args.reuse_teacher)


if __name__ == "__main__":
    main()
