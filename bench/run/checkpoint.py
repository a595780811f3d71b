"""Mid-run checkpoints: one file per run (run_dir/checkpoint.pt) holding everything a run needs to continue
exactly where it was, so that a killed run resumes instead of being redone (docs/results-format.md).

What is saved: the policy's trainable weights; the method's state (bench/core/method.py `Method.state_dict`: the
optimizer, the method's generator, its step counters and whatever else it mutates across steps, e.g. DDPO's
per-prompt statistics); every process's RNGs (torch CPU, CUDA where initialised, Python `random`, numpy) and
compute meter; the runner's progress (evaluation points done, the costliest step so far, elapsed wall time, and
the byte sizes of train.jsonl and eval.jsonl at save time); and the run's config.json, which must equal the one a
new attempt would write for the checkpoint to be used. Everything is a tensor, number, string, None or a
list / tuple / dict of them, so the file loads with `torch.load(weights_only=True)`.

Writing is atomic: a temporary file in the run folder, flushed and fsynced, then `os.replace`d over the last
checkpoint; a crash during a save leaves the previous checkpoint intact. In a multi-process run every process's
RNGs and meter are gathered and process 0 writes; every process loads its own share. Exactness: on one process
a resumed run is bit-identical to an uninterrupted one under a count budget (tests/test_checkpoint.py). On
several, the text embeddings a process had cached for training prompts outside the evaluated ones are not
replayed (a prompt draw does not say which rows a process kept): they are encoded, and charged, again, so the
FLOP counters can be higher than an uninterrupted run's and the embeddings can differ in their last bits.

`fault(point)` is a test-only hook: BENCH_FAULT=<point>:<n> makes the process SIGKILL itself the n-th time it
reaches <point> ("checkpoint-write": halfway through writing a checkpoint; "evaluation": after an evaluation was
computed, before its rows are written). tests/test_kill.py uses it to kill at those moments deterministically.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.compute import ComputeMeter
from bench.core.distributed import Dist
from bench.results.io import write_bytes_atomic

FILE = "checkpoint.pt"
FORMAT = 1  # bumped when the layout below changes; another format is not resumed (the run is redone)
LOGS = ("train.jsonl", "eval.jsonl")  # append-only logs, cut back to their size at save time on resume
AFTER = ".after-checkpoint"  # suffix of the side file that keeps what a resume cut from a log
FAULT_ENV = "BENCH_FAULT"
_fault_hits: dict[str, int] = {}


def fault(point: str) -> None:
    """Test-only: SIGKILL this process at its n-th arrival at `point` if BENCH_FAULT=<point>:<n> (module docstring)."""
    name, _, count = os.environ.get(FAULT_ENV, "").partition(":")
    if name != point:
        return
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    if _fault_hits[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- RNGs and the meter, as weights_only-loadable values --------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every global RNG of this process: torch CPU, CUDA (where initialised), Python `random`, numpy."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": (version, torch.tensor(words, dtype=torch.int64), gauss),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def meter_state(meter: ComputeMeter) -> dict[str, Any]:
    """The meter's counters, unrounded, and its FLOP counts per call shape (so a resumed run need not count
    them again)."""
    return {"counters": meter.counters(), "seconds": meter.seconds, "flops_per_nfe": meter.flops_per_nfe,
            "flops_per_sample": list(meter.flops_per_sample.items())}


def load_meter_state(meter: ComputeMeter, state: dict[str, Any]) -> None:
    meter.load_counters(state["counters"])
    meter.seconds, meter.flops_per_nfe = float(state["seconds"]), float(state["flops_per_nfe"])
    meter.flops_per_sample = {key: float(v) for key, v in state["flops_per_sample"]}


def _gather(value: Any, dist: Dist) -> list[Any]:
    """`value` of every process, by rank (a list of one in a single process)."""
    if not dist.active:
        return [value]
    out = [None] * dist.world
    torch.distributed.all_gather_object(out, value)
    return out


# ---- saving and loading ------------------------------------------------------------------------------
def log_sizes(run_dir: Path) -> dict[str, int]:
    return {name: (run_dir / name).stat().st_size if (run_dir / name).exists() else 0 for name in LOGS}


def save(run_dir: Path, run_config: dict, policy, algo, meter: ComputeMeter, progress: dict, dist: Dist) -> None:
    """Write the whole state of a run (module docstring); every process calls it, process 0 writes."""
    ranks = _gather({"rng": rng_state(), "meter": meter_state(meter), "cached_prompts": policy.cached_prompts}, dist)
    if dist.is_main:
        state = {"format": FORMAT, "config": run_config, "policy": policy.trainable_state_dict(),
                 "method": algo.state_dict(), "ranks": ranks, "progress": {**progress, "logs": log_sizes(run_dir)}}
        buf = io.BytesIO()
        torch.save(state, buf)
        write_bytes_atomic(run_dir / FILE, buf.getvalue(), midway=lambda: fault("checkpoint-write"))
    dist.barrier()


def load(run_dir: Path, run_config: dict, world: int) -> tuple[dict | None, str]:
    """(state, "") of a run folder's checkpoint if it can be resumed, else (None, why not)."""
    path = run_dir / FILE
    if not path.exists():
        return None, "no checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means: redo the run
        return None, f"unreadable checkpoint ({type(e).__name__})"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None, "checkpoint of another format"
    if json.dumps(state.get("config"), sort_keys=True) != json.dumps(run_config, sort_keys=True):
        return None, "checkpoint of another run config"
    if len(state.get("ranks", [])) != world:
        return None, f"checkpoint of {len(state.get('ranks', []))} processes, not {world}"
    sizes = log_sizes(run_dir)
    if any(sizes[name] < n for name, n in state["progress"]["logs"].items()):
        return None, "logs shorter than at the checkpoint"
    return state, ""


