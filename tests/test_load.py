"""Load: a long suite on `tiny` keeps its memory flat, and `bench report` of it renders in seconds (issue 12).

The suite runs in a fresh process (this file run as a script) so that what is measured is the suite alone, not
pytest: it writes the manifest, then calls the runner's own per-run entry point (`run_spec`, what `bench run`
calls for each run) for every run, and prints one JSON line per run with the process's current resident set
(psutil) and its high-water mark (getrusage's ru_maxrss). Nothing is collected or freed by hand between runs, so a
run that leaves anything behind (a model, an optimizer, cached embeddings, tracker or hook state) shows up.

Full version, 50 runs: 5-6 minutes here on one (shared) core; its figures are in the closing note of issue 12:

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow tests/test_load.py -s

The short version (6 runs) runs in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Every method class of the registry (ROCM with two divergences, the truncated, policy-gradient and preference
# families), so that each one's per-run state is built and dropped many times.
ALL_METHODS = ["rocm-kl", "rocm-js", "draft-k", "alignprop", "refl", "ddpo", "grpo", "dpok", "rebel", "d3po"]
SETS = ["eval.points=3", "eval.min_images=8", "eval.max_prompts=2"]
BUDGET = "900nfe"  # 1-4 outer steps of every method in the 50-run suite (DDPO: 416 NFE a step, D3PO: 512)
WARM = 5  # runs after which the process is warm: every method class imported, allocator pools grown
# A leaked tiny policy (0.8 M parameters, with its Adam moments, LoRA and reference) is over 10 MiB; its sampler
# graph more. 64 MiB over 45 runs is then far below one leaked model per run, and above the few MiB that glibc's
# heap fragmentation and Python's caches (interned strings, compiled regexes, typing caches) legitimately add.
MAX_GROWTH_MIB = 64.0
MAX_REPORT_S = 30.0  # a 50-run report: table, every plot and grid; it took ~6 s here (imports included)


def run_load(out: Path, methods: list[str], seeds: list[int], budget: str) -> list[dict]:
    """Run the suite in a fresh process; its per-run memory records, in run order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, str(out), ",".join(methods), ",".join(map(str, seeds)), budget],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1], timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def time_report(suite: Path, out: Path) -> float:
    """Wall seconds of `bench report SUITE` in a fresh process (imports included, as a user waits for it)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", "report", str(suite), "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=600)
    secs = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return secs


def check_load(tmp_path: Path, methods: list[str], seeds: list[int], budget: str, warm: int) -> dict:
    suite = tmp_path / "suite"
    t0 = time.perf_counter()
    rows = run_load(suite, methods, seeds, budget)
    wall = time.perf_counter() - t0
    n = len(methods) * len(seeds)
    assert [r["run"] for r in rows] == list(range(1, n + 1))
    assert len(list((suite / "runs").glob("*/summary.json"))) == n
    rss, peak = rows[warm - 1], rows[-1]
    figures = {"runs": n, "suite_s": wall, "rss_mib": (rss["rss_mib"], peak["rss_mib"]),
               "maxrss_mib": (rss["maxrss_mib"], peak["maxrss_mib"])}
    figures["report_s"] = time_report(suite, tmp_path / "report")
    print(f"\nload figures: {json.dumps(figures)}")  # shown with -s; the closing note quotes them
    assert (tmp_path / "report" / "table.md").read_text().count("\n| ") >= len(methods)
    assert peak["rss_mib"] - rss["rss_mib"] <= MAX_GROWTH_MIB, figures
    assert peak["maxrss_mib"] - rss["maxrss_mib"] <= MAX_GROWTH_MIB, figures
    assert figures["report_s"] <= MAX_REPORT_S, figures
    return figures


def test_a_short_suite_keeps_its_memory_and_reports(tmp_path):
    """6 runs (3 methods x 2 seeds, one or two steps each): the same harness and bounds, from run 2 on."""
    check_load(tmp_path, ["rocm-kl", "ddpo", "d3po"], [0, 1], "520nfe", warm=2)


@pytest.mark.slow
def test_a_50_run_suite_keeps_its_memory_flat_and_reports_in_seconds(tmp_path):
    """50 runs (10 methods x 5 seeds): RSS and its high-water mark grow by at most MAX_GROWTH_MIB from run 5 to
    run 50, and `bench report` of the folder takes at most MAX_REPORT_S. Command: see the module docstring."""
    check_load(tmp_path, ALL_METHODS, [0, 1, 2, 3, 4], BUDGET, warm=WARM)


def main(out: str, methods: str, seeds: str, budget: str) -> None:
    """The suite process: one JSON line per finished run with its memory."""
    import resource

    import psutil

    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, apply_sets, validate
    from bench.run.runner import run_spec, suite_specs, write_manifest

    suite = SuiteConfig(methods=methods.split(","), rewards=["brightness"], seeds=[int(s) for s in seeds.split(",")],
                        budget=Budget.parse(budget), model=ModelConfig(name="tiny"))
    apply_sets(suite, SETS)
    validate(suite)
    write_manifest(suite, Path(out), ["tests/test_load.py", out, methods, seeds, budget])
    proc = psutil.Process()
    for i, spec in enumerate(suite_specs(suite), 1):
        t0 = time.perf_counter()
        run_spec(suite, Path(out), *spec)
        print(json.dumps({"run": i, "id": "__".join(map(str, spec)), "seconds": time.perf_counter() - t0,
                          "rss_mib": proc.memory_info().rss / 2**20,  # now
                          "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),  # KiB on Linux
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
