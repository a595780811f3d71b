"""The report's table (``table.csv``, ``table.md``, ``table.tex``) from a loaded suite (see bench.analysis.report).

One row per (method, training reward) over seeds, after a first row for the base model. Per metric: the reported
split's value at each run's last evaluation point, mean ± the half-width of its 95% interval over every source of
noise the runs kept (seeds, prompts and images from the per-image scores, bench/analysis/stats.py; seeds alone for
set metrics and older folders: `<metric>_ci_over` says which). Then, judged per run by bench.analysis.judge: the
peak of the selection metric over the run's evaluation points and the kl-to-base where it peaked (mean ± CI over
seeds), and the metrics hacked in a majority of seeds. Bold marks a row significantly better than every other
row not flagged hacked (paired, Holm-corrected: bench/analysis/ranking.py); otherwise the best is a tie and
nothing is bold. A hacked row is never bold.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.analysis import judge
from bench.core.objective import trained_metrics

GROUP = ["method", "reward"]
KL = judge.KL
FIRST_METRIC_COLUMN = 6  # method, reward, beta, budget, seeds, status, then the metrics


def mean_ci(values: Any) -> tuple[float, float, int]:
    """(mean, half-width of the 95% Student-t CI, n) over the finite values; the CI is NaN below 2 values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float(v[0]) if len(v) else math.nan), math.nan, len(v)
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))), len(v)


def judge_runs(runs: pd.DataFrame, ev: pd.DataFrame, split: str, select: dict[str, str | None]) -> pd.DataFrame:
    """Per run: the peak of its reward's selection metric (value, fraction, kl) and the metrics
    judge.hacking flags on `split`, as a ';'-joined string."""
    rows = []
    for run in runs.itertuples():
        mine = ev[ev["run_id"] == run.run_id]
        metric = select.get(run.reward)
        top = judge.peak(mine, metric, split) if metric else {"value": math.nan, "fraction": math.nan, "kl": math.nan}
        flags = judge.hacking(mine, run.reward, split, optimised=trained_metrics(run.reward))
        rows.append({"run_id": run.run_id, "peak_value": top["value"], "peak_fraction": top["fraction"],
                     "peak_kl": top["kl"], "hacked": ";".join(m for m, f in flags.items() if f)})
    return pd.DataFrame(rows, columns=["run_id", "peak_value", "peak_fraction", "peak_kl", "hacked"])


def majority_hacked(hacked: pd.Series) -> list[str]:
    """Metrics flagged in more than half of the seeds (each entry a ';'-joined string of one run's flags)."""
    counts: dict[str, int] = {}
    for entry in hacked:
        for m in filter(None, str(entry).split(";")):
            counts[m] = counts.get(m, 0) + 1
    return [m for m, c in counts.items() if c > len(hacked) / 2]


