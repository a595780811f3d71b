"""`bench perf`: every method's step time against its bare compute (timing.py) and peak memory (memory.py), one
table and one JSON file.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.perf.setup import REWARD, make_suite
from bench.perf.timing import BARE, ratio, time_method
from bench.registry.catalog import METHODS
from bench.run.config import family, method_config, to_dict

MEMORY_TARGET = 1.25  # ROCM with checkpointing: step peak at 8 sampling steps / at 1


# ---- the command ------------------------------------------------------------------------------------------
def run_perf(model: str, methods: list[str], repeats: int, sets: list[str], out: Path, memory_steps: list[int],
             device: str = "auto") -> dict:
    """Time, replay and measure every method; print the tables; write JSON to `out`. Returns what it wrote."""
    import diffusers
    import peft
    from rich.console import Console
    from rich.table import Table

    from bench.core.device import resolve_device
    from bench.perf.memory import measure_memory, memory_plan
    from bench.results.io import write_json_atomic

    if not methods:
        raise BenchError("no methods given: e.g. --methods rocm-kl,ddpo,d3po")
    if any(n < 1 for n in memory_steps):
        raise BenchError(f"--memory-steps must be positive integers, got {memory_steps}")
    dev = resolve_device(device)
    suite = make_suite(model, methods, sets, str(dev))
    rocm = next((m for m in methods if family(METHODS[m][0]) == "rocm"), "rocm-kl")
    plan = memory_plan(model, methods, sets, str(dev), sorted(set(memory_steps)), rocm)  # fails before any timing
    console = Console(width=max(Console().width, 132))
    rows = {}
    for name in methods:
        console.print(f"timing {name} ...")
        rows[name] = time_method(suite, name, repeats)
    console.print("peak memory (one subprocess per configuration) ...")
    peaks, sweep = measure_memory(plan, len(methods))
    for name, peak in zip(methods, peaks):
        rows[name].update(peak)
    on = {r["steps"]: r["step_peak_mib"] for r in sweep if r["checkpointing"]}
    off = {r["steps"]: r["step_peak_mib"] for r in sweep if not r["checkpointing"]}
    mem_ratio = ratio(on.get(8), on.get(1))
    for r in sweep:
        r["ratio_to_min_steps"] = ratio(r["step_peak_mib"], (on if r["checkpointing"] else off)[min(on)])

    table = Table(title=f"bench perf: {model} on {dev}, {torch.get_num_threads()} threads, median of {repeats} "
                        f"interleaved step / bare pairs")
    for col in ("method", "step s", "bare s", "ratio", "target", "unet ratio", "cpu ratio", "samples/s",
                "step peak MiB", "abs peak MiB"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, r in rows.items():
        tgt = "-" if r["target"] is None else f"{r['target']:.2f}x " + ("met" if r["met"] else "MISSED")
        cpu = "-" if r["ratio_cpu"] is None else f"{r['ratio_cpu']:.3f}x"
        table.add_row(name, f"{r['step_s']:.4f}", f"{r['bare_s']:.4f}", f"{r['ratio']:.3f}x", tgt,
                      f"{r['ratio_unet']:.3f}x", cpu, f"{r['samples_per_s']:.2f}", f"{r['step_peak_mib']:.1f}",
                      f"{r['peak_mib']:.0f}")
    console.print(table)
    if sweep:
        lo = min(on)
        mt = Table(title=f"{rocm}: peak memory of one step above its start (MiB) vs sampling steps")
        for col in ("steps", "checkpointing", f"/ {lo} step", "no checkpointing", f"/ {lo} step "):
            mt.add_column(col, justify="right")
        for n in sorted(on):
            mt.add_row(str(n), f"{on[n]:.1f}", f"{ratio(on[n], on[lo]):.2f}x", f"{off[n]:.1f}",
                       f"{ratio(off[n], off[lo]):.2f}x")
        console.print(mt)
    verdicts = [(f"{n}: {r['ratio']:.3f}x the bare compute, target <= {r['target']:.2f}x", r["met"])
                for n, r in rows.items() if r["target"] is not None]
    if mem_ratio is not None:
        verdicts.append((f"{rocm} peak memory, 8 steps / 1 step (checkpointing): {mem_ratio:.2f}x, target <= "
                         f"{MEMORY_TARGET:.2f}x", mem_ratio <= MEMORY_TARGET))
    for text, ok in verdicts:
        console.print(f"[green]met[/green]    {text}" if ok else f"[red]MISSED[/red] {text}", highlight=False)
    if not all(r["same_work_every_step"] for r in rows.values()):
        console.print("[yellow]note: some timed steps did different model work than the recorded one (see JSON)")

    result = {
        "config": {"model": to_dict(suite.model), "sampler": to_dict(suite.sampler), "reward": REWARD,
                   "methods": {m: to_dict(method_config(m, suite)[1]) for m in methods}, "sets": list(sets),
                   "repeats": repeats, "threads": torch.get_num_threads(), "device": str(dev),
                   "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                   f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                "diffusers": diffusers.__version__, "peft": peft.__version__}},
        "bare_compute": BARE,
        "memory_measure": ("torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process VmHWM") +
                          "; step_peak_mib = peak during one step minus the memory at its start",
        "methods": rows,
        "memory_sweep": {"method": rocm, "rows": sweep, "ratio_8_to_1": mem_ratio, "target": MEMORY_TARGET,
                         "met": None if mem_ratio is None else mem_ratio <= MEMORY_TARGET},
    }
    write_json_atomic(Path(out), result)
    console.print(f"wrote {out}")
    return result
