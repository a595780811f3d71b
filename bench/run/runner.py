"""The runner: trains every (method, reward, seed) of a suite under the same compute budget, evaluates each
at fixed fractions of it, and writes results so that a killed suite resumes where it stopped.

Per run (see bench/results/schema.py for the files): build the base model (identical for every run), the reward,
the method; evaluate the base model (fraction 0) on every prompt of the evaluated splits; then repeat outer
steps — each timed and charged to the meter — evaluating whenever a fraction of its evaluation schedule is crossed (bench/run/config.py eval_schedule).
Budgets are matched exactly (docs/protocol.md, bench/run/budget.py): an outer step is started only if it is
predicted to fit within the budget plus 0.5%; a time budget's first step is taken once uncharged (the warm-up) and
its last one may be smaller; the final evaluation is taken where the run stops and labelled fraction 1 (its
`budget_used` says how much was really spent). Then save the trained adapter and write summary.json last.

Mid-run checkpoints (bench/run/checkpoint.py) are saved at every evaluation point and every `checkpoint.every_steps`
steps / `checkpoint.every_minutes` minutes. A run folder without summary.json is an interrupted attempt: with a
usable checkpoint (the same config.json) the run continues from it — rebuilt exactly as a new run, the base
evaluation replayed unwritten (it fills the per-prompt caches), the state loaded, the logs cut back to their size
at the checkpoint — so that with a count budget it ends bit-identical to an uninterrupted run; without one the
attempt is moved aside (never deleted) and the run is redone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.core import distributed
from bench.core.combine import Combined, term_means
from bench.core.compute import ComputeMeter
from bench.core.device import resolve_device
from bench.core.distributed import Dist
from bench.core.errors import BenchError
from bench.core.reward import Reward
from bench.registry.lookup import metric_class, model_builder, reward_class
from bench.results import io as results
from bench.results import schema
from bench.results.locks import file_lock, run_lock
from bench.results.scores import write_scores
from bench.run import checkpoint
from bench.run.budget import StopRule, warm_up
from bench.run.config import (
    SuiteConfig,
    eval_prompts,
    eval_schedule,
    images_per_prompt,
    method_config,
    metrics_for,
    split_prompts,
    to_dict,
    validate,
)
from bench.run.evaluate import evaluate, image_grid_png, prepare_references
from bench.run.standardise import standardise
from bench.run.trackers import RunLog
from bench.testbed.nets import weights_digest

PROTOCOL = 3
"""Version of the evaluation protocol (docs/protocol.md), written into every manifest and run config. 1: the
first 16 prompts of two splits, denoiser-only compute, budgets overshot by up to one step. 2: three splits,
every prompt evaluated, every module's FLOPs charged, budgets matched within BUDGET_TOLERANCE. 3: the dense early
evaluation schedule, per-image scores kept, time budgets with an uncharged warm-up; count budgets charge the
algorithm, not the sampler's checkpoint recomputation (counted apart), and kl-to-base includes the final step."""


def command_record(suite: SuiteConfig, argv: list[str]) -> schema.Command:
    """This command, for the suite's history (bench/results/schema.py Command): time, argv, git revision, versions."""
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
    return schema.Command(
        argv=list(argv), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), git=git,
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        versions={"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                  "transformers": transformers.__version__, "peft": peft.__version__},
        methods=list(suite.methods), rewards=list(suite.rewards), seeds=list(suite.seeds),
        weights=weights_digest() if any("testbed" in n for n in [suite.model.name, *suite.rewards]) else {})