def build_table(runs: pd.DataFrame, ev: pd.DataFrame, metrics: list[str], split: str,
                select: dict[str, str | None], finals: dict | None = None) -> pd.DataFrame:
    """The machine-readable table (table.csv): numeric mean, CI and n columns per metric and for the peak.
    `finals`: {metric: ({system: {seed: (prompts, images) scores}}, what they vary over)} (ranking.final_scores):
    a metric found there gets its interval from them."""
    from bench.analysis.ranking import system
    from bench.analysis.stats import estimate

    finals = finals or {}
    held = ev[ev["split"] == split]
    final = held.loc[held.groupby(["run_id", "metric"])["fraction"].idxmax()]
    judged = runs[["run_id", *GROUP, "seed"]].merge(judge_runs(runs, ev, split, select), on="run_id")
    base = held[held["fraction"] == 0].groupby("metric")["value"].mean()
    rows = [{"method": "base model", "reward": "–", "beta": "", "budget": "", "seeds": 0, "status": "fraction 0",
             **{f"{m}_mean": base.get(m, math.nan) for m in metrics}, **{f"{m}_ci95": math.nan for m in metrics},
             **{f"{m}_n": 0 for m in metrics}, "select": "", "peak_mean": math.nan, "peak_ci95": math.nan,
             "peak_n": 0, "peak_fraction_mean": math.nan, "peak_kl_mean": math.nan, "peak_kl_ci95": math.nan,
             "hacked": "", "hacked_seeds": "", "compute_nfe_mean": 0.0, "compute_seconds_mean": 0.0,
             "compute_flops_mean": 0.0}]
    for (method, reward), g in runs.groupby(GROUP):
        done = int(g["complete"].sum())
        row = {"method": method, "reward": reward, "beta": _join(g["beta"]), "budget": _join(g["budget"]),
               "seeds": len(g),
               "status": "complete" if done == len(g) else f"incomplete ({len(g) - done}/{len(g)} unfinished)"}
        mine = final[(final["method"] == method) & (final["reward"] == reward)]
        for m in metrics:
            per, over = finals.get(m, ({}, "seeds"))
            seeds = per.get(system(method, reward), {})
            if seeds:
                e = estimate(np.stack([seeds[s] for s in sorted(seeds)]))
                varies = any(n > 1 for n in e.counts.values())  # one seed of a set metric: nothing to vary
                row[f"{m}_mean"], row[f"{m}_ci95"], row[f"{m}_n"] = e.mean, e.half_width if varies else math.nan, \
                    len(seeds)
                row[f"{m}_ci_over"] = over if len(seeds) > 1 else over.replace("seeds, ", "")
            else:
                row[f"{m}_mean"], row[f"{m}_ci95"], row[f"{m}_n"] = mean_ci(mine.loc[mine["metric"] == m, "value"])
                row[f"{m}_ci_over"] = "seeds (Student t)"
        j = judged[(judged["method"] == method) & (judged["reward"] == reward)]
        row["select"] = select.get(reward) or ""
        row["peak_mean"], row["peak_ci95"], row["peak_n"] = mean_ci(j["peak_value"])
        row["peak_fraction_mean"] = mean_ci(j["peak_fraction"])[0]
        row["peak_kl_mean"], row["peak_kl_ci95"], _ = mean_ci(j["peak_kl"])
        row["hacked"] = ";".join(majority_hacked(j["hacked"]))
        row["hacked_seeds"] = " ".join(f"seed{s}:{h or '-'}" for s, h in zip(j["seed"], j["hacked"]))
        row["compute_nfe_mean"], row["compute_seconds_mean"] = g["nfe"].mean(), g["seconds"].mean()
        row["compute_flops_mean"] = g["flops"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame, metrics: list[str], hib: dict[str, bool],
                  significant: dict[str, str | None] | None = None):
    """(header, cells, best): text cells shared by Markdown and LaTeX; best holds (row, column) to bold.
    `significant` {metric: the system "method@reward" significantly better than every other unhacked row, or None}
    decides the bold of a metric column (None: a tie, nothing bold); without it (no comparisons made), the best
    mean of its column among the rows not flagged hacked. A hacked row and the base-model row are never bold."""
    selects = [s for s in dict.fromkeys(table["select"]) if s]
    one = selects[0] if len(selects) == 1 else None
    peak_head = f"peak {ylabel(one, hib)}" if one else "peak of the selection metric"
    header = ["method", "reward", "beta", "budget", "seeds", "status", *(ylabel(m, hib) for m in metrics),
              peak_head, f"{KL} at peak", "hacked", "compute"]
    cells = []
    for r in table.to_dict("records"):
        peak = pm(r["peak_mean"], r["peak_ci95"])
        cells.append([r["method"], r["reward"], r["beta"] or "–", r["budget"], str(r["seeds"]), r["status"]]
                     + [pm(r[f"{m}_mean"], r[f"{m}_ci95"]) for m in metrics]
                     + [peak if one or not r["select"] else f"{peak} ({r['select']})",
                        pm(r["peak_kl_mean"], r["peak_kl_ci95"]), ", ".join(r["hacked"].split(";")) or "—",
                        compute_text(r["compute_nfe_mean"], r["compute_seconds_mean"], r["compute_flops_mean"])])
    clean = ((table["hacked"] == "") & (table["method"] != "base model")).to_numpy()
    columns = [(FIRST_METRIC_COLUMN + j, f"{m}_mean", hib.get(m, True)) for j, m in enumerate(metrics)]
    if one:  # one selection metric for every row: its peaks compare across rows
        columns.append((FIRST_METRIC_COLUMN + len(metrics), "peak_mean", hib.get(one, True)))
    best = set()
    keys = [f"{m}@{r}" for m, r in zip(table["method"], table["reward"])]
    for col, key, higher in columns:
        metric = key[:-len("_mean")]
        if significant is not None:  # bold only a row significantly better than every other (the peak: never)
            best |= {(i, col) for i, k in enumerate(keys) if k == significant.get(metric) and clean[i]}
            continue
        means = table[key].where(clean)
        if means.notna().any():
            target = means.max() if higher else means.min()
            best |= {(i, col) for i in np.flatnonzero(np.isclose(means, target))}
    return header, cells, best


