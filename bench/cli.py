"""The `bench` command line (typer): ls, run, sweep, report, export, sample, perf, fetch, testbed.

Mistakes a user can fix (unknown names, bad budgets, missing weights, corrupt files, NaN losses) print one
line, `error: ...`, and exit with code 2 — never a traceback. Heavy imports happen inside the commands so
that `bench ls` and `bench report` start fast (the report never imports torch).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from bench.errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A benchmark suite for RLHF on latent consistency models: ROCM, DDPO and D3PO under one "
                       "sampler, one reward interface and matched compute budgets.")

# `bench run` with no arguments: the built-in offline testbed, a regularised ROCM with an unbounded and a
# bounded divergence, unregularised ROCM (the reward-hacking ablation), DDPO and D3PO, on the learned
# preference proxy. The budget is in FLOPs, the unit that charges every module (docs/protocol.md): 2.5e12 FLOPs is
# about 14,700 evaluations of the testbed's LoRA denoiser (1.70e8 FLOPs per sample).
DEFAULT_MODEL = "testbed"
DEFAULT_METHODS = "rocm-kl,rocm-hellinger,rocm-none,ddpo,d3po"
DEFAULT_BUDGET = "2.5tflop"


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in _split(text)]
    except ValueError:
        raise BenchError(f"bad --seeds '{text}': expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"bad --seeds '{text}': repeated seed")
    return seeds


@app.command("ls")
def ls() -> None:
    """List methods, rewards, metrics, models and divergences (installed plugins too), one line each."""
    from bench.plugins import load_entry_points
    from bench.registry import METHODS, MODELS, REWARDS, SET_METRICS, describe

    load_entry_points()
    print("methods:")
    for name, (target, overrides) in METHODS.items():
        extra = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"  {name:<22} {describe(target, 'method')}" + (f" [{extra}]" if extra else ""))
    _section("rewards (also metrics):", REWARDS, lambda t: describe(t, "reward"))
    _section("set metrics (evaluation only):", SET_METRICS, lambda t: describe(t, "metric"))
    print(f"  {'kl-to-base':<22} KL of the policy's trajectory distribution from the base model (always computed)")
    _section("models:", MODELS, lambda t: describe(t, "model"))
    from methods.divergences import DIVERGENCES

    _section("divergences (ROCM):", DIVERGENCES, lambda fn: (fn.__doc__ or "").strip().splitlines()[0])


def _section(title: str, registry: dict, line) -> None:
    """`title`, then one line per registered name: the name and `line(entry)`."""
    print(title)
    for name, entry in registry.items():
        print(f"  {name:<22} {line(entry)}")


# Executor options, shared by `bench run` and `bench sweep` (bench/executors.py, docs/executors.md). None: not
# given (the executor's default applies; an option of another executor is an error).
EXECUTOR = typer.Option("serial", "--executor", help="Who runs the runs: serial (this process, one after another), "
                        "ray (a Ray task each) or slurm (a SLURM job each, through submitit).")
CPUS_PER_RUN = typer.Option(None, "--cpus-per-run", help="Ray: CPU cores each run requests, also its torch threads "
                            "unless OMP_NUM_THREADS is set (default 1).")
GPUS_PER_RUN = typer.Option(None, "--gpus-per-run", help="Ray: GPUs each run requests (default 1 when the device is "
                            "cuda, or auto on a cluster with GPUs; else 0).")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray: an existing cluster (auto, HOST:PORT, ray://HOST:PORT); "
                           "default: a local Ray instance.")
RAY_WORKERS = typer.Option(None, "--ray-workers", help="Ray: CPUs of the local instance (default: all of them).")


def _executor(kind: str, cpus_per_run, gpus_per_run, ray_address, ray_workers, **slurm):
    """The executor options as a checked bench.executors.ExecutorConfig."""
    from bench.executors import ExecutorConfig, check

    cfg = ExecutorConfig(kind=kind.strip(), cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                         ray_address=ray_address, ray_workers=ray_workers, **slurm)
    check(cfg)
    return cfg


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
    from bench.trackers import parse_log_with

    trackers = parse_log_with(log_with)  # an unknown or uninstalled tracker is reported before anything runs
    runner = _executor(executor, cpus_per_run, gpus_per_run, ray_address, ray_workers,
                       slurm_partition=slurm_partition, slurm_gpus=slurm_gpus, slurm_time=slurm_time,
                       slurm_account=slurm_account, slurm_cpus=slurm_cpus)
    if from_sweep is not None and config is not None:
        raise BenchError("--config and --from-sweep: give one (a sweep folder already holds its settings)")
    if from_sweep is not None:
        from bench.sweep_results import run_from_sweep

        if model is not None:
            raise BenchError(f"--model: with --from-sweep it comes from {from_sweep / 'sweep.json'}")
        from bench.compute import Budget
        from bench.registry import resolve_names

        chosen = resolve_names("method", _split(methods)) if methods else None  # plugins' paths -> their names
        if budget is not None:
            Budget.parse(budget)  # a malformed budget fails here, in one line
        # --budget: report the selection at another budget; --rewards: train it on another reward (ceiling rows)
        dirs = run_from_sweep(from_sweep, _seeds(seeds or "0"), out, chosen, set_,
                              device or "auto", argv, show_progress=progress, log_with=trackers, budget=budget,
                              rewards=resolve_names("reward", _split(rewards)) if rewards else None,
                              executor=runner)
        if os.environ.get("RANK", "0") == "0":
            folders = sorted({str(d.parent.parent) for d in dirs})
            print(f"{len(dirs)} runs in {', '.join(folders)}; next: bench report {folders[0]}")
        return

    from bench import suite_file
    from bench.runner import run_suite

    flags = suite_file.RunOptions(methods=methods, rewards=rewards, model=model, seeds=seeds, budget=budget,
                                  out=None if out is None else str(out), device=device, sets=list(set_))
    suite, out = suite_from_options(suite_file.merge(suite_file.load(config), flags) if config else flags)
    dirs = run_suite(suite, out, argv=argv, show_progress=progress, log_with=trackers, executor=runner)
    if os.environ.get("RANK", "0") == "0":  # one line, from the one process that wrote the results
        print(f"{len(dirs)} runs in {out}; next: bench report {out}")


def suite_from_options(opts) -> tuple:
    """(SuiteConfig, suite folder) of `bench run`'s options (bench.suite_file.RunOptions), defaults filled in."""
    from bench.compute import Budget
    from bench.config import SuiteConfig, apply_sets
    from bench.models import ModelConfig
    from bench.registry import MODEL_DEFAULTS, find

    model = find("model", opts.model or DEFAULT_MODEL)  # an unknown model first; a plugin's path -> its name
    rewards = opts.rewards or MODEL_DEFAULTS.get(model, {}).get("reward", "")
    suite = SuiteConfig(methods=_split(opts.methods or DEFAULT_METHODS), rewards=_split(rewards),
                        seeds=_seeds(opts.seeds or "0"), budget=Budget.parse(opts.budget or DEFAULT_BUDGET),
                        model=ModelConfig(name=model), device=opts.device or "auto")
    apply_sets(suite, opts.sets)
    return suite, Path(opts.out or "results/default")


