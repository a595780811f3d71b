"""Executors: who runs a suite's runs. `serial` (the default) is bench.run.runner's loop in this process; `ray` hands
each run to a Ray task that requests its CPUs and GPUs, on a local Ray instance or an existing cluster; `slurm`
submits each run as a SLURM job through submitit, requeued on preemption or timeout.

Whatever the executor, one run is bench.run.runner.run_spec (skipped when its summary.json exists, resumed or redone
otherwise), the driver writes the suite's manifest once before any run starts, and one process writes a run's
folder: execute_run (and the serial loop, bench/run/runner.py) holds the run's lock file (SUITE/.locks/<run id>.lock)
for the whole run, so a second `bench run` into the same folder, or a stale job, is refused that run instead of
writing it twice. A failed run is
one line of the final BenchError; the other runs still finish and keep their results. `bench sweep --executor ray`
runs whole studies the same way (bench/sweep/protocol.py run_sweep). The commands are in docs/executors.md.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.core.errors import BenchError, unknown_name

EXECUTORS = ("serial", "ray", "slurm")
RAY_OPTIONS = ("cpus_per_run", "gpus_per_run", "ray_address", "ray_workers")
SLURM_OPTIONS = ("slurm_partition", "slurm_gpus", "slurm_time", "slurm_account", "slurm_cpus")
RAY_CONNECT_TIMEOUT_S = 5.0  # a cluster that does not answer a TCP connect in this time is unreachable
RAY_OBJECT_STORE_BYTES = 256 * 2**20  # a local instance's object store: only configs and paths travel through it
RAY_TASK_RETRIES = 2  # a task whose worker died (OOM-killed, node lost) is retried; run_spec resumes it
SLURM_MAX_TIMEOUTS = 10  # requeues of a job that reached --slurm-time (preemptions are not counted)


@dataclass
class ExecutorConfig:
    """How `bench run` / `bench sweep` hand out their runs. None means "not given": the default applies, and an
    option of another executor than the chosen one is an error (check)."""

    kind: str = "serial"
    """serial, ray or slurm."""
    cpus_per_run: float | None = None
    """Ray: CPU cores each task requests (default 1); also its torch threads, unless OMP_NUM_THREADS is set."""
    gpus_per_run: float | None = None
    """Ray: GPUs each task requests (default 1 where the device is cuda, or auto and the cluster has GPUs; else 0)."""
    ray_address: str | None = None
    """Ray: an existing cluster (`auto`, HOST:PORT or ray://HOST:PORT); default: start a local instance."""
    ray_workers: int | None = None
    """Ray: CPUs of the local instance (default: every CPU of this machine); caps how many runs go at once."""
    slurm_partition: str | None = None
    slurm_gpus: int | None = None
    """SLURM: GPUs per job (default 1, 0 with --device cpu)."""
    slurm_time: int | None = None
    """SLURM: time limit of one job, in minutes (default 240); a run that needs longer is requeued and resumes."""
    slurm_account: str | None = None
    slurm_cpus: int | None = None
    """SLURM: CPUs per job (default 4); also its torch threads, unless OMP_NUM_THREADS is set."""
    slurm_cluster: str = "slurm"
    """submitit's cluster kind: slurm, or local (each job a local process: how the tests run this path)."""


def check(cfg: ExecutorConfig) -> None:
    """Every executor option, before anything is started or written: one-line BenchErrors."""
    if cfg.kind not in EXECUTORS:
        raise unknown_name("executor", cfg.kind, EXECUTORS)
    for kind, names in (("ray", RAY_OPTIONS), ("slurm", SLURM_OPTIONS)):
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(cfg, n) is not None]
        if given and cfg.kind != kind:
            raise BenchError(f"{', '.join(given)}: only with --executor {kind} (got --executor {cfg.kind})")
    for name, low in (("cpus_per_run", 0), ("gpus_per_run", -1), ("ray_workers", 0), ("slurm_gpus", -1),
                      ("slurm_time", 0), ("slurm_cpus", 0)):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value > low):
            bound = "positive" if low == 0 else "zero or more"
            raise BenchError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
    if cfg.kind != "serial" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchError(f"--executor {cfg.kind} hands whole runs out; it does not run under accelerate launch")


