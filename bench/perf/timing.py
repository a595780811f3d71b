"""`bench perf`: what a training step costs beyond the model compute it contains, and its peak memory.

Per method, one warm-up step runs with hooks recording every model call: each UNet forward (input shapes, grad
mode, policy or frozen reference, whether its input needed a gradient, whether a backward reached its output,
whether it was a checkpoint recompute inside backward), each VAE decode and each reward call. Then `repeats`
timed steps are interleaved with timed replays of that list in the same process, threads, dtype and LoRA-wrapped
UNet, in pairs whose order alternates (step then replay, replay then step, …):

  bare compute = the recorded UNet forwards at the same shapes and grad modes (reference calls with adapters
                 disabled), each followed by `out.sum().backward()` where the step back-propagated through it,
               + the VAE decode and reward calls, forward and backward likewise; no checkpointing at all.

Not in it, so counted as overhead: checkpoint recomputes, the text encoder (embeddings are cached), the
consistency and log-prob arithmetic, adapter switching, losses, clipping, the optimizer. ratio = the median over
pairs of step time / bare time of the same pair (`ratio_unet`: over the UNet work alone; `ratio_cpu`: of process
CPU time, which a core shared with other jobs inflates less than wall time): adjacent timings, so that a machine
speeding up or slowing down during the measurement moves both. Every timed step must do the recorded step's
work by the meter's counts (`same_work_every_step`).

Peak memory (bench/perf/memory.py): one fresh process per configuration (forked from a server that has only
imported modules), so peaks cannot contaminate each other: build, one warm-up step, one measured step (its suite
keeps only the `method.FIELD` settings that method has, bench.perf.memory `own_sets`). `step_peak_mib` = the step's peak
above its own start (activations and temporaries, what grows with sampling steps; the memory ratio uses it);
`peak_mib` = the process's absolute peak. CUDA: torch.cuda.max_memory_allocated. CPU: the resident-set high-water
mark (VmHWM, reset before the step, less library pages faulted in meanwhile), with glibc's mmap threshold pinned
at 64 KiB so that freed tensors leave the resident set instead of being silently reused. ROCM's sweep: one step
at each of `memory_steps` sampling steps, with and without checkpointing. Targets are reported, never asserted.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench.core.compute import sync_device
from bench.perf.setup import build_method
from bench.registry.catalog import METHODS
from bench.run.config import SuiteConfig, family

TARGETS = {"ddpo": 1.03, "d3po": 1.03,  # step time / bare compute, by method family
           "rebel": 1.03,  # DDPO's work per step (default: one graph per minibatch); 1.011x on tiny, 1 thread
           "rocm": 1.40}
BARE = ("UNet forwards (+ backward where the step back-propagated through them), VAE decode and reward calls, "
        "replayed at the recorded shapes and grad modes without any checkpointing; checkpoint recomputes, text "
        "encoder, adapter switching, losses and optimizer are overhead")


@dataclass
class Call:
    """One model call of a training step, as the replay needs it."""

    kind: str  # "unet", "decode" or "reward"
    shapes: list[tuple[int, ...]]  # unet: sample, encoder_hidden_states[, timestep_cond]; else the input
    grad: bool  # grad mode was on
    input_grad: bool  # the (first) input required a gradient
    reference: bool = False  # run by the frozen reference
    recompute: bool = False  # a checkpoint recomputation inside backward: overhead, not replayed
    backward: bool = False  # a backward reached the output
    extra: Any = None  # unet: (module, timestep); reward: the prompts


def _watch(out: torch.Tensor, call: Call) -> None:
    if out.requires_grad and not call.recompute:
        out.register_hook(lambda g: (setattr(call, "backward", True), g)[1])


@contextmanager
def record(policy, reward):
    """Yields the list of `Call`s made inside the context."""
    calls: list[Call] = []

    def on_unet(module, args, kwargs, out):
        x = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        ins = [i for i in (x, kwargs["encoder_hidden_states"], kwargs.get("timestep_cond")) if i is not None]
        calls.append(Call("unet", [tuple(i.shape) for i in ins], torch.is_grad_enabled(), x.requires_grad,
                          policy.in_reference, torch._C._current_graph_task_id() != -1,  # inside backward
                          extra=(module, int(t.flatten()[0]))))
        _watch(out.sample, calls[-1])

    def wrap(kind: str, fn: Callable) -> Callable:
        def inner(x, *rest):
            out = fn(x, *rest)
            calls.append(Call(kind, [tuple(x.shape)], torch.is_grad_enabled(), x.requires_grad,
                              extra=list(rest[0]) if rest else None))
            _watch(out, calls[-1])
            return out
        return inner

    handles = [m.register_forward_hook(on_unet, with_kwargs=True) for m in (policy.unet, policy.reference_unet)
               if m is not None]
    policy.decode, reward.score = wrap("decode", policy.decode), wrap("reward", reward.score)
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()
        del policy.decode, reward.score


def make_replay(policy, reward, calls: list[Call]) -> Callable[[], None]:
    """A function redoing `calls` (recomputes excluded) on fresh inputs of the same shapes."""
    dev, params = policy.device, policy.trainable_parameters()
    todo = sorted((c for c in calls if not c.recompute), key=lambda c: c.reference)  # one switch to the reference
    inputs = [[(torch.rand if c.kind == "reward" else torch.randn)(s, device=dev) for s in c.shapes] for c in todo]

    def run(c: Call, ins: list[torch.Tensor]) -> None:
        x = ins[0].detach().requires_grad_(c.input_grad)
        with torch.set_grad_enabled(c.grad), policy.autocast():
            if c.kind == "unet":
                (module, t), tc = c.extra, ins[2] if len(ins) > 2 else None
                ts = torch.full((x.shape[0],), t, device=dev, dtype=torch.long)
                out = module(x, ts, encoder_hidden_states=ins[1], timestep_cond=tc).sample
            else:
                out = policy.decode(x) if c.kind == "decode" else reward.score(x, c.extra)
        if c.backward:
            out.float().sum().backward()

    def replay() -> None:
        with ExitStack() as stack:
            stack.enter_context(policy.meter.paused())  # the reference work is not training: nothing is charged
            for c, ins in zip(todo, inputs):
                if c.reference and not policy.in_reference:
                    stack.enter_context(policy.reference())
                run(c, ins)
        for p in params:
            p.grad = None

    return replay


@contextmanager
def no_unet_checkpointing(policy):
    """Bare compute has no recomputation: UNet-internal gradient checkpointing (real models) is off inside."""
    on = [m for m in (policy.unet, policy.reference_unet) if getattr(m, "is_gradient_checkpointing", False)]
    for m in on:
        m.disable_gradient_checkpointing()
    try:
        yield
    finally:
        for m in on:
            m.enable_gradient_checkpointing()


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(), device work included (synchronised before and after)."""
    sync_device()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync_device()
    return time.perf_counter() - t0, time.process_time() - c0


