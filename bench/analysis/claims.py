"""`bench claims`: the paper's three measurable claims, read from suite folders written by `bench run` and a
sweep folder written by `bench sweep` — whatever the data show.

C1 compute efficiency: for every method, the compute at which a run first reaches a gold threshold (the held-out
   metric nobody trains on, e.g. testbed-gold) and a proxy threshold (the training reward), linearly
   interpolated between evaluation points; mean and 95% CI over the seeds that reached it, and how many did.
   Thresholds are declared relative to the base model (fraction 0, the same for every run): gold at
   base × (1 + gold_gain), proxy at base × (1 + proxy_gain) (for a metric whose base is negative, base + |base|
   × gain). A run that never reaches it is censored: counted in "reached k/n", not in the mean.
C4 sensitivity to hyperparameters: the spread of the selection score over a method's sweep trials (min, median,
   max, max − min); every method had the same number of trials on the validation prompts.
C6 generalisation and overfitting: the training-prompt minus test-prompt gap of the gold and the proxy over
   compute (mean and CI over seeds at each evaluation point), and the gold-versus-√KL frontier with each
   method's peak (the evaluation point of highest mean gold).

Outputs (OUT): claims.md (tables), c1_compute.png, c4_sensitivity.png, c6_gap.png, c6_frontier.png.
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
    """C1 for one metric: per (method, reward) the mean and CI of the compute to threshold, and reached k/n."""
    level = threshold(base_value(ev, metric, split), gain)
    rows = []
    for (method, reward), g in crossings(ev, metric, split, level, xcol, higher).groupby(["method", "reward"],
                                                                                         sort=False):
        mean, ci, k = mean_ci(g["x"])
        rows.append({"method": method, "reward": reward, "metric": metric, "threshold": level, "mean": mean,
                     "ci": ci, "reached": k, "runs": len(g)})
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


def sensitivity(trials: pd.DataFrame) -> pd.DataFrame:
    """C4: per (method, reward) the spread of the finite selection scores over the sweep's trials."""
    rows = []
    for (method, reward), g in trials.groupby(["method", "reward"], sort=False):
        s = pd.to_numeric(g["score"], errors="coerce")
        s = s[np.isfinite(s)]
        rows.append({"method": method, "reward": reward, "trials": len(g), "finite": len(s),
                     "min": s.min(), "median": s.median(), "max": s.max(), "spread": s.max() - s.min()})
    return pd.DataFrame(rows)


# ---- outputs -----------------------------------------------------------------------------------------------
def load_suites(folders: list[Path], notes: list[str] | None = None) -> tuple[pd.DataFrame, str]:
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
        runs.append(r)
        evs.append(e)
    runs_all, ev = pd.concat(runs), pd.concat(evs)
    dup = ev.drop_duplicates(["run_id"]).duplicated(["method", "reward", "seed"])
    if dup.any():
        raise BenchError("the same (method, reward, seed) is in two of the folders; give each run once")
    return ev, x_column(runs_all, ev)


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


def _label(method: str, reward: str, gold: str) -> str:
    return f"{method} (on {gold})" if reward == gold else method


