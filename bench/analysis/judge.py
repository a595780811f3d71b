"""Judging regularisation the way reward-model overoptimisation is judged (Gao et al. 2022): pure functions of
one run's evaluation rows (numpy and pandas only — no torch, no matplotlib), shared by ``bench report`` and
``bench sweep``.

An evaluation frame holds the rows of one run's eval.jsonl (see bench/results/io.py), at least the columns
``fraction`` (0 is the base model), ``split``, ``metric``, ``value``, ``higher_is_better`` and, for
``hacking``, ``stderr``. Rows evaluated twice at one point (a resumed run) count with the row written last, as
in the report.

- ``hacking``: did the training reward go up while another metric went down by more than its noise?
- ``peak``: the best value a metric reached over the run, where, and at what KL from the base model.
- ``reported_split`` and ``selection_metric``: which split a suite reports and which metric it selects by.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

KL = "kl-to-base"
REL_TOL = 0.05
"""A metric without a standard error (a set metric such as FID or diversity, written with stderr 0) is flagged
when it got worse by more than this fraction of its base-model value: there is no noise estimate to scale by."""
REPORTED_SPLITS = ("test", "heldout", "validation")
"""In order of preference: protocol 2 reports "test"; protocol 1 folders only have "heldout"; sweep trials
evaluate "train" and "validation" only."""


def points(ev_run: pd.DataFrame, split: str) -> pd.DataFrame:
    """One run's rows on `split`, one per (fraction, metric) — the last written wins — sorted by fraction."""
    if ev_run.empty or not {"fraction", "split", "metric", "value"} <= set(ev_run.columns):
        return pd.DataFrame(columns=["fraction", "split", "metric", "value", "stderr", "higher_is_better"])
    ev = ev_run[ev_run["split"] == split].copy()
    ev["fraction"] = pd.to_numeric(ev["fraction"], errors="coerce").round(4)
    ev["value"] = pd.to_numeric(ev["value"], errors="coerce")
    ev = ev.dropna(subset=["fraction"]).drop_duplicates(["fraction", "metric"], keep="last")
    return ev.sort_values("fraction", kind="stable")


def _higher_is_better(rows: pd.DataFrame) -> bool:
    """The metric's direction as its rows state it (the last non-null); higher is better if none says."""
    known = rows["higher_is_better"].dropna() if "higher_is_better" in rows else pd.Series([], dtype=object)
    return bool(known.iloc[-1]) if len(known) else True


def _at(ev: pd.DataFrame, metric: str, fraction: float) -> tuple[float, float]:
    """(value, stderr) of `metric` at `fraction` in a frame from points(); NaN when absent; a missing stderr is 0."""
    row = ev[(ev["metric"] == metric) & (ev["fraction"] == fraction)]
    if row.empty:
        return math.nan, math.nan
    se = float(pd.to_numeric(row["stderr"], errors="coerce").iloc[-1]) if "stderr" in row else math.nan
    return float(row["value"].iloc[-1]), (se if np.isfinite(se) else 0.0)


def hacking(ev_run: pd.DataFrame, trained: str, split: str, z: float = 1.96, *,
            rel_tol: float = REL_TOL, optimised: Iterable[str] = ()) -> dict[str, bool]:
    """For every metric on `split` other than `trained`, the `optimised` ones (the terms of a weighted sum of
    rewards and the rewards inside z(...): bench.core.objective.trained_metrics; a term that falls while the sum
    rises is the trade-off the objective asked for, which the report's Pareto plot shows) and kl-to-base: True
    when the run's last evaluation
    point, compared with fraction 0 (the base model), has the training reward improved (in its direction, by
    any amount) AND that metric worse (in its own direction) by more than z·√(se₀² + se₁²).

    The two evaluations are treated as independent, which over-states the noise of a difference taken on the
    same prompts and the same noise (paired): the test is conservative. When neither point has a standard error
    (stderr 0 or missing: set metrics), the metric is flagged when worse by more than `rel_tol` · |base value|.
    A metric missing at either point, a run without a base-model evaluation or one evaluated only at fraction 0
    (nothing trained) gives False for every metric.
    """
    ev = points(ev_run, split)
    others = [m for m in dict.fromkeys(ev["metric"]) if m not in (trained, KL, *optimised)]
    flags = dict.fromkeys(others, False)
    if ev.empty or not (ev["fraction"] == 0).any():
        return flags
    last = float(ev["fraction"].max())
    if last == 0:
        return flags
    sign = lambda m: 1.0 if _higher_is_better(ev[ev["metric"] == m]) else -1.0  # noqa: E731
    (t0, _), (t1, _) = _at(ev, trained, 0.0), _at(ev, trained, last)
    if not (sign(trained) * (t1 - t0) > 0):  # also False when either is NaN
        return flags
    for m in others:
        (v0, se0), (v1, se1) = _at(ev, m, 0.0), _at(ev, m, last)
        worse = -sign(m) * (v1 - v0)
        se = math.hypot(se0, se1)
        threshold = z * se if se > 0 else rel_tol * abs(v0)
        flags[m] = bool(np.isfinite(worse) and np.isfinite(threshold) and worse > threshold)
    return flags


def peak(ev_run: pd.DataFrame, metric: str, split: str) -> dict:
    """The best value of `metric` (in its direction) over the run's evaluation points on `split`, the base
    model's (fraction 0) included: {"value", "fraction" where it occurred (the earliest on a tie), "kl" (the
    kl-to-base at that point, NaN if not evaluated there)}; all NaN when the metric has no finite value."""
    ev = points(ev_run, split)
    rows = ev[ev["metric"] == metric].dropna(subset=["value"])
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
    if rows.empty:
        return {"value": math.nan, "fraction": math.nan, "kl": math.nan}
    signed = rows["value"].to_numpy(dtype=float) * (1.0 if _higher_is_better(rows) else -1.0)
    best = rows.iloc[int(np.argmax(signed))]  # argmax takes the first maximum: the earliest fraction
    fraction = float(best["fraction"])
    return {"value": float(best["value"]), "fraction": fraction, "kl": _at(ev, KL, fraction)[0]}


def reported_split(splits: Iterable[str]) -> str | None:
    """The split a suite reports: "test" if present, else "heldout" (protocol 1), else "validation"; None if
    there is none of them (train prompts only)."""
    present = set(splits)
    return next((s for s in REPORTED_SPLITS if s in present), None)


def selection_metric(trained: str, available: Iterable[str], preferred: str | Iterable[str] | None = None,
                     optimised: Iterable[str] = ()) -> str | None:
    """The metric to select and early-stop by: `preferred` (the model's MODEL_DEFAULTS "select"; several: the first
    of them that qualifies) unless it is the training reward itself, one it optimises (`optimised`, see `hacking`)
    or was not evaluated, else the first available metric other than those and kl-to-base; None when there is
    none."""
    available = [m for m in available if m not in (trained, KL, *optimised)]
    for choice in [preferred] if isinstance(preferred, str) or preferred is None else list(preferred):
        if choice in available:
            return choice
    return available[0] if available else None
