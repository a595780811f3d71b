"""The shared rules of configuration checks: one function per rule, each raising a one-line `BenchError`.

Every config field of the suite and of every method is checked before the first run starts
(bench/run/config.py `validate`, which calls each method config's `validate`): a bad `--set` never costs the
budget of the runs before it. `subject` names what is checked as the user would address it, e.g.
"ddpo: train_batch_size" or "eval.points"; NaN and ±inf fail every numeric rule (no setting means "unbounded"
by an infinite value: a rule that wants "off" takes 0 and says so).
"""

from __future__ import annotations

import math

from bench.core.errors import BenchError, unknown_name


def finite(subject: str, value: float) -> None:
    """value is a finite number (not NaN, not ±inf)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise BenchError(f"{subject} must be a finite number, got {value}")


def at_least(subject: str, value: float, low: float) -> None:
    """value >= low (e.g. a count that may be 0, or a weight that may not be negative), and finite."""
    finite(subject, value)
    if not value >= low:
        raise BenchError(f"{subject} must be >= {low}, got {value}")


def positive(subject: str, value: float) -> None:
    """value > 0 (a learning rate, a scale, a size that cannot be 0), and finite."""
    finite(subject, value)
    if not value > 0:
        raise BenchError(f"{subject} must be > 0, got {value}")


def in_range(subject: str, value: float, low: float, high: float, open_low: bool = False) -> None:
    """low <= value <= high, or low < value <= high with `open_low` (a fraction in (0, 1])."""
    finite(subject, value)
    if not ((value > low if open_low else value >= low) and value <= high):
        raise BenchError(f"{subject} must be in {'(' if open_low else '['}{low}, {high}], got {value}")


def multiple_of(name: str, field: str, value: int, divisor_field: str, divisor: int) -> None:
    """`name`'s field is a multiple of its divisor_field, which must be >= 1 (a batch split into minibatches)."""
    at_least(f"{name}: {divisor_field}", divisor, 1)
    if value % divisor:
        raise BenchError(f"{name}: {field} ({value}) must be a multiple of {divisor_field} ({divisor})")


def stat_counts(name: str, min_count: int, buffer: int) -> None:
    """A per-prompt statistics tracker's 1 <= stat_min_count <= stat_buffer (DDPO, REBEL): a minimum count above
    the buffer would never use per-prompt statistics."""
    if not 1 <= min_count <= buffer:
        raise BenchError(f"{name}: need 1 <= stat_min_count ({min_count}) <= stat_buffer ({buffer}); a "
                         f"stat_min_count above stat_buffer would never use per-prompt statistics")


def one_of(kind: str, value: str, choices) -> None:
    """value is one of `choices` (a divergence, a mode): otherwise "unknown KIND 'x'; did you mean 'y'?"."""
    if value not in choices:
        raise unknown_name(kind, value, list(choices))


def require_differentiable(method: str, reward: str, differentiable: bool, terms: tuple[str, ...] = ()) -> None:
    """First-order methods back-propagate through the reward: refuse a non-differentiable one up front. `terms`:
    the terms of a reward expression that are not differentiable (bench/core/combine.py), named in the error."""
    if not differentiable:
        which = f" (its term {', '.join(terms)} is not)" if terms else ""
        raise BenchError(f"method '{method}' back-propagates through the reward, but reward '{reward}' is not "
                         f"differentiable{which}; use a differentiable reward or a policy-gradient method "
                         f"(ddpo, d3po)")
