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
import math
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
from bench.testbed.nets import (
    PROXY_B_NAME,
    WEIGHTS_DIR,
    AttributeClassifier,
    ClassifierSpec,
    FeatureNet,
    FeatureSpec,
    PreferenceNet,
    PreferenceSpec,
    load_module,
    load_weights,
    save_module,
    save_weights,
)
from bench.testbed.preference import (
    PreferenceConfig,
    SecondProxyConfig,
    gold_of,
    proxy_data,
    train_proxy,
    train_second_proxy,
)
from bench.testbed.quality import QualityConfig, measured_before, measured_key, quality_table
from bench.testbed.world import digit_masks

STAGES = ("evaluators", "pretrain", "distill", "quality", "proxy", "proxy-b")
"""The build's stages, in order; `only` runs some of them, reading what they need from the output folder."""


@dataclass
class BuildConfig:
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluators: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    proxy_b: SecondProxyConfig = field(default_factory=SecondProxyConfig)

    @staticmethod
    def quick() -> "BuildConfig":
        """Tiny versions of every stage: exercises the whole pipeline, produces useless weights."""
        return BuildConfig(pretrain=PretrainConfig(steps=8, batch=16, warmup=2),
                           distill=DistillConfig(steps=4, batch=8, warmup=1),
                           evaluators=EvaluatorConfig(classifier_steps=10, feature_steps=10, batch=32),
                           preference=PreferenceConfig(train_pairs=64, test_pairs=32, far_pairs=16, generators=2,
                                                       finetuned=1, finetune_steps=2, finetune_saves=(2,),
                                                       finetune_batch=4, epochs=1, batch=32, gradient_images=8),
                           quality=QualityConfig(samples=40, heldout_samples=20, steps=(1, 4), teacher_steps=2),
                           proxy_b=SecondProxyConfig(train_pairs=64))


