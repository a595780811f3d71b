"""The other commands: `bench ls`, `bench perf`, `bench fetch` (the only network access), `bench serve-reward`,
`bench human-eval` and `bench testbed build`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from bench.cli.common import THREADS, app, set_threads, split_list
from bench.core.errors import BenchError


@app.command("ls")
def ls() -> None:
    """List methods, rewards, metrics, models and divergences (installed plugins too), one line each."""
    from bench.registry.catalog import METHODS, MODELS, REWARDS, SET_METRICS
    from bench.registry.lookup import describe
    from bench.registry.plugins import load_entry_points

    load_entry_points()
    print("methods:")
    for name, (target, overrides) in METHODS.items():
        extra = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"  {name:<22} {describe(target, 'method')}" + (f" [{extra}]" if extra else ""))
    section("rewards (also metrics):", REWARDS, lambda t: describe(t, "reward"))
    section("set metrics (evaluation only):", SET_METRICS, lambda t: describe(t, "metric"))
    print(f"  {'kl-to-base':<22} KL of the policy's trajectory distribution from the base model (always computed)")
    section("models:", MODELS, lambda t: describe(t, "model"))
    from bench.core.divergences import DIVERGENCES

    section("divergences (ROCM):", DIVERGENCES, lambda fn: (fn.__doc__ or "").strip().splitlines()[0])


def section(title: str, registry: dict, line) -> None:
    """`title`, then one line per registered name: the name and `line(entry)`."""
    print(title)
    for name, entry in registry.items():
        print(f"  {name:<22} {line(entry)}")


@app.command()
def perf(
    model: str = typer.Option("tiny", help="Model to time (tiny-vae is TRL's benchmark configuration)."),
    methods: str = typer.Option("rocm-kl,ddpo,d3po", help="Methods to time."),
    repeats: int = typer.Option(5, help="Timed steps per method, after one warm-up step."),
    set_: list[str] = typer.Option([], "--set", help="Config overrides, as for `bench run`."),
    out: Path = typer.Option(Path("results/perf.json"), help="JSON output."),
    memory_steps: str = typer.Option("1,2,4,8", help="Sampling steps for ROCM's peak-memory sweep ('' to skip)."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    threads: Optional[int] = THREADS,
    reward: str = typer.Option("brightness", help="Training reward of every timed step (a real-size one with random "
                                                  "weights, e.g. pickscore-random, charges its forward and backward)."),
) -> None:
    """Time each method's training step against the bare model compute it contains (and the model FLOP
    utilisation both reach); peak memory of a step. The JSON is rewritten as each result comes in."""
    from bench.perf.command import run_perf

    set_threads(threads)
    try:
        steps = [int(s) for s in split_list(memory_steps)]
    except ValueError:
        raise BenchError(f"bad --memory-steps '{memory_steps}': expected comma-separated integers, e.g. 1,2,4,8") \
            from None
    run_perf(model=model, methods=split_list(methods), repeats=repeats, sets=set_, out=out, memory_steps=steps,
             device=device, reward=reward)


@app.command("gpu-check")
def gpu_check(
    out: Path = typer.Option(Path("results/gpu-check"), help="Folder for gpu_check.json, gpu_check.md, perf.json "
                                                             "and the time-budget suite."),
    device: str = typer.Option("cuda", help="cuda, cuda:N (or cpu, at a small --set model.resolution, to try it)."),
    model: str = typer.Option("sd15-lcm-random", help="Model (real size, random weights: nothing is downloaded)."),
    reward: str = typer.Option("brightness", help="Training reward; a real-size random one (`bench ls`) makes the "
                                                  "reward's cost visible."),
    methods: str = typer.Option("", help="Methods to time (default: every registered one)."),
    set_: list[str] = typer.Option(["model.dtype=bfloat16"], "--set", help="Config overrides, as for `bench run`."),
    minutes: float = typer.Option(8.0, help="Time for all stages together; a stage past its share stops early."),
    repeats: int = typer.Option(2, help="Interleaved step / bare pairs per method."),
    budget: str = typer.Option("20s", help="Time budget of each run of the 2-method suite."),
) -> None:
    """The GPU tier in one command: every method timed at real size (step vs bare compute, MFU, peak memory),
    ROCM's memory over 1/2/4/8 steps, and a 2-method time-budget suite end to end; one JSON and one table."""
    from bench.perf.gpu_check import gpu_check as run_check

    if minutes <= 0:
        raise BenchError(f"--minutes must be > 0, got {minutes}")
    run_check(out, device=device, model=model, reward=reward, methods=split_list(methods) or None, sets=list(set_),
              minutes=minutes, repeats=repeats, suite_budget=budget)