@app.command()
def sweep(
    methods: str = typer.Option(DEFAULT_METHODS, help="Comma-separated method names to tune (`bench ls`)."),
    trials: int = typer.Option(8, help="Completed trials per method and reward: the same tuning budget for all."),
    budget: str = typer.Option(DEFAULT_BUDGET, help="Training compute per trial run, as for `bench run`."),
    out: Path = typer.Option(Path("results/sweep"), help="Sweep folder; an existing one is resumed."),
    model: str = typer.Option(DEFAULT_MODEL, help="Base model (`bench ls`)."),
    rewards: str = typer.Option("", help="Comma-separated training rewards (default: the model's own)."),
    sampler: str = typer.Option("tpe", help="Optuna sampler: tpe, grid or random (seeded per method and reward)."),
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
) -> None:
    """Tune every method with the same number of trials on validation prompts and sweep seeds; select by a
    declared rule (selected.json) and report how sensitive each method is to its knobs (sensitivity.md).
    `--executor ray` runs the studies (one per method and reward) side by side, with the same results."""
    from bench.registry import MODEL_DEFAULTS, find, resolve_names
    from bench.sweep import SweepSettings, run_sweep, selection_metric

    runner = _executor(executor, cpus_per_run, gpus_per_run, ray_address, ray_workers)
    if runner.kind == "slurm":
        raise BenchError("bench sweep --executor: serial or ray (a study's trials follow one another; run the "
                         "sweep's driver inside one SLURM allocation with a Ray cluster instead)")
    model = find("model", model)  # plugins' import paths -> their declared names, as in `bench run`
    reward_list = resolve_names("reward", _split(rewards or MODEL_DEFAULTS.get(model, {}).get("reward", "")))
    if not reward_list:
        raise BenchError("no rewards given: e.g. --rewards brightness (see `bench ls`)")
    settings = SweepSettings(methods=resolve_names("method", _split(methods)), rewards=reward_list, model=model,
                             budget=budget, trials=trials,
                             sampler=sampler, sweep_seeds=_seeds(sweep_seeds),
                             select={r: select or selection_metric(model, r) for r in reward_list},
                             sets=list(set_), device=device)
    table = run_sweep(settings, out, argv=["bench", *sys.argv[1:]], show_progress=progress, executor=runner)
    print(table)
    print(f"selected configurations in {out / 'selected.json'}; next: bench run --from-sweep {out} --seeds 0,1,2")