def require(module: str) -> Any:
    """Import ray or submitit, or say how to install them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchError(f"--executor needs the '{module}' package: pip install -e '.[cluster]'") from None


def torch_threads(cpus: float) -> int:
    """Torch threads of a run in a task or job: OMP_NUM_THREADS where the driver sets it, else the CPUs it asked
    for (the same count in every run keeps results identical to a serial suite run with that count)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, math.ceil(cpus))


def raise_failures(outcomes: list[tuple[str | None, str | None]], labels: list[str], what: str) -> None:
    """One line for every failed run or study; the others have finished and kept their results."""
    failed = [f"{label}: {err}" for label, (_, err) in zip(labels, outcomes) if err is not None]
    if failed:
        first = " ".join(failed[0].split())
        more = f" (and {len(failed) - 1} more; see the lines above)" if len(failed) > 1 else ""
        raise BenchError(f"{len(failed)} of {len(outcomes)} {what} failed, the others finished: {first}{more}")


def progress_bar(description: str, total: int, show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not show)
    return bar, bar.add_task(description, total=total)


def wait_for(next_done: Callable[[], tuple[int, tuple[str | None, str | None]]], labels: list[str], what: str,
             show: bool) -> list[tuple[str | None, str | None]]:
    """Collect every outcome as `next_done()` yields (index, outcome), with a progress bar and one line each."""
    outcomes: list[Any] = [None] * len(labels)
    bar, task = progress_bar(f"{len(labels)} {what}", len(labels), show)
    t0 = time.perf_counter()
    with bar:
        for _ in labels:
            i, outcome = next_done()
            outcomes[i] = outcome
            state = "done" if outcome[1] is None else f"FAILED: {' '.join(outcome[1].split())}"
            bar.console.print(f"{labels[i]} {state} ({time.perf_counter() - t0:.0f} s)", soft_wrap=True)
            bar.advance(task)
    return outcomes


# ---- Ray ----------------------------------------------------------------------------------------------------------
def ray_reachable(address: str) -> None:
    """A HOST:PORT address must answer a TCP connect (ray.init would wait for minutes on a dead one)."""
    import socket

    if address == "auto":
        return  # ray.init finds a cluster of this machine at once, or fails at once
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"bad --ray-address '{address}': expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise BenchError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); is it running "
                         f"(`ray start --head`)?") from None