@app.command()
def fetch(names: list[str] = typer.Argument(..., help="Models and rewards whose weights to download, and prompt "
                                                       "sets (e.g. lcm-dreamshaper-v7 pickscore hpsv2 inception "
                                                       "drawbench).")) -> None:
    """Download weights and prompt sets into the Hugging Face cache: the only command that uses the network."""
    from bench.core.errors import unknown_name
    from bench.core.hub_cache import fetch as fetch_repo
    from bench.models.hub import MODEL_FETCH
    from bench.prompts.hub import HUB_PROMPT_SETS, fetch_prompt_set
    from bench.registry.lookup import reward_weights

    weights = reward_weights()  # rewards/weights.py, through the registry
    known = list(dict.fromkeys([*MODEL_FETCH, *weights.FETCH, *weights.URL_FETCH, *HUB_PROMPT_SETS]))  # aesthetic: hub + URL
    for name in names:
        if name not in known:
            raise unknown_name("fetchable name", name, known)
    os.environ.pop("HF_HUB_OFFLINE", None)
    for name in names:
        paths = [fetch_repo(repo, patterns) for repo, patterns in MODEL_FETCH[name]] if name in MODEL_FETCH \
            else fetch_prompt_set(name) if name in HUB_PROMPT_SETS else weights.fetch([name])
        print(f"{name}: " + ", ".join(str(p) for p in paths))


@app.command("serve-reward")
def serve_reward(name: str = typer.Argument(..., help="A registered reward (`bench ls`), e.g. aesthetic."),
                 port: int = typer.Option(8000, help="TCP port."),
                 host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes it to the network)."),
                 device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
                 max_batch: int = typer.Option(256, help="Most images one request may hold.")) -> None:
    """Serve a reward over HTTP for `--rewards http://HOST:PORT/NAME` (protocol: docs/reward-server.md)."""
    from bench.serve.server import serve

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
def testbed_build(out: Path = typer.Option(Path("testbed-weights"), help="Folder for the rebuilt weights (a new one "
                                           "in the working directory by default; never the shipped weights "
                                           "unless --replace-shipped)."),
                  seed: int = typer.Option(0, help="Seed of every training stage."),
                  quick: bool = typer.Option(False, help="Tiny versions of every stage (checks the pipeline)."),
                  threads: int = typer.Option(2, min=1, help="Torch threads (1 if the cores are shared)."),
                  reuse_teacher: bool = typer.Option(False, help="Keep the folder's diffusion teacher; rebuild the rest "
                                                                 "(skips the 22-minute pre-training)."),
                  replace_shipped: bool = typer.Option(False, "--replace-shipped", help="Allow --out to be the "
                                                       "package's shipped weights, which every published number "
                                                       "was made with."),
                  only: str = typer.Option("", help="Comma-separated stages to run alone (evaluators, pretrain, "
                                                    "distill, quality, proxy, proxy-b), reading the weights they "
                                                    "need from --out, e.g. a copy of the shipped folder.")) -> None:
    """Rebuild every testbed weight from scratch (generator, distillation, classifier, both proxies, FID features)
    into --out; compare with the shipped ones by their sha256 (bench/testbed/weights/metrics.json)."""
    from bench.testbed.build import main as build_main

    build_main(["--out", str(out), "--seed", str(seed), "--threads", str(threads), *(["--quick"] if quick else []),
                *(["--reuse-teacher"] if reuse_teacher else []), *(["--replace-shipped"] if replace_shipped else []),
                *(["--only", only] if only else [])])
