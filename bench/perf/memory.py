"""`bench perf`'s peak memory of one step (what is measured and how: bench/perf/timing.py).

On a CPU, one fresh process per configuration, forked from a forkserver that has only imported modules, so that
resident-set peaks cannot contaminate each other; each builds its method exactly as the timing does
(bench/perf/setup.py `build`), takes one warm-up step and one measured step. On a GPU, in this process, on the model
already built for the timings: CUDA cannot be initialised in a forked child, and the allocator's own peak counter
(`torch.cuda.reset_peak_memory_stats` before the measured step, `max_memory_allocated` after) counts live tensors
only, so a configuration measured after another one sees the same step peak (what is still cached is not counted).
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
from bench.perf.setup import REWARD, build, build_method, make_suite
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


def cuda_step_peak(algo) -> dict[str, float]:
    """One warm-up step, then the allocator's peak during one measured step: {"step_peak_mib", "peak_mib"}."""
    algo.step()  # optimizer state, caches, lazy initialisation
    gc.collect()
    sync_device()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20
    algo.step()
    sync_device()
    peak = torch.cuda.max_memory_allocated() / 2**20
    return {"step_peak_mib": peak - base, "peak_mib": peak}


def memory_child(job: tuple[str, str, list[str], str, str]) -> dict[str, float]:
    """In a fresh process (CPU): build, one warm-up step, one measured step -> {"step_peak_mib", "peak_mib"}."""
    model, method, sets, device, reward = job
    try:  # glibc: mmap every allocation >= 64 KiB, so freed tensors leave the resident set
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    algo, policy, _ = build(make_suite(model, [method], sets, device, reward), method)
    if policy.device.type == "cuda":
        return cuda_step_peak(algo)
    algo.step()  # optimizer state, caches, lazy initialisation
    gc.collect()
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


def memory_plan(model: str, methods: list[str], sets: list[str], device: str, steps: list[int], rocm: str,
                reward: str = REWARD) -> tuple:
    """(ROCM's sweep rows, one job per measurement, each job's resolved configuration): every job's suite is
    built and validated here, before anything is timed."""
    sweep = [{"steps": n, "checkpointing": ck} for n in steps for ck in (True, False)]
    jobs = [(model, m, own_sets(m, sets), device, reward) for m in methods] + [
        (model, rocm, [*own_sets(rocm, sets), f"sampler.steps={r['steps']}",
                       f"sampler.checkpointing={r['checkpointing']}"], device, reward) for r in sweep]
    keys = []
    for _, m, s, _, _ in jobs:
        suite = make_suite(model, [m], s, device, reward)
        keys.append(json.dumps([m, to_dict(method_config(m, suite)[1]), to_dict(suite.sampler), to_dict(suite.model)]))
    return sweep, jobs, keys


LARGE = 5e7  # parameters of model and reward beyond which the CPU's memory children run one at a time


def measure_memory(plan: tuple, n_methods: int, shared=None, log=lambda msg: None,
                   parameters: float = 0.0) -> tuple[list[dict], list[dict]]:
    """(peak of each method's step, ROCM's sweep rows) of a `memory_plan`. Identical resolved configurations are
    measured once. On a CPU each in a child process, the children in parallel (peaks are per process); on a GPU
    in this process, on `shared` = (policy, reward) when given (the timings' build)."""
    sweep, jobs, keys = plan
    device = jobs[0][3]
    unique = list(dict.fromkeys(keys))
    if device.startswith("cuda"):
        found = {}
        for k in unique:
            model, method, sets, _, reward = jobs[keys.index(k)]
            suite = make_suite(model, [method], sets, device, reward)
            if shared is None:
                algo, policy, reward = build(suite, method)
                shared = (policy, reward)
            else:
                algo = build_method(suite, method, *shared)
            log(f"peak memory: {method} {' '.join(s for s in sets if s.startswith('sampler.'))}".rstrip())
            try:
                found[k] = cuda_step_peak(algo)
            except torch.cuda.OutOfMemoryError:
                found[k] = {"step_peak_mib": float("nan"), "peak_mib": float("nan"), "out_of_memory": True}
            del algo
            gc.collect()
            torch.cuda.empty_cache()
        return [found[k] for k in keys[:n_methods]], [{**r, **found[k]} for r, k in zip(sweep, keys[n_methods:])]
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

    # a real-size model's child holds several GB: one at a time beside the parent (two did not fit in 24 GB)
    workers = 1 if parameters > LARGE else min(len(unique), os.cpu_count() or 1)
    log(f"peak memory: {len(unique)} configurations, one process each, {workers} at a time")
    with ThreadPoolExecutor(workers) as pool:
        found = dict(zip(unique, pool.map(one, [jobs[keys.index(k)] for k in unique])))
    return [found[k] for k in keys[:n_methods]], [{**r, **found[k]} for r, k in zip(sweep, keys[n_methods:])]