def markdown_table(header: list[str], cells: list[list[str]], best: set) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(f"**{esc(c)}**" if (i, j) in best else esc(c)
                                        for j, c in enumerate(row)) + " |")
    return "\n".join(lines) + "\n"


def tex_escape(s: str) -> str:
    s = re.sub(r"([_%&#$])", r"\\\1", s)
    for a, b in (("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("–", "--"), ("—", "---")):
        s = s.replace(a, b)
    return s


def latex_table(header: list[str], cells: list[list[str]], best: set) -> str:
    """A booktabs table written by hand (needs \\usepackage{booktabs}); numbers right-aligned, text left."""
    body = [" & ".join(rf"\textbf{{{tex_escape(c)}}}" if (i, j) in best else tex_escape(c)
                       for j, c in enumerate(row)) + r" \\" for i, row in enumerate(cells)]
    n_numeric = len(header) - FIRST_METRIC_COLUMN - 2  # the metrics, the peak and its kl
    spec = "l" * 4 + "r" + "l" + "r" * n_numeric + "l" + "r"
    return "\n".join([r"% generated by bench report; needs \usepackage{booktabs}",
                      r"\begin{tabular}{" + spec + "}", r"\toprule",
                      " & ".join(map(tex_escape, header)) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}"]) + "\n"


# ------------------------------------------------------------------------------------------------- helpers

def _join(values: pd.Series) -> str:
    """The distinct values of a column over seeds, as text ("" when there are none)."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in pd.unique(values.dropna()))


def _decimals(x: float) -> int:
    return 0 if x == 0 or not np.isfinite(x) else int(np.clip(2 - math.floor(math.log10(abs(x))), 0, 6))


def pm(mean: float, ci: float) -> str:
    """'0.123 ± 0.004': three significant digits for the mean, enough decimals to show the CI."""
    if not np.isfinite(mean):
        return "–"
    if np.isfinite(ci) and ci <= 1e-4 * abs(mean):
        ci = 0.0  # seeds that agree up to float noise: no extra decimals for a CI that is not there
    d = _decimals(mean) if not np.isfinite(ci) else max(_decimals(mean), min(6, -math.floor(math.log10(ci or 1))))
    return f"{mean:.{d}f}" if not np.isfinite(ci) else f"{mean:.{d}f} ± {ci:.{d}f}"


def compute_text(nfe: float, seconds: float, flops: float = math.nan) -> str:
    parts = ([f"{nfe:.0f} nfe"] if np.isfinite(nfe) else []) + ([f"{seconds:.1f} s"] if np.isfinite(seconds) else [])
    parts += [f"{flops:.3g} FLOPs"] if np.isfinite(flops) else []
    return ", ".join(parts) or "–"


def ylabel(metric: str, hib: dict[str, bool]) -> str:
    return metric + {True: " ↑", False: " ↓"}.get(hib.get(metric), "")