@app.command()
def report(suite_dir: Path = typer.Argument(..., help="A folder written by `bench run`."),
           out: Path = typer.Option(None, help="Where to write (default SUITE_DIR/report).")) -> None:
    """Tables (Markdown, CSV, LaTeX), plots and image grids from a suite folder (reads files only)."""
    from bench.report import build_report

    if not suite_dir.is_dir():
        raise BenchError(f"suite folder not found: {suite_dir}")
    files = build_report(suite_dir, out)
    table = next((f for f in files if f.name == "table.md"), None)
    if table is not None:
        print(table.read_text())
    print(f"wrote {len(files)} files to {files[0].parent if files else out}")


@app.command()
def claims(suites: list[Path] = typer.Argument(None, help="Suite folders of runs trained on the proxy rewards."),
           out: Path = typer.Option(..., help="Where to write claims.md and the plots."),
           ceiling: list[Path] = typer.Option([], help="Suite folder(s) of the same methods trained on --gold."),
           sweep: Optional[Path] = typer.Option(None, help="A `bench sweep` folder: C4 from its trials.csv."),
           gold: str = typer.Option("testbed-gold", help="The held-out metric nobody trains on."),
           gold_gain: float = typer.Option(0.01, help="C1 gold threshold: base x (1 + this)."),
           proxy_gain: float = typer.Option(0.5, help="C1 proxy threshold: base x (1 + this)."),
           split: str = typer.Option("test", help="Split of C1 and the frontier."),
           at: str = typer.Option("", help="Comma-separated compute points (the suites' unit, e.g. 15000,45000) "
                                           "at which to tabulate every metric (each run interpolated "
                                           "between its evaluation points).")) -> None:
    """The paper's claims C1 (compute to threshold), C4 (sensitivity over sweep trials) and C6 (train-test gap,
    gold-versus-√KL frontier) from suite folders: tables in OUT/claims.md and one plot each (reads files only)."""
    from bench.claims import ClaimsConfig, write_claims

    suites = suites or []
    for folder in [*suites, *ceiling, *([sweep] if sweep else [])]:
        if not folder.is_dir():
            raise BenchError(f"folder not found: {folder}")
    if gold_gain < 0 or proxy_gain < 0:
        raise BenchError("--gold-gain and --proxy-gain must be >= 0")
    try:
        budgets = tuple(float(x) for x in _split(at))
    except ValueError:
        raise BenchError(f"--at {at}: give numbers, e.g. --at 15000,45000") from None
    files = write_claims(suites, out, ClaimsConfig(gold=gold, gold_gain=gold_gain, proxy_gain=proxy_gain,
                                                   split=split, budgets=budgets), ceiling=ceiling, sweep=sweep)
    print(files[0].read_text())
    print(f"wrote {len(files)} files to {out}")


