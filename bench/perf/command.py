"""`bench perf`: every method's step time against its bare compute (timing.py), its model FLOP utilisation, and
peak memory (memory.py), one table and one JSON file.

The model and the reward are built once and shared by every method (bench/perf/setup.py). The JSON is rewritten
after each method and each memory measurement, with `"complete": false` until the end, so a run stopped at a time
limit keeps what it measured. MFU = the meter's counted training FLOPs of one step / its time / the device's
measured matmul rate (`matmul_flops_per_s`: a large bfloat16 matmul on a GPU, float32 on a CPU), for the step and
for the bare compute (the same FLOPs over the bare time): how far the step is from the card's speed, and how much of
that is the model calls themselves.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.perf.setup import build_shared, make_suite
from bench.perf.timing import BARE, matmul_rate, rate_text, ratio, time_method
from bench.registry.catalog import METHODS
from bench.run.config import family, method_config, to_dict

MEMORY_TARGET = 1.25  # ROCM with checkpointing: step peak at 8 sampling steps / at 1


def run_perf(model: str, methods: list[str], repeats: int, sets: list[str], out: Path, memory_steps: list[int],
             device: str = "auto", reward: str | None = None, deadline: float | None = None) -> dict:
    """Time, replay and measure every method; print the tables; write JSON to `out` as it goes. Returns it.
    `deadline` (a time.perf_counter() value): methods not started by then are skipped (listed under "skipped"),
    and so is the memory measurement."""
    import diffusers
    import peft
    from rich.console import Console

    from bench.core.device import resolve_device
    from bench.perf.memory import measure_memory, memory_plan
    from bench.perf.setup import REWARD
    from bench.results.io import writable_folder, write_json_atomic

    if not methods:
        raise BenchError("no methods given: e.g. --methods rocm-kl,ddpo,d3po")
    if repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {repeats}")
    if any(n < 1 for n in memory_steps):
        raise BenchError(f"--memory-steps must be positive integers, got {memory_steps}")
    reward = reward or REWARD
    out = Path(out)
    if out.is_dir():
        raise BenchError(f"--out {out} is a folder; give a file name, e.g. {out / 'perf.json'}")
    writable_folder(out.parent)
    dev = resolve_device(device)
    suite = make_suite(model, methods, sets, str(dev), reward)
    rocm = next((m for m in methods if family(METHODS[m][0]) == "rocm"), "rocm-kl")
    plan = memory_plan(model, methods, sets, str(dev), sorted(set(memory_steps)), rocm, reward)  # fails early
    console = Console(width=max(Console().width, 132))
    t0 = time.perf_counter()
    log = lambda msg: console.print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", highlight=False)  # noqa: E731

    result = {
        "complete": False,
        "config": {"model": to_dict(suite.model), "sampler": to_dict(suite.sampler), "reward": reward,
                   "methods": {m: to_dict(method_config(m, suite)[1]) for m in methods}, "sets": list(sets),
                   "repeats": repeats, "threads": torch.get_num_threads(), "device": str(dev),
                   "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                   f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                "diffusers": diffusers.__version__, "peft": peft.__version__}},
        "bare_compute": BARE,
        "memory_measure": ("torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process VmHWM") +
                          "; step_peak_mib = peak during one step minus the memory at its start",
        "methods": {},
    }
    save = lambda: write_json_atomic(Path(out), result)  # noqa: E731
    log(f"matmul rate of {dev} ...")
    rate, dtype = matmul_rate(dev)
    result["matmul_flops_per_s"], result["matmul_dtype"] = rate, dtype
    log(f"{rate_text(rate)} ({dtype}); building {model} and {reward} once for every method ...")
    shared = build_shared(suite)
    save()
    result["skipped"] = []
    for name in methods:
        if deadline is not None and time.perf_counter() > deadline:
            result["skipped"].append(name)
            log(f"{name}: skipped, out of time")
            continue
        log(f"timing {name}: 1 recorded step, then {repeats} interleaved step / bare-compute pairs ...")
        row = time_method(suite, name, repeats, *shared)
        flops = row["meter_per_step"]["flops"]
        row["mfu"] = flops / row["step_s"] / rate
        row["mfu_bare"] = flops / row["bare_s"] / rate
        result["methods"][name] = row
        save()
        log(f"{name}: step {row['step_s']:.3f} s, bare {row['bare_s']:.3f} s ({row['ratio']:.3f}x), "
            f"MFU {row['mfu']:.1%} (bare {row['mfu_bare']:.1%})")
    if deadline is not None and time.perf_counter() > deadline:
        log("peak memory: skipped, out of time")
        peaks, sweep = [{"step_peak_mib": float("nan"), "peak_mib": float("nan")}] * len(methods), []
    else:
        size = sum(p.numel() for m in shared for p in getattr(m, "parameters", lambda: [])()) + sum(
            p.numel() for v in vars(shared[1]).values() if isinstance(v, torch.nn.Module) for p in v.parameters())
        peaks, sweep = measure_memory(plan, len(methods), shared if dev.type == "cuda" else None, log, size)
    for name, peak in zip(methods, peaks):
        if name in result["methods"]:
            result["methods"][name].update(peak)
    on = {r["steps"]: r["step_peak_mib"] for r in sweep if r["checkpointing"]}
    off = {r["steps"]: r["step_peak_mib"] for r in sweep if not r["checkpointing"]}
    for r in sweep:
        r["ratio_to_min_steps"] = ratio(r["step_peak_mib"], (on if r["checkpointing"] else off)[min(on)])
    del shared  # the model's memory, before the tables
    mem_ratio = ratio(on.get(8), on.get(1))
    result["memory_sweep"] = {"method": rocm, "rows": sweep, "ratio_8_to_1": mem_ratio, "target": MEMORY_TARGET,
                              "met": None if mem_ratio is None else mem_ratio <= MEMORY_TARGET}
    result["complete"] = True
    save()
    print_tables(console, result, model, dev, repeats)
    console.print(f"wrote {out}")
    return result


def print_tables(console, result: dict, model: str, dev, repeats: int) -> None:
    """The methods' table, ROCM's memory sweep and the targets, met or missed."""
    from rich.table import Table

    rows, sweep = result["methods"], result["memory_sweep"]
    table = Table(title=f"bench perf: {model} on {dev}, {result['config']['threads']} threads, median of {repeats} "
                        f"interleaved step / bare pairs; MFU against {rate_text(result['matmul_flops_per_s'])} "
                        f"({result['matmul_dtype']} matmul)")
    for col in ("method", "step s", "bare s", "ratio", "target", "unet ratio", "cpu ratio", "samples/s", "MFU",
                "bare MFU", "step peak MiB", "abs peak MiB"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, r in rows.items():
        tgt = "-" if r["target"] is None else f"{r['target']:.2f}x " + ("met" if r["met"] else "MISSED")
        cpu = "-" if r["ratio_cpu"] is None else f"{r['ratio_cpu']:.3f}x"
        table.add_row(name, f"{r['step_s']:.4f}", f"{r['bare_s']:.4f}", f"{r['ratio']:.3f}x", tgt,
                      f"{r['ratio_unet']:.3f}x", cpu, f"{r['samples_per_s']:.2f}", f"{r['mfu']:.1%}",
                      f"{r['mfu_bare']:.1%}", f"{r['step_peak_mib']:.1f}", f"{r['peak_mib']:.0f}")
    console.print(table)
    on = {r["steps"]: r["step_peak_mib"] for r in sweep["rows"] if r["checkpointing"]}
    off = {r["steps"]: r["step_peak_mib"] for r in sweep["rows"] if not r["checkpointing"]}
    if on:
        lo = min(on)
        mt = Table(title=f"{sweep['method']}: peak memory of one step above its start (MiB) vs sampling steps")
        for col in ("steps", "checkpointing", f"/ {lo} step", "no checkpointing", f"/ {lo} step "):
            mt.add_column(col, justify="right")
        for n in sorted(on):
            mt.add_row(str(n), f"{on[n]:.1f}", f"{ratio(on[n], on[lo]):.2f}x", f"{off[n]:.1f}",
                       f"{ratio(off[n], off[lo]):.2f}x")
        console.print(mt)
    verdicts = [(f"{n}: {r['ratio']:.3f}x the bare compute, target <= {r['target']:.2f}x", r["met"])
                for n, r in rows.items() if r["target"] is not None]
    if sweep["ratio_8_to_1"] is not None:
        verdicts.append((f"{sweep['method']} peak memory, 8 steps / 1 step (checkpointing): "
                         f"{sweep['ratio_8_to_1']:.2f}x, target <= {MEMORY_TARGET:.2f}x", sweep["met"]))
    for text, ok in verdicts:
        console.print(f"[green]met[/green]    {text}" if ok else f"[red]MISSED[/red] {text}", highlight=False)
    if not all(r["same_work_every_step"] for r in rows.values()):
        console.print("[yellow]note: some timed steps did different model work than the recorded one (see JSON)")