def run_suite(suite: SuiteConfig, out: Path, argv: list[str] | None = None, show_progress: bool = True,
              log_with: tuple[str, ...] = ()) -> list[Path]:
    """Run every missing run of the suite into `out`, one after another in this process; returns the run folders.
    Under `accelerate launch` every process calls this; process 0 alone writes (bench/core/distributed.py) and logs
    to the `log_with` experiment trackers (bench/run/trackers.py). Ray and SLURM: bench/run/launch.py."""
    dist, dist_device = distributed.init()
    validate(suite)
    out = Path(out)
    if dist.is_main:
        results.writable_folder(out)
        write_manifest(suite, out, argv or sys.argv)
    dist.barrier()
    specs = suite_specs(suite)
    dirs = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), disable=not (show_progress and dist.is_main), transient=False) as progress:
        overall = progress.add_task(f"suite ({len(specs)} runs)", total=len(specs))
        for method, reward, seed in specs:
            # one writer per run folder, also against another `bench run` into it (a data-parallel run has several
            # processes but one writer, process 0)
            with run_lock(out, results.run_id(method, reward, seed)) if dist.world == 1 else nullcontext():
                dirs.append(run_spec(suite, out, method, reward, seed, progress, dist, dist_device, log_with))
            progress.advance(overall)
    return dirs


def suite_specs(suite: SuiteConfig) -> list[tuple[str, str, int]]:
    """Every (method, reward, seed) run of the suite, in the order the serial runner takes them."""
    return [(m, r, s) for m in suite.methods for r in suite.rewards for s in suite.seeds]


def run_spec(suite: SuiteConfig, out: Path, method: str, reward: str, seed: int, progress: Progress | None = None,
             dist: Dist = Dist(), dist_device: torch.device | None = None, log_with: tuple[str, ...] = ()) -> Path:
    """One run of a suite whose manifest is written: skipped when its summary.json exists, continued from its
    checkpoint when it has a usable one (bench/run/checkpoint.py), else (re)done into out/runs/<id>. The unit every
    executor (bench/run/executors.py) hands out; one writer per run folder."""
    run_dir = out / "runs" / results.run_id(method, reward, seed)
    done = (run_dir / "summary.json").exists()
    state, why = None, ""
    if not done and run_dir.exists():
        state, why = checkpoint.load(run_dir, run_config(suite, method, reward, seed, dist, dist_device), dist.world)
    dist.barrier()  # every process has looked before process 0 moves anything
    if done:
        results.read_json(run_dir / "summary.json")  # a corrupt summary is an error, not a skip
        if dist.is_main:  # left by a kill between summary.json and the checkpoint's removal
            (run_dir / checkpoint.FILE).unlink(missing_ok=True)
        return run_dir
    if dist.is_main and run_dir.exists() and state is None:
        k = 1
        while run_dir.with_name(f"{run_dir.name}.interrupted-{k}").exists():
            k += 1
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.interrupted-{k}"))
        print(f"warning: {run_dir.name}: {why}; the attempt is moved to {run_dir.name}.interrupted-{k} and redone",
              file=sys.stderr)
    dist.barrier()
    if progress is not None:
        task = progress.add_task(results.run_id(method, reward, seed), total=1.0)
        on_progress = lambda frac, msg: progress.update(task, completed=min(frac, 1.0), description=msg)  # noqa: E731
    else:
        on_progress = lambda frac, msg: None  # noqa: E731
    with RunLog(log_with if dist.is_main else (), run_dir) as log:  # closed even if the run fails
        run_one(suite, method, reward, seed, run_dir, on_progress, dist, dist_device, log, resume=state)
    return run_dir


def write_manifest(suite: SuiteConfig, out: Path, argv: list[str]) -> None:
    """Append this command to the suite's history (bench/results/schema.py Manifest). Resuming, or extending a suite with
    more methods / rewards / seeds, needs the same settings and protocol; an older manifest is read in any schema
    and written back in the current one, its history kept. Several processes may append at once (several `bench
    run` into one folder): the read-modify-write holds SUITE/.manifest.lock, so no command is lost."""
    with file_lock(out / ".manifest.lock"):
        append_command(suite, out, argv)