@contextmanager
def ray_session(cfg: ExecutorConfig) -> Iterator[Any]:
    """Ray connected: to cfg.ray_address, or to a local instance started here with `ray_workers` CPUs (shut down
    at the end). A Ray this process had already started is used as it is."""
    import logging

    ray = require("ray")
    if ray.is_initialized():
        yield ray
        return
    if cfg.ray_address is not None:
        ray_reachable(cfg.ray_address)
        kwargs: dict = {"address": cfg.ray_address}
    else:
        kwargs = {"address": "local", "num_cpus": cfg.ray_workers or os.cpu_count(), "include_dashboard": False,
                  "object_store_memory": RAY_OBJECT_STORE_BYTES}
    try:
        ray.init(logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BenchError(f"Ray did not start ({' '.join(str(e).split())})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_threads(cfg: ExecutorConfig) -> int:
    return torch_threads(cfg.cpus_per_run or 1)


def run_on_ray(fn: Callable, calls: list[tuple], labels: list[str], cfg: ExecutorConfig, device: str, show: bool,
               what: str = "runs", before: Callable[[], None] = lambda: None) -> list:
    """`fn(*args)` for every `args` of `calls`, each a Ray task with a run's resources, `before()` called once the
    cluster is reached and the resources checked; the outcomes (fn returns (result, error)) in the calls' order."""
    with ray_session(cfg) as ray:
        task = ray_task(ray, fn, cfg, gpus_per_run(ray, cfg, device), ray_threads(cfg))
        before()
        return wait_ray(ray, [task.remote(*args) for args in calls], labels, show, what)


def gpus_per_run(ray, cfg: ExecutorConfig, device: str) -> float:
    """--gpus-per-run, or 1 where the runs go to cuda (auto: where the cluster has GPUs), else 0; refused when
    no node of the cluster has that many (the tasks would wait forever)."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    need = cfg.gpus_per_run if cfg.gpus_per_run is not None else \
        1.0 if device.startswith("cuda") or (device == "auto" and gpus > 0) else 0.0
    cpus = float(ray.cluster_resources().get("CPU", 0))
    for name, want, have in (("gpus", need, gpus), ("cpus", cfg.cpus_per_run or 1, cpus)):
        if want > have:
            raise BenchError(f"--{name}-per-run {want:g}, but the Ray cluster has {have:g} {name.upper()}s in all")
    return need


def ray_task(ray, fn: Callable, cfg: ExecutorConfig, gpus: float, threads: int):
    """`fn` as a Ray remote function with a run's resources; OMP_NUM_THREADS is set before torch loads. A task
    holding GPUs gets a worker process of its own (max_calls=1), so that the CUDA memory its models kept cached
    goes with it; CPU workers are reused (each run builds its models afresh and frees them)."""
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    remote = ray.remote(max_calls=1)(fn) if gpus > 0 else ray.remote(fn)
    return remote.options(num_cpus=cfg.cpus_per_run or 1, num_gpus=gpus, max_retries=RAY_TASK_RETRIES,
                          runtime_env={"env_vars": env})


def wait_ray(ray, refs: list, labels: list[str], show: bool, what: str = "runs") -> list:
    """Outcomes of Ray tasks in submission order, shown as each finishes; a task that died is its error line."""
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)

    def next_done():
        (ref,), _ = ray.wait(pending, num_returns=1)
        pending.remove(ref)
        try:
            return index[ref], ray.get(ref)
        except Exception as e:  # the worker died after its retries, or the task was cancelled
            lines = [line for line in str(e).splitlines() if line.strip()]
            return index[ref], (None, f"{type(e).__name__}: {lines[0] if lines else 'no message'}")

    return wait_for(next_done, labels, what, show)


# ---- SLURM --------------------------------------------------------------------------------------------------------
def slurm_executor(cfg: ExecutorConfig, folder: Path, device: str):
    """submitit's AutoExecutor for cfg.slurm_cluster (slurm, or local for the tests), logs in `folder`."""
    submitit = require("submitit")
    if cfg.slurm_cluster == "slurm" and not any((Path(p) / "sbatch").exists()
                                                for p in os.environ.get("PATH", "").split(os.pathsep)):
        raise BenchError("--executor slurm: no sbatch on this machine's PATH; run it on a SLURM login node")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cfg.slurm_cluster,
                                     **{f"{cfg.slurm_cluster}_max_num_timeout": SLURM_MAX_TIMEOUTS})
    gpus = cfg.slurm_gpus if cfg.slurm_gpus is not None else (0 if device == "cpu" else 1)
    params: dict = {"name": "bench-run", "timeout_min": cfg.slurm_time or 240, "cpus_per_task": cfg.slurm_cpus or 4,
                    "nodes": 1, "tasks_per_node": 1}
    if gpus:  # submitit's local executor would hand out GPUs this machine may not have
        params["gpus_per_node"] = gpus
    if cfg.slurm_cluster == "slurm":
        params |= {k: v for k, v in (("slurm_partition", cfg.slurm_partition),
                                     ("slurm_account", cfg.slurm_account)) if v is not None}
    executor.update_parameters(**params)
    return executor


def wait_slurm(jobs: list, labels: list[str], show: bool) -> list:
    """Outcomes of submitit jobs in submission order, shown as each finishes; a job that failed (killed, out of
    requeues, crashed outside the run) is its error line, its log in SUITE/slurm/."""
    submitit = require("submitit")
    index = {id(job): i for i, job in enumerate(jobs)}
    finished = submitit.helpers.as_completed(jobs, poll_frequency=2)

    def next_done():
        job = next(finished)
        try:
            return index[id(job)], job.result()
        except Exception as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            return index[id(job)], (None, f"job {job.job_id}: {lines[-1] if lines else type(e).__name__} "
                                          f"(log: {job.paths.stderr})")

    return wait_for(next_done, labels, "jobs", show)

