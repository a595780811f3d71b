"""Launching a suite: serially in this process (bench/run/runner.py), or each run as a Ray task or a SLURM job
through the executors (bench/run/executors.py). Whatever the executor, one run is runner.run_spec, the
manifest is written once before any run starts, and one process writes a run's folder (its lock).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.results import io as results
from bench.results.locks import run_lock
from bench.run.config import SuiteConfig, validate
from bench.run.executors import (
    ExecutorConfig,
    check,
    raise_failures,
    ray_threads,
    run_on_ray,
    slurm_executor,
    torch_threads,
    wait_slurm,
)
from bench.run.runner import run_spec, run_suite, suite_specs, write_manifest

try:  # the `cluster` extra; without it --executor slurm says how to install it (require())
    from submitit.helpers import Checkpointable
except ImportError:
    Checkpointable = object


def launch(suite: SuiteConfig, out: Path, argv: list[str] | None = None, show_progress: bool = True,
           log_with: tuple[str, ...] = (), executor: ExecutorConfig | None = None) -> list[Path]:
    """Every missing run of the suite into `out`, by `executor` (None or serial: bench/run/runner.py's loop in this
    process); returns the run folders."""
    if executor is None or executor.kind == "serial":
        return run_suite(suite, out, argv, show_progress, log_with)
    check(executor)
    validate(suite)
    results.writable_folder(Path(out), create=False)  # the executor's own checks may still refuse
    return run_parallel(suite, Path(out), argv or sys.argv, executor, show_progress, log_with)


def execute_run(suite, out: Path, spec: tuple[str, str, int], log_with: tuple[str, ...], threads: int | None,
                log_dir: Path | None = None) -> tuple[str | None, str | None]:
    """One run in a task or job: its torch threads, its lock, run_spec. Returns (run folder, None), or (None, a
    one-line error) so that the driver reports it without a worker's traceback (written to log_dir instead)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_id = results.run_id(*spec)
    try:
        with run_lock(out, run_id):
            return str(run_spec(suite, out, *spec, log_with=log_with)), None
    except BenchError as e:
        return None, str(e)
    except Exception as e:  # a bug or a crash of a library: the traceback is kept, the driver gets one line
        where = ""
        if log_dir is not None:
            results.write_bytes_atomic(log_dir / f"{run_id}.traceback.txt", traceback.format_exc().encode())
            where = f" (traceback in {log_dir / f'{run_id}.traceback.txt'})"
        return None, f"{type(e).__name__}: {e}{where}"


class SlurmRun(Checkpointable):
    """A SLURM job running one run. On preemption or timeout submitit calls checkpoint(), which resubmits this
    same job; the requeued job calls run_spec again, which resumes from the run's last mid-run checkpoint
    (run_dir/checkpoint.pt), or skips the run if it had finished."""

    def __init__(self, suite, out: Path, spec: tuple[str, str, int], log_with: tuple[str, ...], threads: int):
        self.suite, self.out, self.spec, self.log_with, self.threads = suite, out, spec, log_with, threads

    def __call__(self) -> tuple[str | None, str | None]:
        return execute_run(self.suite, self.out, self.spec, self.log_with, self.threads, self.out / "slurm")

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)  # the run's own checkpoint is its state: nothing to add


# ---- the drivers ------------------------------------------------------------------------------------------------
def run_parallel(suite, out: Path, argv: list[str], cfg: ExecutorConfig, show_progress: bool = True,
                 log_with: tuple[str, ...] = ()) -> list[Path]:
    """Every run of a validated suite through Ray or SLURM: the backend is reached first, then the manifest is
    written once, then the runs go out and are waited for."""
    check(cfg)
    specs = suite_specs(suite)
    labels = [results.run_id(*spec) for spec in specs]
    if cfg.kind == "ray":
        calls = [(suite, out, spec, log_with, ray_threads(cfg), out / "ray") for spec in specs]
        outcomes = run_on_ray(execute_run, calls, labels, cfg, suite.device, show_progress,
                              before=lambda: write_manifest(suite, out, argv))
    else:
        executor = slurm_executor(cfg, out / "slurm", suite.device)
        write_manifest(suite, out, argv)
        threads = torch_threads(cfg.slurm_cpus or 4)
        with executor.batch():  # one job array
            jobs = [executor.submit(SlurmRun(suite, out, spec, log_with, threads)) for spec in specs]
        outcomes = wait_slurm(jobs, labels, show_progress)
    raise_failures(outcomes, labels, "runs")
    return [Path(path) for path, _ in outcomes]
