"""What every command shares: the typer app, the defaults of `bench run`, list and seed parsing, and the executor
options of `bench run` and `bench sweep` (bench/run/executors.py, docs/executors.md).

Mistakes a user can fix (unknown names, bad budgets, missing weights, corrupt files, NaN losses) print one line,
`error: ...`, and exit with code 2 — never a traceback (main.py). Heavy imports happen inside the commands so
that `bench ls` and `bench report` start fast (the report never imports torch).
"""

from __future__ import annotations

import typer

from bench.core.errors import BenchError

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


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_list(text)]
    except ValueError:
        raise BenchError(f"bad --seeds '{text}': expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"bad --seeds '{text}': repeated seed")
    return seeds


# Executor options, shared by `bench run` and `bench sweep` (bench/run/executors.py, docs/executors.md). None: not
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


def executor_config(kind: str, cpus_per_run, gpus_per_run, ray_address, ray_workers, **slurm):
    """The executor options as a checked bench.run.executors.ExecutorConfig."""
    from bench.run.executors import ExecutorConfig, check

    cfg = ExecutorConfig(kind=kind.strip(), cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                         ray_address=ray_address, ray_workers=ray_workers, **slurm)
    check(cfg)
    return cfg


THREADS = typer.Option(None, "--threads", help="CPU threads of torch in this process (default: the cores it may "
                       "use — affinity, cgroup quota, OMP_NUM_THREADS — shared among data-parallel processes).")


def set_threads(threads: int | None) -> int:
    """torch's CPU threads for this command (bench/core/threads.py)."""
    from bench.core.threads import configure

    return configure(threads)
