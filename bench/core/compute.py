"""Compute accounting: budgets, and the meter that every training model call is charged to.

The mission compares methods at a matched compute budget (docs/protocol.md §3). A budget has one of three units:

  - FLOPs, "3e15flop", "40gflop", "2.5tflop", "1pflop" (k, m, g, t, p, e prefixes; "flops" also reads):
    every training forward and backward of every model — the denoiser (policy and frozen reference), the
    VAE decoder, the text encoder, the reward model and a learned value function. This is the fair count budget on real models: at
    512 px ROCM back-propagates through the VAE decoder and a ViT-H reward for every image, each worth
    several UNet evaluations, while the policy-gradient methods only run them forward. Deterministic.
  - NFE, "2000nfe": denoiser evaluations **per sample**, and the denoiser only: one UNet forward on a
    batch of 8 costs 8, a backward through it 2 per sample (a backward is about twice a forward). Kept
    because it is readable and because older results are counted in it; it charges the decoder, the
    text encoder and the reward nothing. Deterministic, what CI uses.
  - device time of training work, "30s", "10m", "1.5h" (the GPU-hours of the mission, CPU-hours here).

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and
attention; elementwise work counts 0) **once** per (module, per-sample input shapes, variant), during the
first real call — the mode only observes, so results and every RNG are untouched — and cached per sample;
every call then charges `per_sample * batch`. A backward through a module is charged 2x the forward FLOPs of
that call (as for NFE, also where the module's own weights are frozen), when — and each time — gradient
reaches the output the call produced (`watch`, `watch_backward`). Work cached per prompt (text embeddings) is
charged per cache miss; a charged call nested in another is charged by itself and left out of the outer count.
`counters()["nfe_eq"]` = total FLOPs / the per-sample forward FLOPs of the policy denoiser (adapters on): the
FLOP total in readable NFE-equivalents.

**The algorithm is charged, not the memory tricks.** The count budgets (`nfe`, `flops`) charge the forwards and
backwards an algorithm needs. Work redone only to save memory — the sampler's per-step gradient checkpointing
recomputing a step's forward during backward, REBEL's `memory_saving` pass — runs inside `recomputing()` and is
counted apart, in `nfe_recompute` and `flops_recompute`, which no count budget spends: a method's count budget is
the same with and without checkpointing, and the recomputation stays visible in every row of train.jsonl. It is
paid for where it is real, in device time (a time budget measures it). Recomputation inside the UNet
(`model.unet_checkpointing`, real models) happens inside torch's backward, out of the meter's sight: it is in
neither counter, and likewise only in the time.

The meter is charged where the work happens — `Policy.consistency` / `decode` / `encode_prompts` and
`Reward.__call__` — so no method can forget or fake its spending. Evaluation runs inside `meter.paused()` and
is not charged (nor measured).
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.core.errors import BenchError

_UNITS = {"nfe": ("nfe", 1.0), "s": ("seconds", 1.0), "sec": ("seconds", 1.0), "m": ("seconds", 60.0),
          "min": ("seconds", 60.0), "h": ("seconds", 3600.0)}
_UNITS |= {f"{prefix}{flop}": ("flops", scale) for prefix, scale in
           (("", 1.0), ("k", 1e3), ("m", 1e6), ("g", 1e9), ("t", 1e12), ("p", 1e15), ("e", 1e18))
           for flop in ("flop", "flops")}

FLOP_MODULES = ("denoiser", "decoder", "reward", "text", "value")
"""The model components whose FLOPs are charged; `counters()` has `flops_<module>` for each. "value": a learned
value function (DPOK's critic, methods/dpok.py)."""
BACKWARD_FACTOR = 2.0
"""A backward through a module costs this many of its forwards (gradients w.r.t. inputs and weights)."""
BUDGET_TOLERANCE = 0.005
"""A run may end at most this fraction past its budget (bench/run/runner.py; bench/run/config.py refuses a count
budget smaller than one outer step by this rule, before anything runs)."""


@dataclass(frozen=True)
class Budget:
    """How much training compute a run may spend."""

    kind: str  # "nfe" (denoiser evaluations per sample), "flops" (every model, fwd + bwd) or "seconds"
    amount: float  # in units of `kind`
    text: str  # as the user wrote it, e.g. "2000nfe", "3e15flop", "1.5h"

    @staticmethod
    def parse(text: str) -> "Budget":
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)\s*", text.lower())
        if not m or m.group(2) not in _UNITS:
            raise BenchError(f"bad budget '{text}': expected a number with a unit, e.g. 2000nfe, 3e15flop, "
                             f"40gflop, 30s, 10m, 1.5h")
        kind, scale = _UNITS[m.group(2)]
        amount = float(m.group(1)) * scale
        if not amount > 0 or amount == float("inf"):
            raise BenchError(f"bad budget '{text}': must be positive and finite")
        return Budget(kind=kind, amount=amount, text=text.strip())

    def spent(self, counters: dict) -> float:
        """How much of this budget's unit the counters (ComputeMeter.counters()) have spent."""
        return float(counters[self.kind])

    def as_dict(self) -> dict:
        return {"kind": self.kind, "amount": self.amount, "text": self.text}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Attention (B, H, L, E) x (B, H, S, E) x (B, H, S, Ev): the two batched products Q K^T and A V, as
    torch counts its CUDA attention kernels."""
    *lead, q_len, e = query_shape
    s_len, e_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * q_len * s_len * (e + e_v)


# torch's registry counts the CUDA attention kernels but not the CPU flash kernel, so on a CPU every attention
# would count 0: the same formula for it makes the count the same on every device.
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


@dataclass
class _Frame:
    """A charged call in progress: its FLOP counter when this call is the one counted (else None), and the
    FLOPs of the charged calls nested in it, which its counter also sees but which are charged on their own."""

    counter: FlopCounterMode | None
    nested: float = 0.0


@dataclass
class ModuleCall:
    """One forward of a model component as the meter charged it. `watch` a tensor it produced to charge
    the backward through it; `per_sample` is set when the forward ends."""

    module: str
    batch: int
    per_sample: float = 0.0  # forward FLOPs per sample
    charged: bool = False  # False: paused, or an empty batch

    @property
    def flops(self) -> float:
        return self.per_sample * self.batch


class ComputeMeter:
    """Counts what training spends. `seconds` is only advanced inside `timing()` (the runner wraps each
    training step in it), so evaluation and I/O between steps are never charged."""

    clock: Callable[[], float] = staticmethod(time.perf_counter)
    """The device-time clock of `timing()` (tests replace it with a fake one to make time budgets deterministic)."""

    def __init__(self) -> None:
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.nfe_recompute = 0  # denoiser forwards redone to save memory (not in `nfe`)
        self.flops_recompute = 0.0  # FLOPs of every forward redone to save memory (not in `flops`)
        self.reward_calls = 0
        self.images = 0
        self.seconds = 0.0
        self.flops: dict[str, float] = dict.fromkeys(FLOP_MODULES, 0.0)  # forward + backward, per module
        self.flops_per_nfe = 0.0  # per-sample forward FLOPs of the policy denoiser (0 until measured)
        self.flops_per_sample: dict[tuple, float] = {}  # (module, key) -> forward FLOPs per sample
        self._paused = 0
        self._recomputing = 0
        self._frames: list[_Frame] = []  # charged calls in progress, outermost first

    # ---- charging -------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._paused == 0

    def charge_forward(self, batch: int) -> None:
        if self.active and self._recomputing:
            self.nfe_recompute += batch
        elif self.active:
            self.nfe_forward += batch

    def charge_backward(self, batch: int) -> None:
        if self.active:
            self.nfe_backward += batch

    def charge_reward(self, batch: int) -> None:
        if self.active:
            self.reward_calls += batch

    def charge_images(self, batch: int) -> None:
        if self.active:
            self.images += batch

    @contextmanager
    def forward(self, module: str, key: Hashable, batch: int, *, nfe_unit: bool = False) -> Iterator[ModuleCall]:
        """Charge the forward of `module` run inside this context on `batch` samples. `key`: what its FLOPs
        per sample depend on (per-sample input shapes, variant); the first call with a key is counted by
        FlopCounterMode, later ones reuse the count. `nfe_unit`: this is the policy denoiser (`nfe_eq`'s unit).
        A charged call nested inside (e.g. a reward's own cached text tower) is charged on its own and left
        out of this call's count, so every operation is charged once."""
        if module not in self.flops:
            raise ValueError(f"unknown module '{module}': expected one of {FLOP_MODULES}")
        call = ModuleCall(module, batch)
        if not self.active or batch < 1:
            yield call
            return
        cache_key = (module, key)
        parent = self._frames[-1] if self._frames else None
        mark = parent.counter.get_total_flops() if parent is not None and parent.counter is not None else 0
        frame = _Frame(None if cache_key in self.flops_per_sample else
                       FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS))
        self._frames.append(frame)
        try:
            if frame.counter is None:
                yield call
            else:
                with frame.counter:
                    yield call
                self.flops_per_sample[cache_key] = (frame.counter.get_total_flops() - frame.nested) / batch
        finally:
            self._frames.pop()
            if parent is not None and parent.counter is not None:  # it saw this call's operations too
                parent.nested += parent.counter.get_total_flops() - mark
        call.per_sample, call.charged = self.flops_per_sample[cache_key], True
        if self._recomputing:
            self.flops_recompute += call.flops
        else:
            self.flops[module] += call.flops
        if nfe_unit:
            self.flops_per_nfe = call.per_sample

    def _charge_backward_flops(self, call: ModuleCall) -> None:
        if self.active and call.charged:
            self.flops[call.module] += BACKWARD_FACTOR * call.flops

    def watch(self, out: torch.Tensor, call: ModuleCall) -> torch.Tensor:
        """Charge a backward through `call`'s module (2x its forward FLOPs) whenever gradient reaches `out`,
        the tensor the call produced (e.g. decoded images (B, 3, H, W), rewards (B,))."""
        if call.charged and out.requires_grad:
            out.register_hook(lambda g: (self._charge_backward_flops(call), g)[1])
        return out

    def watch_backward(self, out: torch.Tensor, call: ModuleCall | None = None) -> torch.Tensor:
        """Charge a backward through the denoiser output `out` (B, ...) when gradient reaches it: 2 NFE per
        sample, and 2x the forward FLOPs of `call`, the denoiser call that produced it, if given."""
        if self.active and out.requires_grad:
            batch = out.shape[0]

            def hook(g: torch.Tensor) -> torch.Tensor:
                self.charge_backward(batch)
                if call is not None:
                    self._charge_backward_flops(call)
                return g

            out.register_hook(hook)
        return out

    @contextmanager
    def recomputing(self):
        """Forwards run inside are redone only to save memory (a checkpointed step recomputed during backward,
        REBEL's memory_saving pass): charged to `nfe_recompute` and `flops_recompute`, which no count budget
        spends, instead of `nfe_forward` and `flops` (see the module docstring)."""
        self._recomputing += 1
        try:
            yield
        finally:
            self._recomputing -= 1

    @contextmanager
    def paused(self):
        """Work done inside (evaluation, perf's bare-compute replay) is not charged."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextmanager
    def timing(self):
        """Device time of training work; synchronises an accelerator so queued kernels are counted."""
        sync_device()
        t0 = self.clock()
        try:
            yield
        finally:
            sync_device()
            if self.active:
                self.seconds += self.clock() - t0

    # ---- reading --------------------------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        return self.nfe_forward + 2 * self.nfe_backward

    @property
    def flops_total(self) -> float:
        return sum(self.flops[m] for m in FLOP_MODULES)

    def fraction(self, budget: Budget) -> float:
        return budget.spent(self.counters()) / budget.amount

    def counters(self) -> dict:
        """Every counter, summable across processes. `nfe_eq` is rounded like `seconds` (and so round-trips)."""
        total = self.flops_total
        nfe_eq = round(total / self.flops_per_nfe, 4) if self.flops_per_nfe > 0 else 0.0
        return {"nfe": self.nfe, "nfe_forward": self.nfe_forward, "nfe_backward": self.nfe_backward,
                "nfe_recompute": self.nfe_recompute, "reward_calls": self.reward_calls, "images": self.images,
                "seconds": round(self.seconds, 4), "flops": total, **{f"flops_{m}": self.flops[m] for m in FLOP_MODULES},
                "flops_recompute": self.flops_recompute, "nfe_eq": nfe_eq}

    def load_counters(self, c: dict) -> None:
        """The inverse of `counters()`; dicts written before FLOPs (or recomputation) were counted load them as 0."""
        self.nfe_forward, self.nfe_backward = int(c["nfe_forward"]), int(c["nfe_backward"])
        self.nfe_recompute = int(c.get("nfe_recompute", 0))
        self.flops_recompute = float(c.get("flops_recompute", 0.0))
        self.reward_calls, self.images, self.seconds = int(c["reward_calls"]), int(c["images"]), float(c["seconds"])
        self.flops = {m: float(c.get(f"flops_{m}", 0.0)) for m in FLOP_MODULES}
        nfe_eq = float(c.get("nfe_eq", 0.0))
        self.flops_per_nfe = self.flops_total / nfe_eq if nfe_eq > 0 else 0.0


def sync_device() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
