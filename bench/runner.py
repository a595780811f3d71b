"""The runner: trains every (method, reward, seed) of a suite under the same compute budget, evaluates each
at fixed fractions of it, and writes results so that a killed suite resumes where it stopped.

Per run (see bench/results.py for the files): build the base model (identical for every run), the reward,
the method; evaluate the base model (fraction 0); then repeat outer steps — each timed and charged to the
meter — until the budget is spent (so a run ends within one outer step past it), evaluating whenever a
budget fraction k/points is crossed; save the trained adapter; write summary.json last. A run folder without
summary.json is an interrupted attempt: it is moved aside (never deleted) and the run is redone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import distributed, results
from bench.compute import ComputeMeter
from bench.distributed import Dist
from bench.config import SuiteConfig, method_config, metrics_for, to_dict, validate
from bench.errors import BenchError
from bench.evaluate import evaluate, image_grid_png, prepare_references
from bench.prompts import load_prompts
from bench.reward import Reward
from bench.registry import MODEL_DEFAULTS, metric_class, model_builder, reward_class


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device '{name}' requested but no CUDA device is available; use --device cpu")
    return torch.device(name)


def split_prompts(suite: SuiteConfig) -> dict[str, list[str]]:
    default = suite.prompts.set or MODEL_DEFAULTS.get(suite.model.name, {}).get("prompts", "tiny")
    return {split: load_prompts(getattr(suite.prompts, split) or default, split) for split in ("train", "heldout")}


def manifest(suite: SuiteConfig, argv: list[str]) -> dict:
    import diffusers
    import peft
    import transformers

    try:
        # "<sha>-dirty" when tracked files differ from the commit (e.g. weights rebuilt but not yet committed)
        git = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    dev = resolve_device(suite.device)
    return {"argv": argv, "config": to_dict(suite), "git": git, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}}


def run_suite(suite: SuiteConfig, out: Path, argv: list[str] | None = None, show_progress: bool = True) -> list[Path]:
    """Run every missing run of the suite into `out`; returns the run folders. Under `accelerate launch` every
    process calls this; process 0 alone writes (bench/distributed.py)."""
    dist, dist_device = distributed.init()
    validate(suite)
    out = Path(out)
    if dist.is_main:
        write_manifest(suite, out, argv or sys.argv)
    dist.barrier()
    specs = [(m, r, s) for m in suite.methods for r in suite.rewards for s in suite.seeds]
    dirs = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), disable=not (show_progress and dist.is_main), transient=False) as progress:
        overall = progress.add_task(f"suite ({len(specs)} runs)", total=len(specs))
        for method, reward, seed in specs:
            run_dir = out / "runs" / results.run_id(method, reward, seed)
            dirs.append(run_dir)
            done = (run_dir / "summary.json").exists()
            dist.barrier()  # every process has looked before process 0 moves anything
            if done:
                results.read_json(run_dir / "summary.json")  # a corrupt summary is an error, not a skip
                progress.advance(overall)
                continue
            if dist.is_main and run_dir.exists():
                k = 1
                while run_dir.with_name(f"{run_dir.name}.interrupted-{k}").exists():
                    k += 1
                run_dir.rename(run_dir.with_name(f"{run_dir.name}.interrupted-{k}"))
            dist.barrier()
            task = progress.add_task(results.run_id(method, reward, seed), total=1.0)
            run_one(suite, method, reward, seed, run_dir,
                    lambda frac, msg: progress.update(task, completed=min(frac, 1.0), description=msg),
                    dist, dist_device)
            progress.advance(overall)
    return dirs


def write_manifest(suite: SuiteConfig, out: Path, argv: list[str]) -> None:
    """Resuming, or extending a suite with more methods / rewards / seeds, needs the same settings."""
    man = manifest(suite, argv)
    path = out / "manifest.json"
    if path.exists():
        old = results.read_json(path)
        now = json.loads(json.dumps(man["config"]))
        lists = ("methods", "rewards", "seeds")
        if {k: v for k, v in old.get("config", {}).items() if k not in lists} != \
                {k: v for k, v in now.items() if k not in lists}:
            raise BenchError(f"{out} holds a suite with different settings; choose another --out (nothing was changed)")
        for k in lists:
            man["config"][k] = list(dict.fromkeys(old["config"][k] + now[k]))
    results.write_json_atomic(path, man)


def build_metrics(suite: SuiteConfig, reward_name: str, reward: Reward, device: torch.device,
                  meter: ComputeMeter) -> dict:
    """Every metric of the evaluation; the training reward object is reused for its own metric."""
    metrics = {}
    for name in metrics_for(suite, reward_name):
        if name == "kl-to-base":
            metrics[name] = None  # computed by the evaluation harness from the trajectories
        elif name == reward_name:
            metrics[name] = reward
        else:
            m_cls = metric_class(name)
            metrics[name] = m_cls(device, meter) if issubclass(m_cls, Reward) else m_cls(device)
    return metrics


def run_one(suite: SuiteConfig, method: str, reward_name: str, seed: int, run_dir: Path, on_progress,
            dist: Dist = Dist(), dist_device: torch.device | None = None) -> None:
    device = dist_device if (dist_device is not None and suite.device == "auto") else resolve_device(suite.device)
    cls, cfg = method_config(method, suite)
    torch.manual_seed(seed)  # LoRA initialisation (the same in every process); the base weights do not depend on it
    meter = ComputeMeter()
    policy = model_builder(suite.model.name)(suite.model, meter).to(device)
    reward = reward_class(reward_name)(device, meter)
    metrics = build_metrics(suite, reward_name, reward, device, meter)
    splits = split_prompts(suite)
    eval_splits = {s: p[: suite.eval.max_prompts] for s, p in splits.items()}
    algo = cls(method, cfg, policy, suite.sampler, reward, splits["train"], torch.Generator().manual_seed(seed), dist)
    if dist.is_main:
        results.write_json_atomic(run_dir / "config.json", {
            "method": method, "reward": reward_name, "seed": seed, "budget": suite.budget.as_dict(),
            "model": to_dict(suite.model), "sampler": to_dict(suite.sampler), "eval": to_dict(suite.eval),
            "method_config": to_dict(cfg), "method_class": f"{cls.__module__}:{cls.__name__}",
            "metrics": list(metrics), "prompts": splits, "device": str(device), "processes": dist.world})

    budget, points = suite.budget, suite.eval.points
    done_points: set[int] = set()
    t_start = time.perf_counter()
    counters = dist.sum(meter.counters())  # compute of every process together

    def eval_at(fractions: list[float], step: int) -> dict:
        """Process 0 evaluates and writes; the others wait (evaluation is never charged)."""
        final = {}
        if dist.is_main:
            rows, images = evaluate(policy, suite.sampler, eval_splits, metrics, suite.eval.samples_per_prompt,
                                    suite.eval.seed)
            results.append_jsonl(run_dir / "eval.jsonl", [
                {"step": step, "fraction": f, "nfe": counters["nfe"], "seconds": counters["seconds"], **row}
                for f in fractions for row in rows])
            png = image_grid_png(images["heldout"][: suite.eval.grid_images])
            for f in fractions:
                results.write_bytes_atomic(run_dir / "samples" / f"frac{f:.2f}.png", png)
            final = {r["metric"]: r["value"] for r in rows if r["split"] == "heldout"}
        dist.barrier()
        return final

    if dist.is_main:
        prepare_references(policy, suite.sampler, eval_splits, metrics, suite.eval.samples_per_prompt,
                           suite.eval.seed + 1)
    final = eval_at([0.0], 0)
    on_progress(0.0, f"{method} {reward_name} s{seed}")
    while budget.spent(counters) < budget.amount:
        nfe_before = counters["nfe"]
        with meter.timing():
            logs = algo.step()
        counters = dist.sum(meter.counters())
        if counters["nfe"] == nfe_before:
            raise BenchError(f"{method}: an outer step charged no compute; the run could never end")
        frac = budget.spent(counters) / budget.amount
        if dist.is_main:
            results.append_jsonl(run_dir / "train.jsonl",
                                 [{"step": algo.steps_done, **counters, "budget_used": frac, **logs}])
        crossed = [i for i in range(1, points + 1) if i not in done_points and frac >= i / points - 1e-9]
        if crossed:
            done_points.update(crossed)
            final = eval_at([i / points for i in crossed], algo.steps_done)
        on_progress(frac, f"{method} {reward_name} s{seed}: {reward_name} {logs.get('reward_mean', float('nan')):.3g}")

    if dist.is_main:
        from safetensors.torch import save_file

        save_file(policy.trainable_state_dict(), str(run_dir / "adapter.safetensors"))
        results.write_json_atomic(run_dir / "summary.json", {
            "status": "complete", "steps": algo.steps_done, **counters, "processes": dist.world,
            "wall_seconds": time.perf_counter() - t_start, "final_heldout": final})
    dist.barrier()
