"""`bench perf`'s peak memory: one fresh process per configuration (what is measured and how: bench/perf/timing.py).

The children are forked from a forkserver that has only imported modules, so that peaks cannot contaminate each
other; each builds its method exactly as the timing does (bench.perf.timing `build`), takes one warm-up step and one
measured step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from bench.core.compute import sync_device
from bench.core.errors import BenchError
from bench.perf.setup import build, make_suite
from bench.registry.lookup import method_class
from bench.run.config import method_config, to_dict

# ---- peak memory: one fresh process per configuration -----------------------------------------------------
# What the forkserver imports once, so that each child starts clean but fast (a missing one the child imports).
PRELOAD = ["bench.perf.timing", "bench.perf.memory", "bench.run.runner", "methods.rocm", "methods.draft", "methods.refl",
           "methods.ddpo", "methods.d3po", "methods.grpo", "methods.dpok", "methods.rebel", "rewards.toy",
           "diffusers.models.unets.unet_2d_condition", "diffusers.models.autoencoders.autoencoder_kl",
           "diffusers.schedulers.scheduling_lcm", "transformers.models.clip.modeling_clip", "peft"]


def _status() -> dict[str, float]:
    """/proc/self/status sizes in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            out[key] = float(rest.split()[0]) / 1024
    return out


def memory_child(job: tuple[str, str, list[str], str]) -> dict[str, float]:
    """In a fresh process: build, one warm-up step, one measured step -> {"step_peak_mib", "peak_mib"}."""
    model, method, sets, device = job
    try:  # glibc: mmap every allocation >= 64 KiB, so freed tensors leave the resident set
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    algo, policy, _ = build(make_suite(model, [method], sets, device), method)
    algo.step()  # optimizer state, caches, lazy initialisation
    gc.collect()
    if policy.device.type == "cuda":
        sync_device()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        algo.step()
        peak = torch.cuda.max_memory_allocated() / 2**20
        return {"step_peak_mib": peak - base, "peak_mib": peak}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:  # not Linux: no resident-set high-water mark to read
        return {"step_peak_mib": float("nan"), "peak_mib": float("nan")}
    before = _status()
    algo.step()
    after = _status()
    files = max(0.0, after.get("RssFile", 0.0) - before.get("RssFile", 0.0))  # code pages, not training memory
    return {"step_peak_mib": after["VmHWM"] - before["VmRSS"] - files, "peak_mib": after["VmHWM"]}


def own_sets(method: str, sets: list[str]) -> list[str]:
    """`sets` for a suite of `method` alone: `method.FIELD=…` applies to every method that has the field, so
    those for fields `method` lacks (meant for the suite's other methods) are left out."""
    fields = {f.name for f in dataclasses.fields(method_class(method)[0].Config)}
    key = lambda s: s.split("=", 1)[0].strip()  # noqa: E731
    return [s for s in sets if not key(s).startswith("method.") or key(s).removeprefix("method.") in fields]


def memory_plan(model: str, methods: list[str], sets: list[str], device: str, steps: list[int], rocm: str) -> tuple:
    """(ROCM's sweep rows, one job per measurement, each job's resolved configuration): every job's suite is
    built and validated here, before anything is timed."""
    sweep = [{"steps": n, "checkpointing": ck} for n in steps for ck in (True, False)]
    jobs = [(model, m, own_sets(m, sets), device) for m in methods] + [
        (model, rocm, [*own_sets(rocm, sets), f"sampler.steps={r['steps']}",
                       f"sampler.checkpointing={r['checkpointing']}"], device) for r in sweep]
    keys = []
    for _, m, s, _ in jobs:
        suite = make_suite(model, [m], s, device)
        keys.append(json.dumps([m, to_dict(method_config(m, suite)[1]), to_dict(suite.sampler), to_dict(suite.model)]))
    return sweep, jobs, keys


def measure_memory(plan: tuple, n_methods: int) -> tuple[list[dict], list[dict]]:
    """(peak of each method's step, ROCM's sweep rows) of a `memory_plan`. Identical resolved configurations are
    measured once; on a CPU the children run in parallel (peaks are per process)."""
    sweep, jobs, keys = plan
    device = jobs[0][3]
    unique = list(dict.fromkeys(keys))
    forkserver = "forkserver" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if forkserver else "spawn")
    if forkserver:
        ctx.set_forkserver_preload(PRELOAD)

    def one(job: tuple) -> dict:  # a one-process pool per job: a fresh process, and a dead one is reported
        try:
            with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                return ex.submit(memory_child, job).result()
        except BrokenProcessPool:
            raise BenchError(f"the peak-memory process of {job[1]} {job[2]} died (out of memory?)") from None

    workers = 1 if device.startswith("cuda") else min(len(unique), os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        found = dict(zip(unique, pool.map(one, [jobs[keys.index(k)] for k in unique])))
    return [found[k] for k in keys[:n_methods]], [{**r, **found[k]} for r, k in zip(sweep, keys[n_methods:])]