@app.command()
def perf(
    model: str = typer.Option("tiny", help="Model to time (tiny-vae is TRL's benchmark configuration)."),
    methods: str = typer.Option("rocm-kl,ddpo,d3po", help="Methods to time."),
    repeats: int = typer.Option(5, help="Timed steps per method, after one warm-up step."),
    set_: list[str] = typer.Option([], "--set", help="Config overrides, as for `bench run`."),
    out: Path = typer.Option(Path("results/perf.json"), help="JSON output."),
    memory_steps: str = typer.Option("1,2,4,8", help="Sampling steps for ROCM's peak-memory sweep ('' to skip)."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Time each method's training step against the bare denoiser compute it contains; peak memory."""
    from bench.perf import run_perf

    run_perf(model=model, methods=_split(methods), repeats=repeats, sets=set_, out=out,
             memory_steps=[int(s) for s in _split(memory_steps)], device=device)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A completed run folder: SUITE/runs/<method>__<reward>__seed<s>."),
           out: Path = typer.Option(..., help="New folder for the LoRA (must not exist, or be empty).")) -> None:
    """Write a run's trained LoRA in the diffusers format (pytorch_lora_weights.safetensors) that
    `pipe.load_lora_weights(OUT, weight_name=...)` loads: LatentConsistencyModelPipeline for lcm-dreamshaper-v7,
    StableDiffusionPipeline with LCM-LoRA fused for lcm-lora-sd15 (OUT/USAGE.md has the code)."""
    from bench.trained import export as export_lora

    files = export_lora(run_dir, out)
    print(f"wrote {', '.join(str(f) for f in files)}; load with pipe.load_lora_weights(\"{out}\", "
          f"weight_name=\"{files[0].name}\") (the code for this model: {out / 'USAGE.md'})")


@app.command()
def sample(run_dir: Path = typer.Argument(..., help="A completed run folder: SUITE/runs/<method>__<reward>__seed<s>."),
           prompt: list[str] = typer.Option(..., help="A prompt (repeatable)."),
           n: int = typer.Option(8, help="Images per prompt."),
           out: Path = typer.Option(..., help="New folder (absent or empty) for the PNG images, grid.png and "
                                              "samples.json."),
           seed: int = typer.Option(0, help="Seed of the sampling noise (the same seed gives the same images)."),
           device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto.")) -> None:
    """Draw images for your own prompts from a run's trained model (any model, testbed and tiny included), with
    the sampler settings it was trained with."""
    from bench.trained import sample as sample_images

    files = sample_images(run_dir, list(prompt), n, out, seed=seed, device=device)
    print(f"wrote {len(files) - 2} images and {out / 'grid.png'}")


@app.command()
def fetch(names: list[str] = typer.Argument(..., help="Models and rewards whose weights to download, and prompt "
                                                       "sets (e.g. lcm-dreamshaper-v7 pickscore hpsv2 inception "
                                                       "drawbench).")) -> None:
    """Download weights and prompt sets into the Hugging Face cache: the only command that uses the network."""
    from bench.errors import unknown_name
    from bench.hub import MODEL_FETCH
    from bench.hub import fetch as fetch_repo
    from bench.prompts_hub import HUB_PROMPT_SETS, fetch_prompt_set
    from rewards.weights import FETCH, URL_FETCH
    from rewards.weights import fetch as fetch_reward

    known = list(dict.fromkeys([*MODEL_FETCH, *FETCH, *URL_FETCH, *HUB_PROMPT_SETS]))  # aesthetic: hub + URL
    for name in names:
        if name not in known:
            raise unknown_name("fetchable name", name, known)
    os.environ.pop("HF_HUB_OFFLINE", None)
    for name in names:
        paths = [fetch_repo(repo, patterns) for repo, patterns in MODEL_FETCH[name]] if name in MODEL_FETCH \
            else fetch_prompt_set(name) if name in HUB_PROMPT_SETS else fetch_reward([name])
        print(f"{name}: " + ", ".join(str(p) for p in paths))


@app.command("serve-reward")
def serve_reward(name: str = typer.Argument(..., help="A registered reward (`bench ls`), e.g. aesthetic."),
                 port: int = typer.Option(8000, help="TCP port."),
                 host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes it to the network)."),
                 device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
                 max_batch: int = typer.Option(256, help="Most images one request may hold.")) -> None:
    """Serve a reward over HTTP for `--rewards http://HOST:PORT/NAME` (protocol: docs/reward-server.md)."""
    from bench.reward_server import serve

    serve(name, host, port, device, max_batch)


@app.command("human-eval")
def human_eval(suite_dir: Path = typer.Argument(..., help="A folder written by `bench run`."),
               port: int = typer.Option(8765, help="TCP port of the rating page."),
               host: str = typer.Option("127.0.0.1", help="Interface to bind; another than loopback needs --token."),
               token: Optional[str] = typer.Option(None, help="Access token raters must give (?token=... in the "
                                                              "page's address)."),
               simulate: int = typer.Option(0, help="Cast this many simulated votes (the model's gold metric plus "
                                                    "noise) through the HTTP API instead of serving."),
               noise: float = typer.Option(0.0, help="σ of the simulated rater's noise on each gold difference."),
               images_per_prompt: int = typer.Option(2, help="Images per test prompt and method (same noise)."),
               device: str = typer.Option("auto", help="Device that draws the images: cpu, cuda, or auto.")) -> None:
    """Blinded pairwise rating of a suite's final models in a local web page; votes in SUITE/human_eval/ and
    `bench report` (docs/human-eval.md)."""
    from bench.human_eval.command import human_eval as run_human_eval
    from bench.human_eval.draw import DrawConfig

    run_human_eval(suite_dir, host, port, token, simulate, noise,
                   DrawConfig(samples_per_prompt=images_per_prompt, device=device))


testbed_app = typer.Typer(help="The built-in offline testbed (coloured digits).", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("build")
def testbed_build(out: Path = typer.Option(None, help="Weights folder (default: the package's shipped weights)."),
                  seed: int = typer.Option(0, help="Seed of every training stage."),
                  quick: bool = typer.Option(False, help="Tiny versions of every stage (checks the pipeline)."),
                  threads: int = typer.Option(2, min=1, help="Torch threads (1 if the cores are shared)."),
                  reuse_teacher: bool = typer.Option(False, help="Keep the folder's diffusion teacher; rebuild the rest "
                                                                 "(skips the 22-minute pre-training).")) -> None:
    """Rebuild every testbed weight from scratch (generator, distillation, classifier, proxy, FID features)."""
    from bench.testbed.build import main as build_main

    build_main([*(["--out", str(out)] if out else []), "--seed", str(seed), "--threads", str(threads),
                *(["--quick"] if quick else []), *(["--reuse-teacher"] if reuse_teacher else [])])


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only `bench fetch` may touch the network
    try:
        app()
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: completed runs are kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
