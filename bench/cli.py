"""The `bench` command line (typer): ls, run, sweep, report, perf, fetch, testbed.

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
    """List methods, rewards, metrics, models and divergences, one line each."""
    from bench.registry import METHODS, MODELS, REWARDS, SET_METRICS, describe

    print("methods:")
    for name, (target, overrides) in METHODS.items():
        extra = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"  {name:<22} {describe(target)}" + (f" [{extra}]" if extra else ""))
    _section("rewards (also metrics):", REWARDS, describe)
    _section("set metrics (evaluation only):", SET_METRICS, describe)
    print(f"  {'kl-to-base':<22} KL of the policy's trajectory distribution from the base model (always computed)")
    _section("models:", MODELS, describe)
    from methods.divergences import DIVERGENCES

    _section("divergences (ROCM):", DIVERGENCES, lambda fn: (fn.__doc__ or "").strip().splitlines()[0])


def _section(title: str, registry: dict, line) -> None:
    """`title`, then one line per registered name: the name and `line(entry)`."""
    print(title)
    for name, entry in registry.items():
        print(f"  {name:<22} {line(entry)}")


@app.command()
def run(
    methods: Optional[str] = typer.Option(None, help=f"Comma-separated method names (`bench ls`; default "
                                                     f"{DEFAULT_METHODS}, or every method of --from-sweep)."),
    rewards: Optional[str] = typer.Option(None, help="Comma-separated training rewards, one run per reward (default: "
                                                     "the model's own, e.g. testbed-pref on the testbed, pickscore on "
                                                     "real models)."),
    model: Optional[str] = typer.Option(None, help=f"Base model (`bench ls`; default {DEFAULT_MODEL})."),
    seeds: str = typer.Option("0", help="Comma-separated seeds; one run per seed."),
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
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train every method x reward x seed under the same budget, evaluating as it goes."""
    argv = ["bench", *sys.argv[1:]]
    if from_sweep is not None:
        from bench.sweep_results import run_from_sweep

        given = [f"--{name}" for name, value in (("model", model), ("rewards", rewards), ("budget", budget))
                 if value is not None]
        if given:
            raise BenchError(f"{', '.join(given)}: with --from-sweep these come from {from_sweep / 'sweep.json'}")
        dirs = run_from_sweep(from_sweep, _seeds(seeds), out, _split(methods) if methods else None, set_, device,
                              argv, show_progress=progress)
        if os.environ.get("RANK", "0") == "0":
            folders = sorted({str(d.parent.parent) for d in dirs})
            print(f"{len(dirs)} runs in {', '.join(folders)}; next: bench report {folders[0]}")
        return

    from bench.compute import Budget
    from bench.config import SuiteConfig, apply_sets
    from bench.models import ModelConfig
    from bench.runner import run_suite

    from bench.registry import MODEL_DEFAULTS, model_builder

    model = model or DEFAULT_MODEL
    out = out or Path("results/default")
    model_builder(model)  # an unknown model is reported before anything else
    rewards = rewards or MODEL_DEFAULTS.get(model, {}).get("reward", "")
    suite = SuiteConfig(methods=_split(methods or DEFAULT_METHODS), rewards=_split(rewards), seeds=_seeds(seeds),
                        budget=Budget.parse(budget or DEFAULT_BUDGET), model=ModelConfig(name=model), device=device)
    apply_sets(suite, set_)
    dirs = run_suite(suite, out, argv=argv, show_progress=progress)
    if os.environ.get("RANK", "0") == "0":  # one line, from the one process that wrote the results
        print(f"{len(dirs)} runs in {out}; next: bench report {out}")


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
) -> None:
    """Tune every method with the same number of trials on validation prompts and sweep seeds; select by a
    declared rule (selected.json) and report how sensitive each method is to its knobs (sensitivity.md)."""
    from bench.registry import MODEL_DEFAULTS, model_builder
    from bench.sweep import SweepSettings, run_sweep, selection_metric

    model_builder(model)
    reward_list = _split(rewards or MODEL_DEFAULTS.get(model, {}).get("reward", ""))
    if not reward_list:
        raise BenchError("no rewards given: e.g. --rewards brightness (see `bench ls`)")
    settings = SweepSettings(methods=_split(methods), rewards=reward_list, model=model, budget=budget, trials=trials,
                             sampler=sampler, sweep_seeds=_seeds(sweep_seeds),
                             select={r: select or selection_metric(model, r) for r in reward_list},
                             sets=list(set_), device=device)
    table = run_sweep(settings, out, argv=["bench", *sys.argv[1:]], show_progress=progress)
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
def fetch(names: list[str] = typer.Argument(..., help="Models and rewards whose weights to download "
                                                       "(e.g. lcm-dreamshaper-v7 pickscore hpsv2 inception).")) -> None:
    """Download weights into the Hugging Face cache: the only command that uses the network."""
    from bench.errors import unknown_name
    from bench.hub import MODEL_FETCH
    from bench.hub import fetch as fetch_repo
    from rewards.weights import FETCH, URL_FETCH
    from rewards.weights import fetch as fetch_reward

    known = [*MODEL_FETCH, *FETCH, *URL_FETCH]
    for name in names:
        if name not in known:
            raise unknown_name("fetchable name", name, known)
    os.environ.pop("HF_HUB_OFFLINE", None)
    for name in names:
        paths = [fetch_repo(repo, patterns) for repo, patterns in MODEL_FETCH[name]] if name in MODEL_FETCH \
            else fetch_reward([name])
        print(f"{name}: " + ", ".join(str(p) for p in paths))


testbed_app = typer.Typer(help="The built-in offline testbed (coloured digits).", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("build")
def testbed_build(out: Path = typer.Option(None, help="Weights folder (default: the package's shipped weights)."),
                  seed: int = typer.Option(0, help="Seed of every training stage."),
                  quick: bool = typer.Option(False, help="Tiny versions of every stage (checks the pipeline)."),
                  threads: int = typer.Option(2, min=1, help="Torch threads (1 if the cores are shared).")) -> None:
    """Rebuild every testbed weight from scratch (generator, distillation, classifier, proxy, FID features)."""
    from bench.testbed.build import main as build_main

    build_main([*(["--out", str(out)] if out else []), "--seed", str(seed), "--threads", str(threads),
                *(["--quick"] if quick else [])])


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
