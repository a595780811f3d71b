"""`bench gpu-check`: the GPU tier in one command, from nothing but the checkout (and the pinned wheels): every
method timed at real size against a real-size reward, ROCM's peak memory over 1/2/4/8 sampling steps, and a
2-method time-budget suite run end to end with its evaluation — written to OUT/gpu_check.json and OUT/gpu_check.md
as each stage finishes, so a machine taken away mid-way leaves what was measured.

Stages have their own time limits (`--minutes` in all, shared as STAGE_SHARES): a stage past its limit stops after
the method it is on and records which ones it skipped. On a CPU (`--device cpu`, a small `model.resolution`) the
same script runs end to end in a slow-marked test (tests/test_gpu_check.py), so its logic is checked without a GPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.core.errors import BenchError
from bench.perf.timing import rate_text

STAGE_SHARES = {"timing": 0.55, "suite": 0.35}  # of --minutes; the rest is start-up and the tables
SUITE_METHODS = ("rocm-kl", "ddpo")  # the time-budget suite: one first-order, one policy-gradient method


def gpu_check(out: Path, device: str = "cuda", model: str = "sd15-lcm-random", reward: str = "brightness",
              methods: list[str] | None = None, sets: list[str] = (), minutes: float = 8.0, repeats: int = 2,
              memory_steps: tuple[int, ...] = (1, 2, 4, 8), suite_budget: str = "20s", log=print) -> dict:
    """Run the three stages into `out` (a folder); returns the JSON written."""
    from bench.perf.command import run_perf
    from bench.registry.catalog import METHODS
    from bench.results.io import writable_folder, write_bytes_atomic, write_json_atomic

    out = writable_folder(Path(out))
    methods = list(methods or METHODS)
    t0 = time.perf_counter()
    report: dict = {"device": device, "model": model, "reward": reward, "sets": list(sets), "minutes": minutes,
                    "stages": {}}

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(out / "gpu_check.json", report)
        write_bytes_atomic(out / "gpu_check.md", markdown(report).encode())

    deadline = t0 + 60 * minutes * STAGE_SHARES["timing"]
    try:
        perf = run_perf(model=model, methods=methods, repeats=repeats, sets=list(sets), out=out / "perf.json",
                        memory_steps=list(memory_steps), device=device, reward=reward, deadline=deadline)
        report["stages"]["timing"] = {"status": "complete" if not perf.get("skipped") else "out of time", **perf}
    except BenchError as e:
        report["stages"]["timing"] = {"status": f"failed: {e}"}
    save()
    log(f"timing done in {time.perf_counter() - t0:.0f} s")
    report["stages"]["suite"] = time_budget_suite(out / "suite", device, model, reward, list(sets), suite_budget,
                                                  t0 + 60 * minutes * (STAGE_SHARES["timing"] + STAGE_SHARES["suite"]))
    save()
    log(f"gpu-check finished in {time.perf_counter() - t0:.0f} s: {out / 'gpu_check.md'}")
    return report


def time_budget_suite(folder: Path, device: str, model: str, reward: str, sets: list[str], budget: str,
                      deadline: float) -> dict:
    """SUITE_METHODS under one time budget, with evaluation (a few prompts): each run's budget_used and warm-up."""
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.results.io import read_json
    from bench.run.config import SuiteConfig, apply_sets
    from bench.run.runner import run_suite

    runs = {}
    for method in SUITE_METHODS:
        if time.perf_counter() > deadline:
            runs[method] = {"status": "skipped: out of time"}
            continue
        suite = SuiteConfig(methods=[method], rewards=[reward], seeds=[0], budget=Budget.parse(budget),
                            model=ModelConfig(name=model), device=device)
        apply_sets(suite, [*sets, "eval.points=2", "eval.max_prompts=2", "eval.min_images=0",
                           "eval.samples_per_prompt=2"])
        try:
            (run,) = run_suite(suite, folder, show_progress=False)
        except BenchError as e:
            runs[method] = {"status": f"failed: {e}"}
            continue
        s = read_json(run / "summary.json")
        runs[method] = {"status": "complete", "budget": budget, "budget_used": s["budget_used"],
                        "warmup_seconds": s.get("warmup_seconds", 0.0), "steps": s["steps"],
                        "wall_seconds": s["wall_seconds"]}
    return runs


def markdown(report: dict) -> str:
    """One table: per method its step time, images/s, ratio to bare, MFU, peak memory, and budget_used."""
    timing = report["stages"].get("timing", {})
    suite = report["stages"].get("suite", {})
    rows = timing.get("methods", {})
    lines = [f"# bench gpu-check: {report['model']} on {timing.get('config', {}).get('device_name', report['device'])}",
             "", f"reward {report['reward']}; sets {' '.join(report['sets']) or '(none)'}; "
             f"{report.get('elapsed_s', 0):.0f} s; matmul rate "
             f"{rate_text(timing.get('matmul_flops_per_s', float('nan')))} ({timing.get('matmul_dtype', '?')})",
             "", "| method | step s | images/s | step / bare | MFU | bare MFU | step peak GiB | abs peak GiB | "
             "budget_used |", "|---|---|---|---|---|---|---|---|---|"]
    for name in {**rows, **{m: None for m in suite}}:
        r, s = rows.get(name), suite.get(name, {})
        used = f"{s['budget_used']:.3f}" if "budget_used" in s else s.get("status", "")
        if r is None:
            lines.append(f"| {name} | | | | | | | | {used} |")
            continue
        gib = lambda x: "" if x is None or x != x else f"{x / 1024:.1f}"  # noqa: E731 (NaN: not measured)
        lines.append(f"| {name} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | {r['ratio']:.2f} | {r['mfu']:.1%} | "
                     f"{r['mfu_bare']:.1%} | {gib(r.get('step_peak_mib'))} | {gib(r.get('peak_mib'))} | {used} |")
    for name in timing.get("skipped", []):
        lines.append(f"| {name} | skipped: out of time | | | | | | | |")
    sweep = timing.get("memory_sweep", {})
    if sweep.get("rows"):
        lines += ["", f"{sweep['method']}: step peak memory (GiB) by sampling steps", "",
                  "| steps | checkpointing | no checkpointing |", "|---|---|---|"]
        by = {(r["steps"], r["checkpointing"]): r["step_peak_mib"] for r in sweep["rows"]}
        for n in sorted({r["steps"] for r in sweep["rows"]}):
            lines.append(f"| {n} | {by.get((n, True), float('nan')) / 1024:.2f} | "
                         f"{by.get((n, False), float('nan')) / 1024:.2f} |")
    return "\n".join(lines) + "\n\n```\n" + json.dumps({k: v for k, v in report.items() if k != "stages"}) + "\n```\n"
