"""Compute accounting: budgets and the meter that every denoiser call and reward call is charged to.

The mission compares methods at a matched compute budget (METHODS.md §5). A budget is either device time of
training work ("30s", "1.5h": the GPU-hours of the mission, CPU-hours here) or a count of denoiser
evaluations ("2000nfe": deterministic, what CI uses). NFE are counted **per sample**: one UNet forward on a
batch of 8 costs 8; a backward through it costs 2 per sample (a backward is about twice a forward).

The meter is charged where the work happens — ``Policy.consistency`` charges forwards and hooks the output
tensor to charge its backward, rewards charge ``reward_calls`` — so no method can forget or fake its spending.
Evaluation runs inside ``meter.paused()`` and is not charged.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bench.errors import BenchError

_UNITS = {"nfe": ("nfe", 1.0), "s": ("seconds", 1.0), "sec": ("seconds", 1.0), "m": ("seconds", 60.0),
          "min": ("seconds", 60.0), "h": ("seconds", 3600.0)}


@dataclass(frozen=True)
class Budget:
    """How much training compute a run may spend."""

    kind: str  # "nfe" (denoiser evaluations per sample, backward = 2) or "seconds" (device time of training work)
    amount: float  # in units of `kind`
    text: str  # as the user wrote it, e.g. "2000nfe", "1.5h"

    @staticmethod
    def parse(text: str) -> "Budget":
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]+)\s*", text.lower())
        if not m or m.group(2) not in _UNITS:
            raise BenchError(f"bad budget '{text}': expected a number with a unit, e.g. 2000nfe, 30s, 10m, 1.5h")
        kind, scale = _UNITS[m.group(2)]
        amount = float(m.group(1)) * scale
        if amount <= 0:
            raise BenchError(f"bad budget '{text}': must be positive")
        return Budget(kind=kind, amount=amount, text=text.strip())

    def spent(self, counters: dict) -> float:
        """How much of this budget's unit the counters (ComputeMeter.counters()) have spent."""
        return float(counters["nfe"]) if self.kind == "nfe" else float(counters["seconds"])

    def as_dict(self) -> dict:
        return {"kind": self.kind, "amount": self.amount, "text": self.text}


class ComputeMeter:
    """Counts what training spends. `seconds` is only advanced inside `timing()` (the runner wraps each
    training step in it), so evaluation and I/O between steps are never charged."""

    def __init__(self) -> None:
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.reward_calls = 0
        self.images = 0
        self.seconds = 0.0
        self._paused = 0

    # ---- charging -------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._paused == 0

    def charge_forward(self, batch: int) -> None:
        if self.active:
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

    def watch_backward(self, out: torch.Tensor) -> torch.Tensor:
        """Charge a backward through the denoiser output `out` (B, ...) when gradient reaches it."""
        if self.active and out.requires_grad:
            batch = out.shape[0]
            out.register_hook(lambda g: (self.charge_backward(batch), g)[1])
        return out

    @contextmanager
    def paused(self):
        """Work done inside (evaluation, perf's bare-compute reference) is not charged."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextmanager
    def timing(self):
        """Device time of training work; synchronises an accelerator so queued kernels are counted."""
        _sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            if self.active:
                self.seconds += time.perf_counter() - t0

    # ---- reading --------------------------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        return self.nfe_forward + 2 * self.nfe_backward

    def fraction(self, budget: Budget) -> float:
        return budget.spent(self.counters()) / budget.amount

    def counters(self) -> dict:
        return {"nfe": self.nfe, "nfe_forward": self.nfe_forward, "nfe_backward": self.nfe_backward,
                "reward_calls": self.reward_calls, "images": self.images, "seconds": round(self.seconds, 4)}

    def load_counters(self, c: dict) -> None:
        self.nfe_forward, self.nfe_backward = int(c["nfe_forward"]), int(c["nfe_backward"])
        self.reward_calls, self.images, self.seconds = int(c["reward_calls"]), int(c["images"]), float(c["seconds"])


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
