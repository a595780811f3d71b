"""bench/core/threads.py: the cores a process may use (affinity, cgroup quota v1 and v2), and the intra-op threads
chosen from them, an explicit request, OMP_NUM_THREADS and the processes of `accelerate launch` sharing a machine."""

from __future__ import annotations

import pytest

from bench.core import threads
from bench.core.errors import BenchError


def test_cgroup_quota_v2_v1_and_unlimited(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpus(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")  # v1's "unlimited"
    assert threads.cgroup_cpus(v1) is None
    assert threads.cgroup_cpus(tmp_path / "missing") is None


def test_usable_cpus_is_the_fewest_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2.5)
    assert threads.usable_cpus() == 2  # a quota of 2.5 cores keeps 2 busy threads, never 3
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 0.5)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.usable_cpus() == 4


def test_choose_threads(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.choose_threads() == 8
    assert threads.choose_threads(3) == 3 and threads.choose_threads(64) == 8  # never more than the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads() == 2 and threads.choose_threads(5) == 5  # the option wins over the variable
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # accelerate launch: 4 processes share the 8 cores
    assert threads.choose_threads() == 2
    with pytest.raises(BenchError, match="--threads must be >= 1"):
        threads.choose_threads(0)
