"""The trial design of the tuning protocol (docs/protocol.md §4): the same chance for every method, by construction.

- **The learning rate**, the knob every method shares, is searched on one grid for all of them: LR_GRID, from the
  shared range of `TrainConfig.KNOBS["lr"]` in half-decades (`--lr-points` thins it uniformly).
- **Each method's own knobs** are crossed with it in a one-factor-at-a-time design around the centre of their
  ranges: the centre point, then each knob in turn at its low and high level with the others at the centre. A
  numeric knob's levels sit at 1/6, 1/2 and 5/6 of its (log) range; a knob with at most three choices takes every
  one; one with more takes its first, middle and last. So the trial budget grows with the number of knobs by
  rule — len(LR_GRID) x (1 + sum over own knobs of (levels - 1)) — never by a per-method decision.
- **Edges are widened before a selection is final**: where the selected value of a knob is the lowest or highest
  value tried, one more trial goes one step further out (the learning rate by its grid spacing; a numeric own knob
  by its level spacing), the other values held at the selection's; this repeats at most WIDEN_ROUNDS times. A
  choice knob cannot go beyond its choices, nor an integer knob beyond its range (a count such as DRaFT-K's K in
  1 … N-1, whose every value outside is another method or an alias): its edge is flagged "exhausted" instead, as
  is a value a method's config refuses. Continuous ranges are the authors' usual values, not limits, so they widen.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench.core.method imports torch; the sweep's planning stays light
    from bench.core.method import Knob

LR_RANGE = (1e-4, 1e-2)  # TrainConfig.KNOBS["lr"]: every method's
LR_LIMITS = (1e-6, 1.0)  # how far widening may take the learning rate
WIDEN_ROUNDS = 2
LEVEL_QUANTILES = (1 / 6, 1 / 2, 5 / 6)


def lr_grid(points: int = 5) -> list[float]:
    """`points` learning rates log-spaced over LR_RANGE, ends included (5: half-decades 1e-4 … 1e-2)."""
    if points < 2:
        raise ValueError(f"the learning-rate grid needs >= 2 points, got {points}")
    lo, hi = (math.log10(x) for x in LR_RANGE)
    return [float(f"{10 ** (lo + (hi - lo) * i / (points - 1)):.6g}") for i in range(points)]


def levels(knob: Knob) -> list:
    """The values an own knob takes in the design: low, centre, high (see the module doc)."""
    if knob.choices:
        c = list(knob.choices)
        return c if len(c) <= 3 else [c[0], c[len(c) // 2], c[-1]]
    lo, hi = (math.log(knob.low), math.log(knob.high)) if knob.log else (knob.low, knob.high)
    values = [lo + (hi - lo) * q for q in LEVEL_QUANTILES]
    values = [math.exp(v) for v in values] if knob.log else values
    if knob.integer:
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.6g}") for v in values]


def centre(values: list) -> Any:
    return values[len(values) // 2]


def design(knobs: dict[str, Knob], lr_points: int = 5) -> list[dict[str, Any]]:
    """Every trial of the design, lr-major: for each learning rate, the centre point, then each own knob at its
    other levels. `knobs` is a method's free knobs (lr among them unless fixed by --set)."""
    own = {name: levels(k) for name, k in knobs.items() if name != "lr"}
    middle = {name: centre(v) for name, v in own.items()}
    points = [dict(middle)]
    for name, values in own.items():
        points += [{**middle, name: v} for v in values if v != middle[name]]
    rates = lr_grid(lr_points) if "lr" in knobs else [None]
    return [({"lr": lr} if lr is not None else {}) | p for lr in rates for p in points]


def step_out(name: str, knob: Knob | None, tried: list, value: Any) -> Any | None:
    """The next value beyond `value`, an end of the values `tried` for knob `name`, or None where none exists
    (a choice knob's last choice, a limit)."""
    tried = sorted(set(tried))
    if len(tried) < 2 or value not in (tried[0], tried[-1]):
        return None
    outward = 1 if value == tried[-1] else -1
    if name == "lr" or (knob is not None and knob.log and not knob.choices):
        ratio = tried[1] / tried[0] if outward < 0 else tried[-1] / tried[-2]
        new = value * ratio ** outward
        if name == "lr" and not LR_LIMITS[0] <= new <= LR_LIMITS[1]:
            return None
        if knob is not None and knob.integer:
            new = int(round(new))
            return new if knob.low <= new <= knob.high else None  # an integer range is the knob's domain
        return float(f"{new:.6g}")
    if knob is None or knob.choices:
        return None
    gap = tried[1] - tried[0] if outward < 0 else tried[-1] - tried[-2]
    new = value + outward * gap
    if knob.integer:
        # a count's range is its domain, not a guess: DRaFT-K's K past 1 … N-1 is another method or an alias
        new = int(round(new))
        return new if knob.low <= new <= knob.high else None
    return float(f"{new:.6g}")


def edges(selection: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, str]:
    """{knob: "low" | "high"} for every knob whose selected value is an end of the values tried for it (with at
    least two values tried)."""
    out = {}
    for name, value in selection.items():
        tried = sorted({t[name] for t in trials if name in t}, key=float)
        if len(tried) >= 2 and value in (tried[0], tried[-1]):
            out[name] = "low" if value == tried[0] else "high"
    return out
