"""A suite killed with SIGKILL again and again ends exactly as an uninterrupted one: a 4-run suite on `tiny`
(ROCM-KL, DDPO, D3PO, ReFL: first-order, policy-gradient, pairwise preference, one-step), a count budget and a
checkpoint after every step, is run as a subprocess (`python -m bench run …`) and killed — at random moments,
and deterministically once halfway through writing a checkpoint and once during an evaluation (the test-only
fault hook BENCH_FAULT, bench/run/checkpoint.py) — and rerun with the same command after every kill. At the end
every run's eval.jsonl and train.jsonl values (all but the wall-time `seconds`), adapter and the `bench report`
table equal the uninterrupted suite's; every JSON file parses whole; every row a resume cut from a log is kept
in <log>.after-checkpoint and equals the row recomputed in its place.

The default run kills 3 times (once of each kind; about 2 minutes here, where a start takes 10-15 s). The full
version, 12 kills (2 during a checkpoint write, 2 during an evaluation, 8 at random moments), is slow-marked:

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow tests/test_kill.py -s
"""

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BENCH = [sys.executable, "-m", "bench"]
ARGS = ["run", "--model", "tiny", "--methods", "rocm-kl,ddpo,d3po,refl", "--rewards", "brightness", "--seeds", "0",
        "--no-progress",
        "--set", "eval.points=3", "--set", "eval.max_prompts=2", "--set", "eval.samples_per_prompt=2",
        "--set", "eval.min_images=0", "--set", "eval.metrics=brightness", "--set", "method.batch_size=4",
        "--set", "ddpo.prompts_per_step=2", "--set", "ddpo.samples_per_prompt=2", "--set", "ddpo.train_batch_size=4",
        "--set", "d3po.train_batch_size=2", "--set", "checkpoint.every_steps=1"]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
WALL = ("seconds",)


def rows(path: Path) -> list[dict]:
    """Every line of a log, parsed (a torn or bad line fails the test: no file may be corrupt)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def values(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in WALL}


def report_tables(out: Path) -> tuple[str, list[dict]]:
    """`bench report`'s Markdown and CSV tables (bench.analysis.report.build_report, what it runs), wall time masked."""
    from bench.analysis.report import build_report

    build_report(out)
    md = re.sub(r"\d+(\.\d+)? s\b", "<t> s", (out / "report" / "table.md").read_text())
    table = list(csv.DictReader(io.StringIO((out / "report" / "table.csv").read_text())))
    return md, [{k: v for k, v in r.items() if "seconds" not in k} for r in table]


def kill_suite(out: Path, args: list[str], faults: list[str], random_kills: int, span: tuple[float, float],
               seed: int = 0) -> dict:
    """Run the suite into `out`, killing it once per fault (BENCH_FAULT=<fault>; the faults come first, while
    the suite still has far to go) and up to `random_kills` times after a random delay within `span` seconds of
    a start, rerunning after every kill until it completes. Returns the figures."""
    rng = random.Random(seed)
    plan = [("fault", f) for f in faults] + [("random", None)] * random_kills
    kills, attempts, start = {"fault": 0, "random": 0}, 0, time.time()
    while True:
        kind, fault = plan.pop(0) if plan else ("finish", None)
        env = ENV | ({"BENCH_FAULT": fault} if fault else {})
        proc = subprocess.Popen([*BENCH, *args, "--out", str(out)], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        attempts += 1
        if kind == "random":
            try:
                proc.wait(timeout=rng.uniform(*span))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
        if proc.returncode == -signal.SIGKILL:
            kills[kind] += 1
            continue
        assert proc.returncode == 0, err.decode()[-3000:]
        assert kind != "fault", f"{fault}: the suite ended before the fault point"
        return {"kills": kills, "attempts": attempts, "seconds": round(time.time() - start, 1)}


def check_suite(ref: Path, out: Path) -> dict:
    """Asserts `out` equals the uninterrupted `ref` (module docstring); returns what the resumes cut and kept."""
    names = sorted(p.name for p in (ref / "runs").iterdir())
    assert sorted(p.name for p in (out / "runs").iterdir() if ".interrupted-" not in p.name) == names
    kept = 0
    for name in names:
        a, b = ref / "runs" / name, out / "runs" / name
        for f in ("summary.json", "config.json"):
            json.loads((b / f).read_text())
        assert not (b / "checkpoint.pt").exists() and not list(b.rglob(".*.tmp"))
        for log, key in (("train.jsonl", ("step",)), ("eval.jsonl", ("fraction", "split", "metric"))):
            ra, rb = rows(a / log), rows(b / log)
            assert [values(r) for r in ra] == [values(r) for r in rb], (name, log)
            final = {tuple(r[k] for k in key): values(r) for r in rb}
            side = b / f"{log}.after-checkpoint"
            for line in side.read_text().splitlines() if side.exists() else []:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the torn last line a kill left mid-append
                assert values(row) == final[tuple(row[k] for k in key)], (name, log, row)  # recomputed alike
                kept += 1
        wa, wb = load_file(str(a / "adapter.safetensors")), load_file(str(b / "adapter.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert report_tables(ref) == report_tables(out)
    return {"rows_kept_aside": kept, "moved_aside": len(list((out / "runs").glob("*.interrupted-*")))}


def kill_test(tmp_path: Path, budget: str, faults: list[str], random_kills: int) -> dict:
    args = [*ARGS, "--budget", budget]
    ref = tmp_path / "ref"
    t0 = time.time()
    proc = subprocess.Popen([*BENCH, *args, "--out", str(ref)], env=ENV, stdout=subprocess.DEVNULL)
    while not (ref / "manifest.json").exists() and proc.poll() is None:
        time.sleep(0.05)
    startup = time.time() - t0  # imports and validation, before anything is written
    assert proc.wait(timeout=600) == 0
    uninterrupted = time.time() - t0
    # Random moments from just before the first write to a share of the suite's work small enough that the
    # random kills cannot all come after it has ended.
    span = (0.8 * startup, startup + (uninterrupted - startup) / (random_kills + 2))
    figures = kill_suite(tmp_path / "killed", args, faults, random_kills, span)
    figures |= check_suite(ref, tmp_path / "killed") | {
        "uninterrupted_seconds": round(uninterrupted, 1), "startup_seconds": round(startup, 1),
        "random_kill_span": [round(t, 1) for t in span]}
    print(f"\nkill test: {figures}")
    return figures


def test_killed_suite_ends_identical(tmp_path):
    figures = kill_test(tmp_path, "200nfe", ["checkpoint-write:3", "evaluation:4"], 1)
    assert figures["kills"] == {"fault": 2, "random": 1}


@pytest.mark.slow
def test_killed_suite_ends_identical_after_many_kills(tmp_path):
    faults = ["checkpoint-write:2", "evaluation:2", "checkpoint-write:5", "evaluation:3"]
    figures = kill_test(tmp_path, "3000nfe", faults, 8)
    assert figures["kills"] == {"fault": 4, "random": 8}
