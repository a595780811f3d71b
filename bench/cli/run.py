"""`bench run` (a suite, or a sweep's selections on fresh seeds) and `bench sweep` (the same tuning for every method)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from bench.cli.common import (
    CPUS_PER_RUN,
    DEFAULT_BUDGET,
    DEFAULT_METHODS,
    DEFAULT_MODEL,
    EXECUTOR,
    GPUS_PER_RUN,
    RAY_ADDRESS,
    RAY_WORKERS,
    THREADS,
    app,
    executor_config,
    parse_seeds,
    set_threads,
    split_list,
)
from bench.core.errors import BenchError


@app.command()
def run(
    methods: Optional[str] = typer.Option(None, help=f"Comma-separated method names (`bench ls`; default "
                                                     f"{DEFAULT_METHODS}, or every method of --from-sweep)."),
    rewards: Optional[str] = typer.Option(None, help="Comma-separated training rewards, one run per reward (default: "
                                                     "the model's own, e.g. testbed-pref on the testbed, pickscore on "
                                                     "real models)."),
    model: Optional[str] = typer.Option(None, help=f"Base model (`bench ls`; default {DEFAULT_MODEL})."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds; one run per seed (default 0)."),
    budget: Optional[str] = typer.Option(None, help=f"Training compute per run: 3e12flop / 2.5tflop (FLOPs of "
                                                    f"every module, forward and backward), 2000nfe (denoiser "
                                                    f"evaluations per sample only, backward = 2), or device time: "
                                                    f"90s, 10m, 1.5h (default {DEFAULT_BUDGET})."),
    out: Optional[Path] = typer.Option(None, help="Suite folder; an existing one is resumed (default results/default, "
                                                  "or SWEEP_DIR/final with --from-sweep)."),
    set_: list[str] = typer.Option([], "--set", help="Override any config field: key=value (repeatable), e.g. "
                                                     "rocm.beta=0.1, sampler.steps=8, eval.points=5."),
    from_sweep: Optional[Path] = typer.Option(None, "--from-sweep", help="Run the configurations `bench sweep` "
                                              "selected in this folder (its model, rewards, budget and --sets) on "
                                              "fresh --seeds and the test prompts; only eval.* may be --set."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, or auto (default auto)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A suite file (TOML: methods, rewards, seeds, "
                                          "budget, model, out, device and a 'set' table, e.g. examples/testbed.toml); "
                                          "flags given here override it."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    log_with: Optional[str] = typer.Option(None, "--log-with", help="Also log to experiment trackers, offline, "
                                           "into each run folder: tensorboard, wandb, trackio (comma-separated; "
                                           "default none). Tags: train/*, eval/<split>/<metric>, samples/<split>."),
    executor: str = EXECUTOR, cpus_per_run: Optional[float] = CPUS_PER_RUN,
    gpus_per_run: Optional[float] = GPUS_PER_RUN, ray_address: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    threads: Optional[int] = THREADS,
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="SLURM: partition of the jobs."),
    slurm_gpus: Optional[int] = typer.Option(None, "--slurm-gpus", help="SLURM: GPUs per job (default 1; 0 with "
                                                                        "--device cpu)."),
    slurm_time: Optional[int] = typer.Option(None, "--slurm-time", help="SLURM: time limit per job in minutes "
                                             "(default 240); a run that needs longer is requeued and resumes."),
    slurm_account: Optional[str] = typer.Option(None, "--slurm-account", help="SLURM: account charged."),
    slurm_cpus: Optional[int] = typer.Option(None, "--slurm-cpus", help="SLURM: CPUs per job, also its torch threads "
                                                                        "unless OMP_NUM_THREADS is set (default 4)."),
) -> None:
    """Train every method x reward x seed under the same budget, evaluating as it goes."""
    argv = ["bench", *sys.argv[1:]]
    set_threads(threads)
    from bench.run.trackers import parse_log_with

    trackers = parse_log_with(log_with)  # an unknown or uninstalled tracker is reported before anything runs
    runner = executor_config(executor, cpus_per_run, gpus_per_run, ray_address, ray_workers,
                       slurm_partition=slurm_partition, slurm_gpus=slurm_gpus, slurm_time=slurm_time,
                       slurm_account=slurm_account, slurm_cpus=slurm_cpus)
    if from_sweep is not None and config is not None:
        raise BenchError("--config and --from-sweep: give one (a sweep folder already holds its settings)")
    if from_sweep is not None:
        from bench.sweep.from_sweep import run_from_sweep

        if model is not None:
            raise BenchError(f"--model: with --from-sweep it comes from {from_sweep / 'sweep.json'}")
        from bench.core.compute import Budget
        from bench.registry.lookup import resolve_names

        chosen = resolve_names("method", split_list(methods)) if methods else None  # plugins' paths -> their names
        if budget is not None:
            Budget.parse(budget)  # a malformed budget fails here, in one line
        # --budget: report the selection at another budget; --rewards: train it on another reward (ceiling rows)
        dirs = run_from_sweep(from_sweep, parse_seeds(seeds or "0"), out, chosen, set_,
                              device or "auto", argv, show_progress=progress, log_with=trackers, budget=budget,
                              rewards=resolve_names("reward", split_list(rewards)) if rewards else None,
                              executor=runner)
        if os.environ.get("RANK", "0") == "0":
            folders = sorted({str(d.parent.parent) for d in dirs})
            print(f"{len(dirs)} runs in {', '.join(folders)}; next: bench report {folders[0]}")
        return

    from bench.run import suite_file
    from bench.run.launch import launch

    flags = suite_file.RunOptions(methods=methods, rewards=rewards, model=model, seeds=seeds, budget=budget,
                                  out=None if out is None else str(out), device=device, sets=list(set_))
    suite, out = suite_from_options(suite_file.merge(suite_file.load(config), flags) if config else flags)
    dirs = launch(suite, out, argv=argv, show_progress=progress, log_with=trackers, executor=runner)
    if os.environ.get("RANK", "0") == "0":  # one line, from the one process that wrote the results
        print(f"{len(dirs)} runs in {out}; next: bench report {out}")


def suite_from_options(opts) -> tuple:
    """(SuiteConfig, suite folder) of `bench run`'s options (bench.run.suite_file.RunOptions), defaults filled in."""
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.registry.catalog import MODEL_DEFAULTS
    from bench.registry.lookup import find
    from bench.run.config import SuiteConfig, apply_sets

    model = find("model", opts.model or DEFAULT_MODEL)  # an unknown model first; a plugin's path -> its name
    rewards = opts.rewards or MODEL_DEFAULTS.get(model, {}).get("reward", "")
    suite = SuiteConfig(methods=split_list(opts.methods or DEFAULT_METHODS), rewards=split_list(rewards),
                        seeds=parse_seeds(opts.seeds or "0"), budget=Budget.parse(opts.budget or DEFAULT_BUDGET),
                        model=ModelConfig(name=model), device=opts.device or "auto")
    apply_sets(suite, opts.sets)
    return suite, Path(opts.out or "results/default")