class _Parts:
    """What the stages hand on: each part trained by an earlier stage, or read from the output folder when that
    stage did not run (`only`)."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.made = out_dir, {}

    def __getitem__(self, name: str):
        if name not in self.made:
            self.made |= self._load(name)
        return self.made[name]

    def __setitem__(self, name: str, value) -> None:
        self.made[name] = value

    def _load(self, name: str) -> dict:
        d = self.out_dir
        if name in ("classifier",):
            return {"classifier": load_module("classifier", AttributeClassifier, ClassifierSpec, d)[0]}
        if name in ("features", "ref"):
            features, ref = load_module("features", FeatureNet, FeatureSpec, d)
            return {"features": features, "ref": ref}
        if name == "templates":
            return {"templates": load_weights("gold", d)[0]["templates"]}
        if name in ("teacher", "text"):
            teacher, text, _ = load_parts(d, TEACHER_NAME)
            return {"teacher": teacher, "text": text}
        if name == "student":
            return {"student": load_parts(d, WEIGHTS_NAME)[0]}
        if name == "proxy":
            return {"proxy": load_module("proxy", PreferenceNet, PreferenceSpec, d)[0]}
        raise KeyError(name)


def build_all(out_dir: Path, seed: int = 0, quick: bool = False, log=print, config: BuildConfig | None = None,
              reuse_teacher: bool = False, only: tuple[str, ...] = (), remeasure: bool = False) -> dict:
    """Train and save every testbed weight into `out_dir`; returns (and writes) the metrics dict.
    reuse_teacher: load `out_dir`'s teacher instead of pre-training it again (stage 3's diffusion pre-training is
    the slow part; everything after it is rebuilt); the metrics then keep the teacher build's timing.
    only: run just these stages (STAGES), reading every other weight they need from `out_dir` and keeping the rest
    of its metrics.json (each stage run replaces its own entries and timing; "total" is then the sum of the stage
    timings). `proxy-b` without `proxy` redraws the first proxy's data (its generators and pairs, which the second
    proxy shares) but does not retrain it.
    remeasure: measure the generator's quality table even where a recorded one was measured on bit-identical weights
    (bench/testbed/quality.py measured_key)."""
    cfg = config or (BuildConfig.quick() if quick else BuildConfig())
    out_dir = Path(out_dir)
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise BenchError(f"unknown testbed build stage '{unknown[0]}'; the stages are {', '.join(STAGES)}")
    if reuse_teacher:  # before anything is trained or written: a missing or mismatched teacher fails at once
        if not (out_dir / f"{TEACHER_NAME}.safetensors").is_file():
            raise BenchError(f"--reuse-teacher: no {TEACHER_NAME}.safetensors in {out_dir}; build without "
                             f"--reuse-teacher to pre-train one (nothing was written)")
        spec = load_parts(out_dir, TEACHER_NAME)[2]
        if spec != cfg.generator:
            raise BenchError(f"--reuse-teacher: {out_dir}'s teacher was built with {spec}, not {cfg.generator}")
        only = only or tuple(s for s in STAGES if s != "pretrain")
    stages = tuple(s for s in STAGES if not only or s in only)
    # out_dir's metrics.json, read before anything is written (an only-build keeps the rest of it), and the shipped
    # one: a quality table either holds for bit-identical weights is taken
    sources = (out_dir / "metrics.json", WEIGHTS_DIR / "metrics.json")
    recorded = [json.loads(p.read_text()) for p in sources if p.is_file()]
    previous = recorded[0] if only and sources[0].is_file() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = dict(previous.get("timings_s", {}))
    timings.pop("total", None)
    metrics = {k: v for k, v in previous.items() if k not in ("timings_s",)}
    parts = _Parts(out_dir)
    start = time.time()

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        log(f"== {name} done in {timings[name]}s (total {time.time() - start:.0f}s)")

    if "evaluators" in stages:
        t0 = time.time()
        parts["classifier"], metrics["classifier_heldout_real_accuracy"] = train_classifier(cfg.evaluators, seed, log)
        save_module(out_dir / "classifier.safetensors", parts["classifier"], ClassifierSpec())
        parts["features"], parts["ref"] = train_features(cfg.evaluators, seed, log)
        save_module(out_dir / "features.safetensors", parts["features"], FeatureSpec(), extra=parts["ref"])
        masks, labels = digit_masks()
        ids = torch.tensor(list(PRETRAIN_IMAGES))
        parts["templates"] = templates_from(masks[ids], labels[ids])
        save_weights(out_dir / "gold.safetensors", {"templates": parts["templates"]}, asdict(GoldSpec()))
        stage("evaluators", t0)
    if "pretrain" in stages:
        t0 = time.time()
        parts["teacher"], parts["text"] = pretrain(cfg.generator, cfg.pretrain, seed, log)
        save_generator(out_dir / f"{TEACHER_NAME}.safetensors", parts["teacher"], parts["text"], cfg.generator)
        stage("pretrain", t0)
    elif reuse_teacher:
        log(f"== pretrain: reusing {out_dir / TEACHER_NAME}.safetensors (built in {timings.get('pretrain')}s)")
    if "distill" in stages:
        t0 = time.time()
        parts["student"] = distill(parts["teacher"], parts["text"], cfg.generator, cfg.distill, seed, log)
        save_generator(out_dir / f"{WEIGHTS_NAME}.safetensors", parts["student"], parts["text"], cfg.generator)
        stage("distill", t0)
    policy = None
    if any(s in stages for s in ("quality", "proxy", "proxy-b")):
        policy = policy_from(parts["student"], parts["text"], cfg.generator, ModelConfig(name="testbed", lora_rank=0))
    if "quality" in stages:
        t0 = time.time()
        measured = [out_dir / f"{n}.safetensors" for n in (WEIGHTS_NAME, TEACHER_NAME, "classifier", "features")]
        key = measured_key(measured, cfg.quality, seed)
        table = None if remeasure else measured_before(key, recorded)
        if table is None:
            table = quality_table(policy, parts["teacher"], parts["text"], parts["classifier"], parts["features"],
                                  parts["ref"], cfg.quality, seed, log) | {"key": key}
        else:
            log("quality: the generator, teacher and evaluators are bit-identical to those a recorded table was "
                "measured on (same config, seed, torch, threads): that table is taken (--remeasure draws it again)")
        metrics["generator_quality"] = table
        stage("quality", t0)
    data = None
    if "proxy" in stages:
        t0 = time.time()
        parts["proxy"], metrics["proxy"], data = train_proxy(policy, parts["templates"], cfg.preference, seed, log)
        save_module(out_dir / "proxy.safetensors", parts["proxy"], PreferenceSpec())
        stage("proxy", t0)
    if "proxy-b" in stages:
        t0 = time.time()
        if data is None:  # the first proxy's generators and pairs, drawn again exactly as its stage draws them
            torch.manual_seed(seed)
            data = proxy_data(policy, gold_of(parts["templates"]), cfg.preference,
                              torch.Generator().manual_seed(seed + 2), log)
        proxy_b, metrics["proxy_b"] = train_second_proxy(policy, parts["templates"], cfg.preference, cfg.proxy_b,
                                                          seed, parts["proxy"], data, log)
        save_module(out_dir / f"{PROXY_B_NAME}.safetensors", proxy_b, PreferenceSpec())
        stage("proxy-b", t0)

    timings["total"] = round(sum(v for v in timings.values() if math.isfinite(v)), 1)  # NaN: a stage never timed
    student = parts["student"]
    metrics |= {"seed": seed, "quick": quick, "reused_teacher": "pretrain" not in stages,
                "config": asdict(cfg), "timings_s": timings,
                "generator_params": sum(p.numel() for p in student.parameters()),
                "text_encoder_params": sum(p.numel() for p in parts["text"].parameters()),
                "versions": {"torch": torch.__version__, "python": platform.python_version(),
                             "threads": torch.get_num_threads()},
                "weights_bytes": {p.name: p.stat().st_size for p in sorted(out_dir.glob("*.safetensors"))}}
    if only:
        metrics["stages_run"] = list(stages)
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
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the quality table even where one was measured on bit-identical weights")
    parser.add_argument("--only", default="",
                        help=f"comma-separated stages to run ({', '.join(STAGES)}), reading what they need from --out")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.out.resolve() == WEIGHTS_DIR.resolve() and not args.replace_shipped:
        raise BenchError(f"--out {args.out} is the shipped testbed weights, which every published number was made "
                         f"with; write elsewhere, or pass --replace-shipped to overwrite them")
    writable_folder(args.out, create=False)  # created by build_all once its options are checked
    torch.set_num_threads(args.threads)
    build_all(args.out, args.seed, args.quick, reuse_teacher=args.reuse_teacher,
              only=tuple(x.strip() for x in args.only.split(",") if x.strip()), remeasure=args.remeasure)


if __name__ == "__main__":
    main()
