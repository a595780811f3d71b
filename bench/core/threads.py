"""CPU threads that fit the machine: torch's intra-op threads set from the cores this process may really use.

torch defaults to one thread per core it sees, whatever else runs: two runs sharing two cores then run four
compute threads that wait on each other, and a run slows down many times over instead of to half speed. The
cores a process may use are the fewest of: its CPU affinity (`taskset`, a SLURM or container cpuset), its cgroup
CPU quota (a container's `--cpus`), an explicit request (`--threads`, `--cpus-per-run` of the Ray executor) and
`OMP_NUM_THREADS` when set. Inter-op threads (torch's pool for independent ops, unused by this code's models) are
kept to one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from bench.core.errors import BenchError


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup CPU quota in cores (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), None if
    unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """Cores this process may run on: its affinity, capped by the cgroup quota (rounded down, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    return max(1, min(cores, math.floor(quota) if quota else cores))


def choose_threads(requested: int | None = None) -> int:
    """Intra-op threads: `requested` (an explicit option), else OMP_NUM_THREADS, else usable_cpus(); never more
    than the usable cores."""
    if requested is not None and requested < 1:
        raise BenchError(f"--threads must be >= 1, got {requested}")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    from_env = int(env) if env.isdigit() and int(env) > 0 else None
    # `accelerate launch` / torchrun start LOCAL_WORLD_SIZE processes on this machine: they share its cores
    share = max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    return min(requested or from_env or share, usable_cpus())


def configure(requested: int | None = None) -> int:
    """Set torch's intra-op threads (choose_threads) and one inter-op thread; returns the intra-op count."""
    n = choose_threads(requested)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # settable once, before any inter-op work: already set in this process
        pass
    return n