def restore(state: dict, policy, algo, meter: ComputeMeter, dist: Dist) -> dict:
    """Load a checkpoint into a freshly built run (same seeding as a new one, base evaluation replayed);
    returns the runner's progress."""
    policy.load_trainable_state_dict(state["policy"])
    algo.load_state_dict(state["method"])
    if not dist.active:  # a process of several encoded only its own rows' prompts, which a draw does not tell
        replay_prompt_caches(policy, algo.reward, [[algo.prompts[i] for i in d] for d in algo.drawn], meter)
    own = state["ranks"][dist.rank]
    if policy.cached_prompts != own["cached_prompts"]:  # training prompts outside every evaluated split
        print(f"warning: resuming with {policy.cached_prompts} of {own['cached_prompts']} text embeddings cached: the "
              f"others are encoded, and charged, again (flops counters above an uninterrupted run's)", file=sys.stderr)
    set_rng_state(own["rng"])
    load_meter_state(meter, own["meter"])
    return state["progress"]


def replay_prompt_caches(policy, reward, draws: list[list[str]], meter: ComputeMeter) -> None:
    """Encode the training draws' prompts again, uncharged, in the order and batches training did: the policy's
    text embeddings and the reward's per-prompt work (scoring blank images) are then cached as they were at the
    checkpoint, bit for bit, and are not charged a second time. Draws without a new prompt are skipped."""
    with meter.paused(), torch.no_grad():
        for prompts in draws:
            cached = policy.cached_prompts
            policy.encode_prompts(prompts)
            if policy.cached_prompts > cached:
                reward(torch.zeros((len(prompts), 3, policy.image_size, policy.image_size), device=policy.device),
                       prompts)


def cut_logs(run_dir: Path, sizes: dict[str, int]) -> None:
    """Truncate each log back to its size at the checkpoint (rows written after it, a torn last line included,
    are recomputed identically), appending what was cut to <log>.after-checkpoint, so nothing is lost. Also
    removes the temporary files of atomic writes that were killed (process 0 is the run folder's one writer, so
    every one left is stale, never a complete file)."""
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob("samples/.*.tmp"), *run_dir.glob("scores/.*.tmp")]:
        tmp.unlink()
    for name, size in sizes.items():
        path = run_dir / name
        if not path.exists() or path.stat().st_size == size:
            continue
        with open(path, "rb+") as f:
            f.seek(size)
            tail = f.read()
            side = path.with_name(name + AFTER)
            with open(side, "ab") as s:
                s.write(tail if tail.endswith(b"\n") else tail + b"\n")
                s.flush()
                os.fsync(s.fileno())
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
