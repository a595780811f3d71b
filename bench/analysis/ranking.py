"""Which method is better than which, at the strength the data allow: paired comparisons of every pair of systems
(method, training reward) on the per-image scores of one metric at one compute point, Holm-corrected over all
pairs (bench/analysis/stats.py), tabulated as significant wins, losses and ties; with each system's mean and interval
over every source of noise and the minimum detectable difference of the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis import stats
from bench.results.io import read_json
from bench.results.scores import at_fraction, read_scores


def scores_at(run_dir: Path, split: str, metric: str, target: float | None, tolerance: float = 0.05) -> np.ndarray | None:
    """A run's (prompts, images) scores of `metric` on `split` at compute `target` (in the run's budget unit; None:
    its last evaluation), the evaluation nearest to it within `tolerance` × target; None where there is none."""
    entries = [e for e in read_scores(run_dir) if metric in e["scores"].get(split, {})]
    if not entries:
        return None
    if target is None:
        return entries[-1]["scores"][split][metric]
    amount = float(read_json(Path(run_dir) / "config.json")["budget"]["amount"])
    x = [e["budget_used"] * amount for e in entries]
    i = int(np.argmin([abs(v - target) for v in x]))
    return entries[i]["scores"][split][metric] if abs(x[i] - target) <= tolerance * target else None


def per_seed(runs: pd.DataFrame, split: str, metric: str, target: float | None) -> dict[str, dict[int, np.ndarray]]:
    """{system: {seed: (prompts, images) scores}} of the runs (run_dir, method, reward, seed) that have them."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for r in runs.itertuples():
        x = scores_at(Path(r.run_dir), split, metric, target)
        if x is not None:
            out.setdefault(system(r.method, r.reward), {})[int(r.seed)] = x
    return out


def paired(per: dict[str, dict[int, np.ndarray]]) -> dict[str, np.ndarray]:
    """{system: x[seed, prompt, image]} over the seeds every system has (pairing needs the same seeds)."""
    if not per:
        return {}
    common = sorted(set.intersection(*(set(v) for v in per.values())))
    return {k: np.stack([v[s] for s in common]) for k, v in per.items()} if common else {}


def system_scores(runs: pd.DataFrame, split: str, metric: str, target: float | None) -> dict[str, np.ndarray]:
    """paired(per_seed(...)): every system's scores over the common seeds."""
    return paired(per_seed(runs, split, metric, target))


def system(method: str, reward: str) -> str:
    return f"{method}@{reward}"


def ranking(scores: dict[str, np.ndarray], higher: bool, alpha: float = stats.ALPHA) -> tuple[pd.DataFrame, list]:
    """(one row per system: mean, interval, significant wins / losses / ties, sorted by mean; the comparisons)."""
    comps = stats.pairwise(scores, alpha)
    rows = []
    for name, x in scores.items():
        e = stats.estimate(x)
        won, lost, tied = [], [], []
        for c in comps:
            if name not in (c.a, c.b):
                continue
            other, diff = (c.b, c.diff) if c.a == name else (c.a, -c.diff)
            (tied if not c.significant else won if (diff > 0) == higher else lost).append(other)
        rows.append({"system": name, "mean": e.mean, "ci": e.half_width, "seeds": x.shape[0],
                     "wins": len(won), "losses": len(lost), "ties": len(tied),
                     "better than": ", ".join(sorted(won)), "ties with": ", ".join(sorted(tied))})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("mean", ascending=not higher).reset_index(drop=True)
    return table, comps


def detectable(comps: list) -> float:
    """The table's minimum detectable difference: the median over its comparisons, each at Holm's first step."""
    if not comps:
        return math.nan
    return float(np.median([stats.minimum_detectable(c.difference, len(comps)) for c in comps]))


def final_scores(runs: pd.DataFrame, ev: pd.DataFrame, metric: str,
                 split: str) -> tuple[dict[str, dict[int, np.ndarray]], str]:
    """({system: {seed: (prompts, images)}} at each run's last evaluation, what an interval is over). Per-image scores
    where every run has them; otherwise (set metrics such as FID, or folders written before they were kept) each
    run's value as a (1, 1) array, so that the same scheme runs over seeds alone."""
    rows = ev[(ev["metric"] == metric) & (ev["split"] == split)]
    last = rows.loc[rows.groupby("run_id")["fraction"].idxmax()] if not rows.empty else rows
    # the scores of the evaluation eval.jsonl ends with: a run killed between writing its scores and its eval row
    # (or whose later rows were lost) is reported where its table row says it stopped
    stop = dict(zip(last["run_id"], last["fraction"]))
    per: dict[str, dict[int, np.ndarray]] = {}
    for r in runs.itertuples():
        entry = at_fraction(read_scores(Path(r.dir)), stop[r.run_id]) if r.run_id in stop else None
        if entry is not None and metric in entry["scores"].get(split, {}):
            per.setdefault(system(r.method, r.reward), {})[int(r.seed)] = entry["scores"][split][metric]
    if per and sum(len(v) for v in per.values()) == len(runs):
        return per, "seeds, prompts, images"
    out: dict[str, dict[int, np.ndarray]] = {}
    for r in last.itertuples():
        if math.isfinite(r.value):
            out.setdefault(system(r.method, r.reward), {})[int(r.seed)] = np.array([[float(r.value)]])
    return out, "seeds"