def append_command(suite: SuiteConfig, out: Path, argv: list[str]) -> None:
    """write_manifest's read-modify-write, under its lock."""
    cmd = command_record(suite, argv)
    config = json.loads(json.dumps(to_dict(suite)))  # as JSON reads it back (tuples become lists)
    path = out / "manifest.json"
    man = schema.Manifest(config=config, commands=[cmd], protocol=PROTOCOL, created=cmd.time)
    if path.exists():
        old = schema.Manifest.from_json(results.read_json(path), path)
        lists = ("methods", "rewards", "seeds")
        # `explicit` records which keys came from --set, not a setting: a default given explicitly is the same suite
        # and checkpoint intervals never change results, so a suite may be resumed with others
        settings = lambda c: {k: v for k, v in c.items() if k not in (*lists, "explicit", "checkpoint")}  # noqa: E731
        if settings(old.config) != settings(config):
            raise BenchError(f"{out} holds a suite with different settings; choose another --out (nothing was changed)")
        if (old.protocol or 1) != PROTOCOL:
            raise BenchError(f"{out} holds a suite made under protocol {old.protocol or 1}, not {PROTOCOL}; "
                             f"choose another --out (nothing was changed)")
        for k in lists:
            config[k] = list(dict.fromkeys([*(old.config.get(k) or []), *config[k]]))
        man = schema.Manifest(config=config, commands=[*old.commands, cmd], protocol=PROTOCOL,
                              created=old.created or cmd.time)
    results.write_json_atomic(path, man.to_json())


def build_metrics(suite: SuiteConfig, reward_name: str, reward: Reward, device: torch.device,
                  meter: ComputeMeter) -> dict:
    """Every metric of the evaluation; the training reward object is reused for its own metric, and a weighted
    sum's term objects for the terms' (one normaliser per z(NAME) object)."""
    metrics = {}
    parts = reward.parts if isinstance(reward, Combined) else {}  # a weighted sum's terms, each its own metric
    for name in metrics_for(suite, reward_name):
        if name == "kl-to-base":
            metrics[name] = None  # computed by the evaluation harness from the trajectories
        elif name == reward_name:
            metrics[name] = reward
        elif name in parts:
            metrics[name] = parts[name]
        else:
            m_cls = metric_class(name)
            metrics[name] = m_cls(device, meter) if issubclass(m_cls, Reward) else m_cls(device)
    return metrics


def run_device(suite: SuiteConfig, dist_device: torch.device | None = None) -> torch.device:
    """The device a run trains on: the process's own under `accelerate launch` with device "auto"."""
    return dist_device if (dist_device is not None and suite.device == "auto") else resolve_device(suite.device)


def eval_setup(suite: SuiteConfig) -> tuple[dict, dict, dict]:
    """(every split's prompts, the evaluated prompts of each evaluated split, images per prompt of each)."""
    splits = split_prompts(suite)
    eval_splits = {s: eval_prompts(splits[s], suite.eval.max_prompts) for s in suite.eval.splits}
    return splits, eval_splits, {s: images_per_prompt(len(p), suite.eval) for s, p in eval_splits.items()}


def run_config(suite: SuiteConfig, method: str, reward_name: str, seed: int, dist: Dist = Dist(),
               dist_device: torch.device | None = None) -> dict:
    """The run's config.json, as JSON reads it back; nothing is built. A checkpoint resumes only into the same."""
    cls, cfg = method_config(method, suite)
    cfg.validate(method, suite.sampler)  # fills derived fields (DDPO's batch) as the method's constructor does
    splits, _, per_prompt = eval_setup(suite)
    config = schema.RunConfig(
        method=method, reward=reward_name, seed=seed, budget=suite.budget.as_dict(), protocol=PROTOCOL,
        model=to_dict(suite.model), sampler=to_dict(suite.sampler), eval=to_dict(suite.eval),
        eval_images_per_prompt=per_prompt, method_config=to_dict(cfg), method_class=f"{cls.__module__}:{cls.__name__}",
        metrics=metrics_for(suite, reward_name), prompts=splits, device=str(run_device(suite, dist_device)),
        processes=dist.world)
    return json.loads(json.dumps(config.to_json()))