@app.command()
def sweep(
    methods: str = typer.Option(DEFAULT_METHODS, help="Comma-separated method names to tune (`bench ls`)."),
    trials: Optional[int] = typer.Option(None, help="tpe / grid / random: completed trials per method and reward "
                                                    "(default 8). The protocol's design sets its own count."),
    budget: str = typer.Option(DEFAULT_BUDGET, help="Training compute per trial run, as for `bench run`."),
    budgets: str = typer.Option("", help="Comma-separated reported budgets, each selected at from the same trials, "
                                         "which run to the largest (e.g. 15000nfe,45000nfe; default: --budget)."),
    lr_points: int = typer.Option(5, "--lr-points", help="protocol: points of the learning-rate grid shared by "
                                                         "every method (5: half-decades from 1e-4 to 1e-2)."),
    out: Path = typer.Option(Path("results/sweep"), help="Sweep folder; an existing one is resumed."),
    model: str = typer.Option(DEFAULT_MODEL, help="Base model (`bench ls`)."),
    rewards: str = typer.Option("", help="Comma-separated training rewards (default: the model's own)."),
    sampler: str = typer.Option("protocol", help="protocol (the same learning-rate grid for every method crossed "
                                                 "with its own knobs, edges widened: docs/protocol.md §4), or an "
                                                 "Optuna sampler: tpe, grid or random (seeded per study)."),
    sweep_seeds: str = typer.Option("100,101", help="Seeds of every trial (keep them apart from the reported "
                                                    "seeds 0,1,2: `bench run --from-sweep` refuses overlaps)."),
    set_: list[str] = typer.Option([], "--set", help="Config overrides for every trial, as for `bench run`; a "
                                                     "method field set here is fixed, not tuned."),
    select: str = typer.Option("", help="Selection metric on the validation prompts (default: the model's, never "
                                        "the training reward)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    executor: str = EXECUTOR, cpus_per_run: Optional[float] = CPUS_PER_RUN,
    gpus_per_run: Optional[float] = GPUS_PER_RUN, ray_address: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    threads: Optional[int] = THREADS,
) -> None:
    """Tune every method with the same number of trials on validation prompts and sweep seeds; select by a
    declared rule (selected.json) and report how sensitive each method is to its knobs (sensitivity.md).
    `--executor ray` runs the studies (one per method and reward) side by side, with the same results."""
    from bench.core.compute import Budget
    from bench.registry.catalog import MODEL_DEFAULTS
    from bench.registry.lookup import find, resolve_names
    from bench.sweep.driver import run_sweep
    from bench.sweep.protocol import SweepSettings, selection_metric

    runner = executor_config(executor, cpus_per_run, gpus_per_run, ray_address, ray_workers)
    set_threads(threads)
    if runner.kind == "slurm":
        raise BenchError("bench sweep --executor: serial or ray (a study's trials follow one another; run the "
                         "sweep's driver inside one SLURM allocation with a Ray cluster instead)")
    model = find("model", model)  # plugins' import paths -> their declared names, as in `bench run`
    reward_list = resolve_names("reward", split_list(rewards or MODEL_DEFAULTS.get(model, {}).get("reward", "")))
    if not reward_list:
        raise BenchError("no rewards given: e.g. --rewards brightness (see `bench ls`)")
    reported = split_list(budgets)
    for b in [budget, *reported]:
        Budget.parse(b)  # a malformed budget fails here, in one line
    if reported:
        budget = max(reported, key=lambda b: Budget.parse(b).amount)  # the trials run to the largest
    settings = SweepSettings(methods=resolve_names("method", split_list(methods)), rewards=reward_list, model=model,
                             budget=budget, trials=trials if trials is not None else (0 if sampler == "protocol"
                                                                                      else 8),
                             sampler=sampler, sweep_seeds=parse_seeds(sweep_seeds),
                             select={r: select or selection_metric(model, r) for r in reward_list},
                             sets=list(set_), device=device, budgets=reported, lr_points=lr_points)
    table = run_sweep(settings, out, argv=["bench", *sys.argv[1:]], show_progress=progress, executor=runner)
    print(table)
    print(f"selected configurations in {out / 'selected.json'}; next: bench run --from-sweep {out} --seeds 0,1,2")