def time_method(suite: SuiteConfig, name: str, repeats: int, policy, reward) -> dict:
    """Step and bare-compute timings of method `name` on the shared (policy, reward) (bench/perf/setup.py)."""
    algo = build_method(suite, name, policy, reward)
    meter, keys = policy.meter, ("nfe_forward", "nfe_backward", "nfe_recompute", "images", "reward_calls")

    def step() -> tuple[tuple[float, float], dict]:
        before = meter.counters()
        secs = timed(algo.step)
        after = meter.counters()
        return secs, {k: after[k] - before[k] for k in keys} | {"flops": after["flops"] - before["flops"]}

    with record(policy, reward) as calls:
        _, counts = step()
    unet = [c for c in calls if c.kind == "unet"]
    replays = [make_replay(policy, reward, unet), make_replay(policy, reward, [c for c in calls if c.kind != "unet"])]

    def bare() -> list[tuple[float, float]]:
        with no_unet_checkpointing(policy):
            return [timed(r) for r in replays]  # [UNet work, decode + reward work], each (wall s, CPU s)

    bare()  # warm-up
    pairs, same = [], True  # (step, UNet replay, decode + reward replay), each (wall s, CPU s)
    for i in range(max(1, repeats)):
        # Pairs alternate their order (step, bare; bare, step; …: A B B A A B …) and each pair gives one ratio of
        # adjacent timings, so a machine that speeds up or slows down during the measurement biases consecutive
        # pairs in opposite directions instead of all of them one way.
        if i % 2:
            b, (s, c) = bare(), step()
        else:
            (s, c), b = step(), bare()
        pairs.append((s, *b))
        same = same and {k: c[k] for k in keys} == {k: counts[k] for k in keys}
    (step_w, step_c), (unet_w, unet_c), (rest_w, rest_c) = (list(zip(*col)) for col in zip(*pairs))
    bare_w, bare_c = [u + r for u, r in zip(unet_w, rest_w)], [u + r for u, r in zip(unet_c, rest_c)]
    ratios = lambda a, b: statistics.median(x / y for x, y in zip(a, b))  # noqa: E731
    step_s, bare_s, unet_s = (statistics.median(v) for v in (step_w, bare_w, unet_w))
    ratio = ratios(step_w, bare_w)
    target = TARGETS.get(family(METHODS[name][0]))
    n = lambda cs: sum(c.shapes[0][0] for c in cs)  # noqa: E731  (samples: what the meter counts)
    fwd = [c for c in unet if not c.recompute]
    return {"step_s": step_s, "bare_s": bare_s, "bare_unet_s": unet_s,
            "bare_decode_reward_s": statistics.median(rest_w), "ratio": ratio,
            "ratio_unet": ratios(step_w, unet_w), "target": target,
            "ratio_cpu": None if policy.device.type == "cuda" else ratios(step_c, bare_c),  # CUDA: the host waits
            "met": None if target is None else ratio <= target,
            "samples_per_s": counts["images"] / step_s, "step_times_s": list(step_w), "bare_times_s": bare_w,
            "pair_ratios": [s / b for s, b in zip(step_w, bare_w)], "step_cpu_s": list(step_c), "bare_cpu_s": bare_c,
            "meter_per_step": counts, "same_work_every_step": same,
            "meter_agrees": counts["nfe_forward"] == n(fwd) and counts["nfe_recompute"] == n(unet) - n(fwd)
            and counts["nfe_backward"] == n(c for c in fwd if c.backward),
            "calls": {"unet_forward": len(fwd), "unet_recompute": len(unet) - len(fwd),
                      "unet_backward": sum(c.backward for c in fwd), "reference_forward": sum(c.reference for c in fwd),
                      "decode": sum(c.kind == "decode" for c in calls),
                      "reward": sum(c.kind == "reward" for c in calls)}}


def rate_text(flops_per_s: float) -> str:
    """A FLOP rate in the unit that reads best: TFLOP/s on a GPU, GFLOP/s on a CPU."""
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b if b > 0 else float("inf")


def matmul_rate(device: torch.device, seconds: float = 1.0) -> tuple[float, str]:
    """(FLOP/s, dtype) of a large square matmul on `device`, the denominator of MFU: bfloat16 on a GPU (the dtype
    real runs train in), float32 on a CPU (which always runs float32), in this process's threads. The fastest of
    the matmuls timed over about `seconds` after a warm-up: the card's (or core's) rate, not a moment when other
    work shared it — on a CPU shared with other jobs MFU is still only as good as that moment's share."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    best, elapsed = float("inf"), 0.0
    while elapsed < seconds:
        t = timed(lambda: a @ b)[0]
        best, elapsed = min(best, t), elapsed + t
    return 2 * n**3 / best, str(dtype).removeprefix("torch.")