def run_one(suite: SuiteConfig, method: str, reward_name: str, seed: int, run_dir: Path, on_progress,
            dist: Dist = Dist(), dist_device: torch.device | None = None, log: RunLog | None = None,
            resume: dict | None = None) -> None:
    """One run into run_dir; `resume`: a checkpoint (bench/run/checkpoint.py load) to continue from."""
    log = log or RunLog((), run_dir)  # experiment trackers: copies of what is written here, never instead of it
    device = run_device(suite, dist_device)
    cls, cfg = method_config(method, suite)
    torch.manual_seed(seed)  # LoRA initialisation (the same in every process); the base weights do not depend on it
    meter = ComputeMeter()
    policy = model_builder(suite.model.name)(suite.model, meter).to(device)
    reward = reward_class(reward_name)(device, meter)
    reward.autocast_dtype = suite.model.dtype  # a GPU scores in the model's dtype (bench/core/reward.py)
    metrics = build_metrics(suite, reward_name, reward, device, meter)
    splits, eval_splits, per_prompt = eval_setup(suite)
    standardise([reward, *metrics.values()], policy, suite.sampler, splits["train"], suite.eval.seed,
                suite.model.name, run_dir, dist)  # z(NAME)'s μ₀, σ₀ on the base model, uncharged
    algo = cls(method, cfg, policy, suite.sampler, reward, splits["train"], torch.Generator().manual_seed(seed), dist)
    config = run_config(suite, method, reward_name, seed, dist, dist_device)
    if dist.is_main:
        results.write_json_atomic(run_dir / "config.json", config)

    budget, schedule, every = suite.budget, eval_schedule(suite.eval), suite.checkpoint
    reported = suite.eval.splits[-1]  # the split shown in sample grids and summary.json (test, or validation)
    label = f"{method} {reward_name} s{seed}"

    def eval_at(fractions: list[float], step: int) -> dict:
        """Process 0 evaluates and writes; the others wait (evaluation is never charged)."""
        final = {}
        points_text = "the base model" if fractions == [0.0] else ", ".join(f"{f:.0%}" for f in fractions)
        on_progress(budget.spent(counters) / budget.amount, f"{label}: evaluating {points_text} "
                    f"({sum(len(p) for p in eval_splits.values())} prompts, every metric)")
        if dist.is_main:
            reward.autocast_dtype = None  # every metric is evaluated in full precision, the training reward too
            rows, images, scores = evaluate(policy, suite.sampler, eval_splits, metrics, per_prompt, suite.eval.seed)
            reward.autocast_dtype = suite.model.dtype
            checkpoint.fault("evaluation")
            used = budget.spent(counters) / budget.amount
            write_scores(run_dir, step, fractions, used, scores, eval_splits)
            results.append_jsonl(run_dir / "eval.jsonl", [
                schema.EvalRow(step=step, fraction=f, budget_used=used, **_compute_columns(counters), **row).to_json()
                for f in fractions for row in rows])
            png = image_grid_png(images[reported][: suite.eval.grid_images])
            for f in fractions:
                results.write_bytes_atomic(run_dir / "samples" / f"frac{f:.2f}.png", png)
            final = {r["metric"]: r["value"] for r in rows if r["split"] == reported}
            log.evaluation(step, used, rows, images, suite.eval.grid_images)
        dist.barrier()
        return final

    on_progress(0.0, f"{label}: preparing the evaluation (reference images and statistics)")
    if dist.is_main:
        prepare_references(policy, suite.sampler, eval_splits, metrics, per_prompt, suite.eval.seed + 1)
    counters = dist.sum(meter.counters())  # compute of every process together
    warmup = 0.0
    if resume is None:
        final = eval_at([0.0], 0)
        done, rule, elapsed = set(), StopRule(budget), 0.0  # done: the schedule's fractions evaluated so far
        if budget.kind == "seconds":  # CUDA start-up, kernel selection, compilation: before the clock starts
            on_progress(0.0, f"{label}: warm-up step (uncharged, undone)")
            warmup = warm_up(policy, algo, meter)
    else:
        if dist.is_main:  # the base evaluation's effect on every per-prompt cache (text embeddings), uncharged
            evaluate(policy, suite.sampler, eval_splits, metrics, per_prompt, suite.eval.seed)
        progress = checkpoint.restore(resume, policy, algo, meter, dist)
        if dist.is_main:
            checkpoint.cut_logs(run_dir, progress["logs"])
        dist.barrier()
        counters = dist.sum(meter.counters())
        done, final = set(progress.get("done_fractions") or [i / suite.eval.points for i in
                                                              progress.get("done_points", [])]), progress["final"]
        rule, elapsed, warmup = StopRule.from_state(budget, progress), progress["elapsed"], progress.get("warmup", 0.0)
    t_start = time.perf_counter() - elapsed  # wall time of every attempt together
    last_save = time.monotonic()
    on_progress(budget.spent(counters) / budget.amount, f"{label}: training")
    step = with_term_logs(algo, reward, dist)
    # bench/run/budget.py: a step starts only if it fits; a time budget's last step may be smaller
    while (share := rule.next_step(budget.spent(counters), algo.step_parts())) > 0:
        before = budget.spent(counters)
        nfe_before = counters["nfe"]
        with meter.timing():
            logs = step() if share >= 1 else step(fraction=share)
        counters = dist.sum(meter.counters())
        if counters["nfe"] == nfe_before:
            raise BenchError(f"{method}: an outer step charged no compute; the run could never end")
        rule.record(budget.spent(counters) - before, share)
        if algo.steps_done == 1 and budget.spent(counters) > rule.limit:
            raise BenchError(f"{method}: one outer step costs {budget.spent(counters):.4g} {budget.kind}, more than "
                             f"the whole budget ({budget.text}); give a larger --budget or a smaller batch")
        frac = budget.spent(counters) / budget.amount
        if dist.is_main:
            row = schema.TrainRow(algo.steps_done, frac, counters, logs).to_json()
            results.append_jsonl(run_dir / "train.jsonl", [row])
            log.train(row)
        crossed = [f for f in schedule[:-1] if f not in done and frac >= f - 1e-9]  # the last: where it stops
        if crossed:
            done.update(crossed)
            final = eval_at(crossed, algo.steps_done)
        by_time = every.every_minutes > 0 and time.monotonic() - last_save >= 60 * every.every_minutes
        if (crossed or (every.every_steps > 0 and algo.steps_done % every.every_steps == 0)
                or (every.every_minutes > 0 and dist.sum({"due": float(by_time)})["due"] > 0)):  # all decide alike
            checkpoint.save(run_dir, config, policy, algo, meter, {
                "done_fractions": sorted(done), **rule.state(), "final": final, "warmup": warmup,
                "elapsed": time.perf_counter() - t_start}, dist)
            last_save = time.monotonic()
        on_progress(frac, f"{label}: step {algo.steps_done}, batch mean {reward_name} "
                          f"{logs.get('reward_mean', float('nan')):.3g}")
    # The last evaluation point is where the run stopped: the next step would not have fit in the budget.
    final = eval_at([f for f in schedule if f not in done], algo.steps_done)

    if dist.is_main:
        from safetensors.torch import save_file

        save_file(policy.trainable_state_dict(), str(run_dir / "adapter.safetensors"))
        results.write_json_atomic(run_dir / "summary.json", schema.Summary(
            steps=algo.steps_done, counters=counters, budget_used=budget.spent(counters) / budget.amount,
            reported_split=reported, final=final, wall_seconds=time.perf_counter() - t_start,
            processes=dist.world, warmup_seconds=warmup).to_json())
        (run_dir / checkpoint.FILE).unlink(missing_ok=True)  # summary.json, written last, marks the run done
    dist.barrier()


def with_term_logs(algo, reward: Reward, dist: Dist):
    """algo.step, whose logs gain, for a weighted sum of rewards, each term's mean over the images the step scored
    ("reward/<term>", bench/core/combine.py), over every process."""
    if not isinstance(reward, Combined):
        return algo.step

    def step(fraction: float = 1.0) -> dict:
        with reward.recording() as sums:
            logs = algo.step() if fraction >= 1 else algo.step(fraction=fraction)
        return {**logs, **term_means(dist.sum(sums))}

    return step


def _compute_columns(counters: dict) -> dict:
    """The compute counters copied into every evaluation row (the report's x axes; schema.EvalRow)."""
    return {k: counters[k] for k in ("nfe", "seconds", "flops", "nfe_eq")}
