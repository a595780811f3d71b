"""`bench claims`: the paper's three measurable claims, read from suite folders written by `bench run` and a
sweep folder written by `bench sweep` — whatever the data show.

C1 compute efficiency: for every method, the compute at which a run first reaches a gold threshold (the held-out
   metric nobody trains on, e.g. testbed-gold) and a proxy threshold (the training reward), between the two
   evaluation points that straddle it (the dense schedule puts points at 1, 2, 5, 10, 20, … % of the budget);
   the median over the seeds that reached it, their range (never beyond what was measured), and how many did.
   Thresholds are declared relative to the base model (fraction 0, the same for every run): gold at
   base × (1 + gold_gain), proxy at base × (1 + proxy_gain) (for a metric whose base is negative, base + |base|
   × gain). A run that never reaches it is censored: counted in "reached k/n", drawn as "never".
C4 sensitivity to hyperparameters: the selection score against the learning rate (the grid every method shares)
   for each setting of a method's own knobs, with the seeds' range, from the sweep's trials.csv.
C6 generalisation and overfitting: the training-prompt minus test-prompt gap of the gold and the proxy over
   compute (mean and CI over seeds at each evaluation point), and the gold-versus-√KL frontier with each
   method's peak (the evaluation point of highest mean gold).
The ranking: at each compute point of `budgets` (else at the end), every pair of systems compared on the gold's
   per-image scores, paired and Holm-corrected (bench/analysis/ranking.py): significant wins, losses and ties.

Outputs (OUT): claims.md (tables), gain_vs_compute.png (the one-glance figure), c1_compute.png,
c4_sensitivity.png, c6_gap.png, c6_frontier.png.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.table import mean_ci, pm
from bench.core.errors import BenchError


@dataclass
class ClaimsConfig:
    """What `bench claims` measures; every threshold is declared here, before looking at the data."""

    budgets: tuple[float, ...] = ()
    """Compute points (in the suites' compute unit) at which to tabulate every metric, e.g. (15000, 45000)."""
    gold: str = "testbed-gold"
    """The held-out metric standing in for human preference (never a training reward of the suite)."""
    gold_gain: float = 0.01
    """C1 gold threshold: base × (1 + gold_gain) — a 1% real gain by default."""
    proxy_gain: float = 0.5
    """C1 proxy threshold: base × (1 + proxy_gain) of the training reward — +50% by default."""
    split: str = "test"
    """Split of C1 and of the frontier (the reported one); C6's gap compares `train` with it."""


# ---- pure functions ----------------------------------------------------------------------------------------
def threshold(base: float, gain: float) -> float:
    """base raised by the fraction `gain` of its magnitude (works for negative bases too)."""
    return base + abs(base) * gain


def first_crossing(xs, ys, level: float, higher: bool = True) -> float:
    """The x at which the piecewise-linear curve (xs, ys) first reaches `level` (>= when higher, <= otherwise);
    NaN if it never does. xs ascending. A curve already at the level at its first point crosses there."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    sign = 1.0 if higher else -1.0
    d = sign * (ys - level)  # >= 0 once reached
    hit = np.flatnonzero(d >= 0)
    if len(hit) == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(xs[0])
    # linear interpolation between the last point below and the first at or above
    t = -d[i - 1] / (d[i] - d[i - 1])
    return float(xs[i - 1] + t * (xs[i] - xs[i - 1]))


def peak_point(curve: pd.DataFrame, metric: str) -> pd.Series:
    """The row of highest `metric` in a per-point mean curve (ties to the earliest)."""
    return curve.loc[curve[metric].idxmax()]


# ---- tables from a suite's evaluation rows ----------------------------------------------------------------
def metric_rows(ev: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    return ev[(ev["metric"] == metric) & (ev["split"] == split)]


def base_value(ev: pd.DataFrame, metric: str, split: str) -> float:
    """The base model's value (fraction 0): the same model, prompts and noise in every run."""
    rows = metric_rows(ev, metric, split)
    rows = rows[rows["fraction"] == 0]
    if rows.empty:
        raise BenchError(f"no base-model evaluation of {metric} on the {split} prompts")
    return float(rows["value"].mean())


def crossings(ev: pd.DataFrame, metric: str, split: str, level: float, xcol: str, higher: bool) -> pd.DataFrame:
    """Per run: the compute (xcol) at which `metric` first reaches `level`, NaN if never."""
    out = []
    for run_id, rows in metric_rows(ev, metric, split).groupby("run_id"):
        rows = rows.sort_values("fraction")
        out.append({"run_id": run_id, "method": rows["method"].iloc[0], "reward": rows["reward"].iloc[0],
                    "seed": rows["seed"].iloc[0], "x": first_crossing(rows[xcol], rows["value"], level, higher)})
    return pd.DataFrame(out)


def c1_table(ev: pd.DataFrame, metric: str, split: str, gain: float, xcol: str, higher: bool = True) -> pd.DataFrame:
    """C1 for one metric: per (method, reward) the median compute to threshold over the seeds that reached it,
    their min and max (both measured crossings: never past a run's last point), each seed's, and reached k/n."""
    level = threshold(base_value(ev, metric, split), gain)
    rows = []
    for (method, reward), g in crossings(ev, metric, split, level, xcol, higher).groupby(["method", "reward"],
                                                                                         sort=False):
        x = g["x"][np.isfinite(g["x"])]
        rows.append({"method": method, "reward": reward, "metric": metric, "threshold": level,
                     "median": float(x.median()) if len(x) else math.nan, "min": float(x.min()) if len(x) else math.nan,
                     "max": float(x.max()) if len(x) else math.nan, "seeds": list(x), "reached": len(x),
                     "runs": len(g)})
    return pd.DataFrame(rows)


def mean_curves(ev: pd.DataFrame, metrics: list[str], split: str, xcol: str) -> pd.DataFrame:
    """Per (method, reward, fraction): the mean over seeds of each metric and of the compute column."""
    rows = ev[(ev["split"] == split) & ev["metric"].isin(metrics)]
    wide = rows.pivot_table(index=["method", "reward", "seed", "fraction"], columns="metric", values="value")
    x = rows.groupby(["method", "reward", "seed", "fraction"])[xcol].first()
    wide = wide.join(x).reset_index()
    return wide.groupby(["method", "reward", "fraction"], sort=False).mean(numeric_only=True).reset_index()


def gap_curves(ev: pd.DataFrame, metric: str, split: str, xcol: str) -> pd.DataFrame:
    """C6: per (method, reward, fraction) the train − `split` gap of `metric`: mean, CI over seeds, compute."""
    keys = ["method", "reward", "seed", "fraction"]
    both = metric_rows(ev, metric, "train")[[*keys, "value", xcol]].merge(
        metric_rows(ev, metric, split)[[*keys, "value"]], on=keys, suffixes=("", "_test"))
    both["gap"] = both["value"] - both["value_test"]
    rows = []
    for (method, reward, fraction), g in both.groupby(["method", "reward", "fraction"], sort=False):
        mean, ci, n = mean_ci(g["gap"])
        rows.append({"method": method, "reward": reward, "fraction": fraction, "x": g[xcol].mean(), "gap": mean,
                     "ci": ci, "n": n})
    return pd.DataFrame(rows)


def frontier_peaks(ev: pd.DataFrame, gold: str, split: str, xcol: str) -> pd.DataFrame:
    """C6: per (method, reward) the peak of the mean gold curve, its √KL and compute, and the end of budget."""
    curves = mean_curves(ev, [gold, "kl-to-base"], split, xcol)
    base = base_value(ev, gold, split)
    rows = []
    for (method, reward), c in curves.groupby(["method", "reward"], sort=False):
        c = c.sort_values("fraction")
        top, last = peak_point(c, gold), c.iloc[-1]
        rows.append({"method": method, "reward": reward, "peak_gain": top[gold] - base,
                     "peak_sqrt_kl": math.sqrt(max(top["kl-to-base"], 0.0)), "peak_x": top[xcol],
                     "end_gain": last[gold] - base, "end_sqrt_kl": math.sqrt(max(last["kl-to-base"], 0.0))})
    return pd.DataFrame(rows)


def value_at(xs, ys, target: float, tolerance: float = 0.05) -> float:
    """The piecewise-linear curve (xs, ys) at x = target (xs ascending). A run's budget may end a little short
    of a round target (its last step stops at the budget): within `tolerance` × target past the last point the
    last value counts; further out, NaN."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(xs) == 0 or target < xs[0] or target > xs[-1] + tolerance * target:
        return math.nan
    return float(np.interp(target, xs, ys))


def at_compute(ev: pd.DataFrame, metrics: list[str], split: str, xcol: str, target: float,
               tolerance: float = 0.05) -> pd.DataFrame:
    """Per (method, reward): mean and 95% CI over seeds of each metric at exactly `target` compute, linearly
    interpolated between a run's evaluation points (as C1 is): methods whose steps cost different amounts are
    evaluated at different compute, so the nearest point would compare, e.g., DDPO at 15.8k with ROCM at 15.2k.
    A run that ends short of the target (beyond `value_at`'s tolerance) is left out: n says how many count."""
    rows = ev[(ev["split"] == split) & ev["metric"].isin(metrics)]
    out = []
    for (method, reward), g in rows.groupby(["method", "reward"], sort=False):
        row = {"method": method, "reward": reward}
        for m in metrics:
            vals = [value_at(c[xcol], c["value"], target, tolerance)
                    for _, c in g[g["metric"] == m].sort_values("fraction").groupby("seed")]
            mean, ci, n = mean_ci(pd.Series(vals, dtype=float))
            row |= {m: mean, f"{m} ci": ci, "n": max(row.get("n", 0), n)}
        out.append(row)
    return pd.DataFrame(out)


def c4_curves(trials: pd.DataFrame, budget: str | None = None) -> pd.DataFrame:
    """C4 from trials.csv: per trial its method, learning rate, the setting of its own knobs (the other values, as
    text; `centre` marks the setting the design holds them at), its score at `budget` (default: the run's length)
    and the range of its seeds' scores."""
    import json

    score_col = f"score@{budget}" if budget and f"score@{budget}" in trials else "score"
    seeds_col = f"seeds@{budget}" if budget and f"seeds@{budget}" in trials else None
    rows = []
    for t in trials.to_dict("records"):
        values = json.loads(t["values"]) if str(t["values"]).startswith("{") else _pairs(str(t["values"]))
        if "lr" not in values:
            continue
        seeds = [v for v in json.loads(t[seeds_col] or "{}").values() if v is not None] if seeds_col else []
        score = pd.to_numeric(pd.Series([t[score_col]]), errors="coerce").iloc[0]
        own = {k: v for k, v in values.items() if k != "lr"}
        rows.append({"method": t["method"], "reward": t["reward"], "lr": float(values["lr"]),
                     "setting": " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in sorted(own.items())), "own": own,
                     "score": score, "low": min(seeds, default=score), "high": max(seeds, default=score)})
    curves = pd.DataFrame(rows)
    if curves.empty:
        return curves
    # the centre setting: the most frequent one of a method (the design repeats it at every learning rate)
    centre = curves.groupby("method")["setting"].agg(lambda s: s.value_counts().index[0])
    curves["centre"] = curves["setting"] == curves["method"].map(centre)
    return curves[np.isfinite(curves["score"])]


def _pairs(text: str) -> dict:
    """"lr=0.001 beta=3" (trials.csv of sweeps before the protocol) -> {"lr": 0.001, "beta": 3.0}."""
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def gain_curves(runs: pd.DataFrame, ev: pd.DataFrame, gold: str, split: str, xcol: str) -> pd.DataFrame:
    """Per (method, reward, fraction): the gold gain over the base model and its 95% interval — over seeds, prompts
    and images from the per-image scores where the runs have them (bench/analysis/stats.py), else over seeds."""
    from bench.analysis.stats import estimate
    from bench.results.scores import read_scores

    base = base_value(ev, gold, split)
    rows = []
    for (method, reward), g in runs.groupby(["method", "reward"], sort=False):
        per = {r.seed: {round(f, 4): e["scores"][split][gold] for e in read_scores(r.dir)
                        if gold in e["scores"].get(split, {}) for f in e["fractions"]} for r in g.itertuples()}
        mine = metric_rows(ev, gold, split)
        mine = mine[(mine["method"] == method) & (mine["reward"] == reward)]
        for fraction, at in mine.groupby("fraction"):
            arrays = [per[s].get(round(fraction, 4)) for s in at["seed"]]
            if all(a is not None for a in arrays) and arrays:
                ci = estimate(np.stack(arrays)).half_width
            else:
                ci = mean_ci(at["value"])[1]
            rows.append({"method": method, "reward": reward, "fraction": fraction, "x": at[xcol].mean(),
                         "gain": at["value"].mean() - base, "ci": ci if math.isfinite(ci) else 0.0})
    return pd.DataFrame(rows)


# ---- outputs -----------------------------------------------------------------------------------------------
def load_suites(folders: list[Path], notes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Every evaluation row of the folders' finished runs together (runs told apart by method, reward and seed) and
    the compute axis they share (bench.analysis.report.x_column). A run without summary.json (still running, or stopped)
    is left out, with a line in `notes`: a claim compares whole runs."""
    from bench.analysis.report import load_suite, x_column

    runs, evs = [], []
    for folder in folders:
        r, e, _ = load_suite(Path(folder))
        unfinished = sorted(r.loc[~r["complete"], "run_id"])
        if unfinished and notes is not None:
            notes.append(f"left out {len(unfinished)} unfinished run(s) of {folder}: {', '.join(unfinished)}")
        r, e = r[r["complete"]], e[~e["run_id"].isin(unfinished)].copy()
        if r.empty:
            raise BenchError(f"no finished run in {folder}: nothing to claim yet")
        e["run_id"] = str(folder) + "/" + e["run_id"]  # the same method, reward and seed may be in two folders
        runs.append(r.assign(run_id=str(folder) + "/" + r["run_id"]))
        evs.append(e)
    runs_all, ev = pd.concat(runs), pd.concat(evs)
    dup = ev.drop_duplicates(["run_id"]).duplicated(["method", "reward", "seed"])
    if dup.any():
        raise BenchError("the same (method, reward, seed) is in two of the folders; give each run once")
    return ev, runs_all, x_column(runs_all, ev)


def read_trials(sweep_dir: Path) -> pd.DataFrame:
    path = Path(sweep_dir) / "trials.csv"
    if not path.exists():
        raise BenchError(f"no trials.csv in {sweep_dir}: is it a finished `bench sweep` folder?")
    return pd.read_csv(path)


def markdown(df: pd.DataFrame, columns: dict[str, str], digits: int = 4) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "—" if not math.isfinite(v) else f"{v:.{digits}g}"
        return str(v)
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for _, row in df.iterrows()]
    return "\n".join(lines)


def sweep_base(sweep: Path, metric: str) -> float:
    """The base model's `metric` on the validation prompts: fraction 0 of the sweep's trial runs (the same model,
    prompts and noise in every one)."""
    from bench.results.io import read_jsonl

    # every trial run starts from the same base evaluation: a few files give it, the others only repeat it
    values = [r["value"] for f in sorted(Path(sweep).glob("trials/*/*/runs/*/eval.jsonl"))[:4]
              for r in read_jsonl(f) if r.get("fraction") == 0 and r.get("split") == "validation"
              and r.get("metric") == metric]
    return float(np.mean(values)) if values else math.nan


def ranking_section(runs: pd.DataFrame, ev: pd.DataFrame, cfg: ClaimsConfig, xcol: str) -> list[str]:
    """The significant wins of every system on the gold at each compute point of cfg.budgets (else at the end)."""
    from bench.analysis.ranking import detectable, ranking, system_scores

    runs = runs.assign(run_dir=runs["dir"].astype(str))
    # the compute points are in the suites' unit; a run's per-image scores know their budget in its own
    targets = list(cfg.budgets) if cfg.budgets and set(runs["budget_kind"]) == {xcol} else [None]
    text = []
    for target in targets:
        scores = system_scores(runs, cfg.split, cfg.gold, target)
        if len(scores) < 2:
            continue
        table, comps = ranking(scores, higher=True)
        where = f"at {target:g} {xcol}" if target is not None else "at the end of each run"
        text += [f"## Ranking {where}: {cfg.gold}, {cfg.split} prompts, paired and Holm-corrected\n",
                 f"{len(comps)} comparisons of {len(scores)} systems over {table['seeds'].min()} common seeds; "
                 f"a win is a difference whose corrected p < 0.05, anything else a tie. Minimum detectable "
                 f"difference at this many seeds, prompts and images: {detectable(comps):.4g}.\n",
                 markdown(table.assign(value=[pm(m, c) for m, c in zip(table["mean"], table["ci"])]), {
                     "system": "method@trained on", "value": f"{cfg.gold} (95% CI: seeds, prompts, images)",
                     "wins": "wins", "ties": "ties", "losses": "losses", "better than": "significantly better than",
                     "ties with": "ties with"}), ""]
    return text


def write_text(out: Path, text: list[str], written: list[Path]) -> list[Path]:
    """claims.md from its lines, atomically; returns it first, then the plots already written."""
    from bench.results.io import write_bytes_atomic

    write_bytes_atomic(out / "claims.md", ("\n".join(text) + "\n").encode())
    return [out / "claims.md", *written]


def write_claims(suites: list[Path], out: Path, cfg: ClaimsConfig, ceiling: list[Path] = (),
                 sweep: Path | None = None) -> list[Path]:
    """The ranking, C1, C4 (when a sweep folder is given) and C6 into `out`; returns the files written."""
    from bench.analysis import claims_plots as figures
    from bench.analysis.plots import save_fig
    from bench.results.io import writable_folder

    writable_folder(out)
    if not [*suites, *ceiling]:  # a sweep alone: C4 only
        if sweep is None:
            raise BenchError("give suite folders, a --sweep folder, or both")
        text, png = c4_section(sweep, out, cfg)
        return write_text(out, ["# Claims (bench claims)\n", *text], [png])
    notes: list[str] = []
    ev, runs, xcol = load_suites([*suites, *ceiling], notes)
    if cfg.gold not in set(ev["metric"]):
        raise BenchError(f"metric '{cfg.gold}' was not evaluated in these suites (--gold)")
    proxies = sorted(set(ev["reward"]) - {cfg.gold})
    c1 = [c1_table(ev, cfg.gold, cfg.split, cfg.gold_gain, xcol)]
    c1 += [c1_table(ev[ev["reward"] == p], p, cfg.split, cfg.proxy_gain, xcol) for p in proxies]
    trained = ev[ev["reward"] != cfg.gold]
    gaps = {m: gap_curves(trained, m, cfg.split, xcol) for m in [cfg.gold, *proxies]}
    peaks = frontier_peaks(ev, cfg.gold, cfg.split, xcol)
    base = base_value(ev, cfg.gold, cfg.split)
    text = [f"# Claims (bench claims)\n\nCompute axis: {figures.unit(xcol)} ({xcol}). Split: {cfg.split}. Base model "
            f"(fraction 0): {cfg.gold} {base:.4g}.\n", *(f"Note: {n}.\n" for n in notes)]
    text += ranking_section(runs, ev, cfg, xcol)
    for t in c1:
        shown = t.assign(range=[f"{a:.4g} – {b:.4g}" if k else "never" for a, b, k in
                                zip(t["min"], t["max"], t["reached"])])
        text += [f"## C1: compute to first reach {t['metric'].iloc[0]} >= {t['threshold'].iloc[0]:.4g}\n",
                 markdown(shown, {"method": "method", "reward": "trained on", "median": f"median {xcol}",
                                  "range": "seeds' range (measured crossings)", "reached": "seeds reached",
                                  "runs": "runs"}), ""]
    metrics = [m for m in dict.fromkeys([cfg.gold, *proxies, *sorted(set(ev["metric"]))]) if m in set(ev["metric"])]
    for target in cfg.budgets:
        t = at_compute(ev, metrics, cfg.split, xcol, target)
        t = t.assign(**{m: [pm(v, c) for v, c in zip(t[m], t[f"{m} ci"])] for m in metrics})
        text += [f"## Every metric at {target:g} {xcol} (mean ± 95% CI over seeds, {cfg.split} prompts)\n",
                 markdown(t, {"method": "method", "reward": "trained on", **{m: m for m in metrics}, "n": "seeds"}),
                 ""]
    text += ["## C6: gold-versus-√KL peaks\n", markdown(peaks, {
        "method": "method", "reward": "trained on", "peak_gain": f"peak {cfg.gold} gain", "peak_sqrt_kl": "√KL at peak",
        "peak_x": f"{xcol} at peak", "end_gain": "end gain", "end_sqrt_kl": "√KL at end"}), ""]
    for metric, g in gaps.items():
        # the base model's own gap (fraction 0: the same images in every run) is what training adds to
        last = g.sort_values("fraction").groupby(["method", "reward"], sort=False).tail(1)
        last = last.merge(g[g["fraction"] == 0][["method", "reward", "gap"]].rename(columns={"gap": "base_gap"}),
                          on=["method", "reward"], how="left")
        text += [f"## C6: train − {cfg.split} gap of {metric} at the end of budget\n",
                 markdown(last, {"method": "method", "reward": "trained on", "x": xcol, "gap": "gap",
                                 "ci": "95% CI ±", "base_gap": "base model's gap", "n": "seeds"}), ""]
    written = [save_fig(figures.plot_gain(gain_curves(runs, ev, cfg.gold, cfg.split, xcol), cfg.gold, cfg.split,
                                          xcol), out / "gain_vs_compute.png"),
               save_fig(figures.plot_c1(c1, xcol, cfg.gold, cfg.split), out / "c1_compute.png"),
               save_fig(figures.plot_gap(gaps, xcol), out / "c6_gap.png"),
               save_fig(figures.plot_frontier(mean_curves(ev, [cfg.gold, "kl-to-base"], cfg.split, xcol), peaks,
                                              cfg.gold, cfg.split, base), out / "c6_frontier.png")]
    if sweep is not None:
        c4_text, png = c4_section(sweep, out, cfg)
        text, written = [*text, *c4_text], [png, *written]
    return write_text(out, text, written)


def c4_section(sweep: Path, out: Path, cfg: ClaimsConfig) -> tuple[list[str], Path]:
    """C4 from a sweep folder's trials.csv: its lines of claims.md, and c4_sensitivity.png (written)."""
    from bench.analysis.claims_plots import plot_c4
    from bench.analysis.plots import save_fig
    from bench.results.io import read_json

    trials = read_trials(sweep)
    settings = read_json(Path(sweep) / "sweep.json") if (Path(sweep) / "sweep.json").exists() else {}
    metric = next(iter((settings.get("select") or {}).values()), cfg.gold)
    curves = c4_curves(trials)
    base = sweep_base(sweep, metric)
    if curves.empty:
        return ["## C4: no trial with a learning rate in trials.csv\n"], save_fig(plot_c4(curves, metric, base),
                                                                                out / "c4_sensitivity.png")
    spread = curves.groupby("method", sort=False)["score"].agg(["count", "min", "median", "max"]).reset_index()
    best_lr = curves.loc[curves.groupby("method", sort=False)["score"].idxmax(), ["method", "lr"]]
    spread = spread.merge(best_lr.rename(columns={"lr": "best lr"}), on="method")
    text = ["## C4: sensitivity to the learning rate and each method's own knobs\n",
            f"Selection score: {metric} on the validation prompts; base model {base:.4g}. Every method was tried on "
            f"the same learning rates (c4_sensitivity.png: a curve per setting of its own knobs).\n",
            markdown(spread, {"method": "method", "count": "trials", "min": "min", "median": "median",
                              "max": "max", "best lr": "best learning rate"}), ""]
    return text, save_fig(plot_c4(curves, metric, base), out / "c4_sensitivity.png")