def plot_c1(tables: list[pd.DataFrame], xcol: str, cfg: ClaimsConfig):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 0.35 * max(map(len, tables)) + 1.5),
                             squeeze=False)
    for ax, t in zip(axes[0], tables):
        labels = [_label(m, r, cfg.gold) + f"  {k}/{n}" for m, r, k, n in
                  zip(t["method"], t["reward"], t["reached"], t["runs"])]
        y = np.arange(len(t))
        ax.barh(y, t["mean"].fillna(0), xerr=t["ci"].fillna(0),
                color=["tab:orange" if r == cfg.gold else "tab:blue" for r in t["reward"]], alpha=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(left=0)  # compute is >= 0; a 2-seed CI can reach below it
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        ax.set_xlabel(f"{xcol} to first reach {t['metric'].iloc[0]} >= {t['threshold'].iloc[0]:.4g}")
        ax.set_title(f"C1: compute to threshold ({cfg.split} prompts; k/n seeds reached)", fontsize=9)
    fig.tight_layout()
    return fig


def sweep_base(sweep: Path, metric: str) -> float:
    """The base model's `metric` on the validation prompts: fraction 0 of the sweep's trial runs (the same model,
    prompts and noise in every one)."""
    from bench.results.io import read_jsonl

    # every trial run starts from the same base evaluation: a few files give it, the others only repeat it
    values = [r["value"] for f in sorted(Path(sweep).glob("trials/*/trial-*/runs/*/eval.jsonl"))[:4]
              for r in read_jsonl(f) if r.get("fraction") == 0 and r.get("split") == "validation"
              and r.get("metric") == metric]
    return float(np.mean(values)) if values else math.nan


def plot_c4(sens: pd.DataFrame, trials: pd.DataFrame, metric: str, base: float = math.nan):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(sens) + 1.5))
    for i, (method, reward) in enumerate(zip(sens["method"], sens["reward"])):
        s = pd.to_numeric(trials[(trials["method"] == method) & (trials["reward"] == reward)]["score"],
                          errors="coerce")
        s = s[np.isfinite(s)]
        ax.plot(s, np.full(len(s), i), "o", color="tab:blue", alpha=0.7, ms=5)
        ax.plot([s.min(), s.max()], [i, i], "-", color="tab:blue", lw=1)
    if math.isfinite(base):
        ax.axvline(base, color="grey", lw=0.8, ls="--", label="base model")
        ax.legend(fontsize=7)
    ax.set_yticks(range(len(sens)), sens["method"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"selection score ({metric}, validation prompts) of each sweep trial")
    ax.set_title("C4: sensitivity to hyperparameters (one dot per trial)", fontsize=9)
    fig.tight_layout()
    return fig


def _colours(keys: list) -> dict:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    return {k: cmap(i % 20) for i, k in enumerate(keys)}


def plot_gap(gaps: dict[str, pd.DataFrame], xcol: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gaps), figsize=(6.5 * len(gaps), 4.5), squeeze=False)
    for ax, (metric, g) in zip(axes[0], gaps.items()):
        colours = _colours(list(dict.fromkeys(g["method"])))
        for method, c in g.groupby("method", sort=False):
            ax.plot(c["x"], c["gap"], "o-", ms=3, color=colours[method], label=method)
            ax.fill_between(c["x"], c["gap"] - c["ci"].fillna(0), c["gap"] + c["ci"].fillna(0),
                            color=colours[method], alpha=0.12)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(xcol)
        ax.set_ylabel(f"{metric}: train − test prompts")
        ax.set_title(f"C6: generalisation gap of {metric} over compute", fontsize=9)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_frontier(ev: pd.DataFrame, peaks: pd.DataFrame, cfg: ClaimsConfig, xcol: str):
    import matplotlib.pyplot as plt

    curves = mean_curves(ev, [cfg.gold, "kl-to-base"], cfg.split, xcol)
    base = base_value(ev, cfg.gold, cfg.split)
    keys = list(dict.fromkeys(zip(curves["method"], curves["reward"])))
    colours = _colours(keys)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (method, reward), c in curves.groupby(["method", "reward"], sort=False):
        c = c.sort_values("fraction")
        style = "s--" if reward == cfg.gold else "o-"
        ax.plot(np.sqrt(c["kl-to-base"].clip(lower=0)), c[cfg.gold] - base, style, ms=3,
                color=colours[(method, reward)], label=_label(method, reward, cfg.gold))
    for _, p in peaks.iterrows():
        ax.plot(p["peak_sqrt_kl"], p["peak_gain"], "*", ms=11, color=colours[(p["method"], p["reward"])],
                markeredgecolor="black", markeredgewidth=0.5)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("√(kl-to-base)")
    ax.set_ylabel(f"{cfg.gold} gain over the base model ({cfg.split} prompts)")
    ax.set_title("C6: gold against √KL, mean over seeds (★ = each method's peak)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def write_claims(suites: list[Path], out: Path, cfg: ClaimsConfig, ceiling: list[Path] = (),
                 sweep: Path | None = None) -> list[Path]:
    """C1, C4 (when a sweep folder is given) and C6 into `out`; returns the files written."""
    from bench.analysis.plots import save_fig

    if not [*suites, *ceiling]:  # a sweep alone: C4 only
        if sweep is None:
            raise BenchError("give suite folders, a --sweep folder, or both")
        out.mkdir(parents=True, exist_ok=True)
        text, png = c4_section(sweep, out, cfg)
        return write_text(out, ["# Claims (bench claims)\n", *text], [png])
    notes: list[str] = []
    ev, xcol = load_suites([*suites, *ceiling], notes)
    if cfg.gold not in set(ev["metric"]):
        raise BenchError(f"metric '{cfg.gold}' was not evaluated in these suites (--gold)")
    out.mkdir(parents=True, exist_ok=True)
    proxies = sorted(set(ev["reward"]) - {cfg.gold})
    c1 = [c1_table(ev, cfg.gold, cfg.split, cfg.gold_gain, xcol)]
    c1 += [c1_table(ev[ev["reward"] == p], p, cfg.split, cfg.proxy_gain, xcol) for p in proxies]
    trained = ev[ev["reward"] != cfg.gold]
    gaps = {m: gap_curves(trained, m, cfg.split, xcol) for m in [cfg.gold, *proxies]}
    peaks = frontier_peaks(ev, cfg.gold, cfg.split, xcol)
    cols = {"method": "method", "reward": "trained on", "threshold": "threshold", "mean": f"mean {xcol}",
            "ci": "95% CI ±", "reached": "seeds reached", "runs": "runs"}
    text = [f"# Claims (bench claims)\n\nCompute axis: {xcol}. Split: {cfg.split}. Base model (fraction 0): "
            f"{cfg.gold} {base_value(ev, cfg.gold, cfg.split):.4g}.\n", *(f"Note: {n}.\n" for n in notes)]
    for t in c1:
        text += [f"## C1: compute to first reach {t['metric'].iloc[0]} >= {t['threshold'].iloc[0]:.4g}\n",
                 markdown(t, cols), ""]
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
    written = [save_fig(plot_c1(c1, xcol, cfg), out / "c1_compute.png"),
               save_fig(plot_gap(gaps, xcol), out / "c6_gap.png"),
               save_fig(plot_frontier(ev, peaks, cfg, xcol), out / "c6_frontier.png")]
    if sweep is not None:
        c4_text, png = c4_section(sweep, out, cfg)
        text, written = [*text, *c4_text], [png, *written]
    return write_text(out, text, written)


def c4_section(sweep: Path, out: Path, cfg: ClaimsConfig) -> tuple[list[str], Path]:
    """C4 from a sweep folder's trials.csv: its lines of claims.md, and c4_sensitivity.png (written)."""
    from bench.analysis.plots import save_fig

    trials = read_trials(sweep)
    sens = sensitivity(trials)
    base = sweep_base(sweep, cfg.gold)
    text = ["## C4: spread of the selection score over sweep trials\n",
            f"Base model: {cfg.gold} {base:.4g} on the validation prompts (fraction 0 of the trials' runs).\n",
            markdown(sens, {"method": "method", "reward": "trained on", "trials": "trials", "finite": "finite",
                            "min": "min", "median": "median", "max": "max", "spread": "max − min"}), ""]
    return text, save_fig(plot_c4(sens, trials, cfg.gold, base), out / "c4_sensitivity.png")


def write_text(out: Path, text: list[str], written: list[Path]) -> list[Path]:
    """claims.md from its lines, atomically; returns it first, then the plots already written."""
    from bench.results.io import write_bytes_atomic

    write_bytes_atomic(out / "claims.md", ("\n".join(text) + "\n").encode())
    return [out / "claims.md", *written]
