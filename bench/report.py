"""Tables, plots and image grids from a suite folder (``bench report SUITE``).

Reads files only, through bench.results, and never imports torch: a report can be built on a laptop from
results copied off a GPU machine, also while the suite is still running. Everything goes into SUITE/report
unless told otherwise, each file written atomically:

- ``table.md``, ``table.csv``, ``table.tex``: one row per (method, training reward) over seeds; per metric the
  held-out value at each run's last evaluation point, mean ± 95% CI over seeds (Student t, n-1 dof);
- ``metric_<name>.png``: held-out value against compute, one line per (method, reward), 95% CI band;
- ``overfitting.png``: the training reward on train prompts (solid) and held-out prompts (dashed);
- ``reward_vs_divergence.png``: held-out training reward against the KL divergence from the base model;
- ``grid_<method>__<reward>.png``: the first seed's sample grids at the start, middle and end;
- ``index.md``: the table, the plots, the suite manifest and a legend.

Decisions worth knowing:
- A run's "final" value is taken at its own last evaluation point, so an unfinished run counts where it
  stopped; its group is marked "incomplete" and the CSV gives the number of seeds behind each mean.
- A run evaluated twice at one point (resumed after a crash) counts with the row written last.
- Fractions are rounded to 4 decimals before seeds are aligned on them.
- The x axis is NFE per sample when every run's budget is counted in NFE, otherwise device seconds.
- A folder under runs/ without config.json (a run being created) is skipped with a note in index.md.
"""

from __future__ import annotations

import io
import math
import re
import shlex
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from bench.errors import BenchError  # noqa: E402
from bench.results import read_json, read_jsonl, write_bytes_atomic  # noqa: E402

GROUP = ["method", "reward"]
KL = "kl-to-base"
EVAL_NEEDED = ["fraction", "nfe", "seconds", "split", "metric", "higher_is_better", "value"]
XLABEL = {"nfe": "compute (denoiser evaluations per sample, NFE)", "seconds": "compute (device seconds)"}
XUNIT = {"nfe": "nfe", "seconds": "s"}
LEGEND = ("↑ higher is better, ↓ lower is better. `a ± b`: mean over seeds ± the half-width of a 95% confidence "
          "interval (Student t, n-1 degrees of freedom); with one seed only the mean is shown. Metric values are "
          "on held-out prompts at each run's last evaluation point; **bold** is the best mean of its column. "
          "Compute is the mean over seeds of the final NFE per sample and device seconds.")


def build_report(suite_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the report of one suite folder (see bench.results for its layout); return the files written."""
    suite_dir = Path(suite_dir)
    out_dir = Path(out_dir) if out_dir is not None else suite_dir / "report"
    runs, ev, notes = load_suite(suite_dir)
    metrics = metric_order(ev, runs)
    hib = higher_is_better(ev)
    xcol = "nfe" if (runs["budget_kind"] == "nfe").all() else "seconds"
    table = build_table(runs, ev, metrics)
    header, cells, best = display_table(table, metrics, hib)

    written = [_write_text(out_dir / "table.csv", table.to_csv(index=False)),
               _write_text(out_dir / "table.md", markdown_table(header, cells, best)),
               _write_text(out_dir / "table.tex", latex_table(header, cells, best))]
    style = Style(runs)
    plots = [_save_fig(plot_metric(ev, m, xcol, style, hib), out_dir / f"metric_{_safe(m)}.png") for m in metrics]
    plots.append(_save_fig(plot_overfitting(ev, runs, xcol, style, hib), out_dir / "overfitting.png"))
    if ((ev["metric"] == KL) & (ev["split"] == "heldout")).any():
        plots.append(_save_fig(plot_reward_vs_divergence(ev, runs, style, hib), out_dir / "reward_vs_divergence.png"))
    else:
        notes.append(f"reward_vs_divergence.png skipped: no held-out `{KL}` evaluation rows")
    grids = []
    for (method, reward), g in runs.groupby(GROUP):
        fig = sample_grid(g.sort_values("seed").iloc[0], ev, xcol, notes)
        if fig is not None:
            grids.append(_save_fig(fig, out_dir / f"grid_{_safe(method)}__{_safe(reward)}.png"))
    written += plots + grids
    index = index_markdown(suite_dir, header, cells, best, plots, grids, notes)
    written.append(_write_text(out_dir / "index.md", index))
    return written


# ------------------------------------------------------------------------------------------------- loading

def load_suite(suite_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(runs, evaluation rows, notes): one row per run, and one per evaluation row with its run's identity."""
    runs_dir = suite_dir / "runs"
    if not runs_dir.is_dir():
        raise BenchError(f"no runs folder in {suite_dir}: is it a suite folder (bench run --out SUITE)?")
    runs, rows, notes = [], [], []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and ".interrupted-" not in p.name):
        if not (d / "config.json").exists():
            notes.append(f"skipped `runs/{d.name}`: no config.json (a run being created?)")
            continue
        runs.append(_run_record(d))
        rows += [{**r, "run_id": d.name} for r in read_jsonl(d / "eval.jsonl")]
    if not runs:
        raise BenchError(f"no runs in {runs_dir}")
    if not rows:
        raise BenchError(f"no evaluation rows in any run under {runs_dir}: nothing to report yet")
    runs = pd.DataFrame(runs)
    ev = pd.DataFrame(rows)
    missing = [k for k in EVAL_NEEDED if k not in ev.columns]
    if missing:
        raise BenchError(f"evaluation rows under {runs_dir} lack {', '.join(missing)}: written by another version?")
    ev = ev[["run_id", *EVAL_NEEDED]].copy()
    for k in ("fraction", "nfe", "seconds", "value"):
        ev[k] = pd.to_numeric(ev[k], errors="coerce")
    ev = ev.dropna(subset=["fraction"])
    ev["fraction"] = ev["fraction"].round(4)
    ev["metric"] = ev["metric"].astype(str)
    ev = ev.drop_duplicates(["run_id", "fraction", "split", "metric"], keep="last")
    return runs, ev.merge(runs[["run_id", *GROUP, "seed"]], on="run_id"), notes


def _run_record(d: Path) -> dict[str, Any]:
    """A run's identity from its config.json; its final compute from summary.json, or the last train row."""
    cfg = read_json(d / "config.json")
    try:
        method, reward, seed = str(cfg["method"]), str(cfg["reward"]), int(cfg["seed"])
    except (TypeError, KeyError, ValueError):
        raise BenchError(f"bad run config {d / 'config.json'}: needs method, reward and an integer seed") from None
    budget = cfg.get("budget") if isinstance(cfg.get("budget"), dict) else {}
    mc = cfg.get("method_config") if isinstance(cfg.get("method_config"), dict) else {}
    complete = (d / "summary.json").exists()
    last = read_json(d / "summary.json") if complete else (read_jsonl(d / "train.jsonl") or [{}])[-1]
    last = last if isinstance(last, dict) else {}
    return {"run_id": d.name, "method": method, "reward": reward, "seed": seed, "beta": mc.get("beta"),
            "budget_kind": budget.get("kind", "nfe"),
            "budget": str(budget.get("text") or f"{budget.get('amount', '?')} {budget.get('kind', '')}".strip()),
            "complete": complete, "nfe": _num(last.get("nfe")), "seconds": _num(last.get("seconds")), "dir": d}


def metric_order(ev: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Training rewards first (in the order of the runs), then the other metrics alphabetically."""
    metrics = sorted(ev["metric"].unique())
    rewards = [r for r in dict.fromkeys(runs["reward"]) if r in metrics]
    return rewards + [m for m in metrics if m not in rewards]


def higher_is_better(ev: pd.DataFrame) -> dict[str, bool]:
    known = ev.dropna(subset=["higher_is_better"])
    return {m: bool(v) for m, v in known.groupby("metric")["higher_is_better"].last().items()}


# --------------------------------------------------------------------------------------------------- table

def mean_ci(values: Any) -> tuple[float, float, int]:
    """(mean, half-width of the 95% Student-t CI, n) over the finite values; the CI is NaN below 2 values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float(v[0]) if len(v) else math.nan), math.nan, len(v)
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))), len(v)


def build_table(runs: pd.DataFrame, ev: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The machine-readable table (table.csv): numeric mean, CI and n columns per metric."""
    held = ev[ev["split"] == "heldout"]
    final = held.loc[held.groupby(["run_id", "metric"])["fraction"].idxmax()]
    rows = []
    for (method, reward), g in runs.groupby(GROUP):
        done = int(g["complete"].sum())
        row = {"method": method, "reward": reward, "beta": _join(g["beta"]), "budget": _join(g["budget"]),
               "seeds": len(g),
               "status": "complete" if done == len(g) else f"incomplete ({len(g) - done}/{len(g)} unfinished)"}
        mine = final[(final["method"] == method) & (final["reward"] == reward)]
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_ci95"], row[f"{m}_n"] = mean_ci(mine.loc[mine["metric"] == m, "value"])
        row["compute_nfe_mean"], row["compute_seconds_mean"] = g["nfe"].mean(), g["seconds"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def display_table(table: pd.DataFrame, metrics: list[str], hib: dict[str, bool]):
    """(header, cells, best): text cells shared by Markdown and LaTeX; best holds (row, column) to bold."""
    header = ["method", "reward", "beta", "budget", "seeds", "status", *(_ylabel(m, hib) for m in metrics), "compute"]
    cells = [[r["method"], r["reward"], r["beta"] or "–", r["budget"], str(r["seeds"]), r["status"]]
             + [_pm(r[f"{m}_mean"], r[f"{m}_ci95"]) for m in metrics]
             + [_compute(r["compute_nfe_mean"], r["compute_seconds_mean"])] for r in table.to_dict("records")]
    best = set()
    for j, m in enumerate(metrics):
        means = table[f"{m}_mean"]
        if means.notna().any():
            target = means.max() if hib.get(m, True) else means.min()
            best |= {(i, 6 + j) for i in np.flatnonzero(np.isclose(means, target))}
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
    for a, b in (("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("–", "--")):
        s = s.replace(a, b)
    return s


def latex_table(header: list[str], cells: list[list[str]], best: set) -> str:
    """A booktabs table written by hand (needs \\usepackage{booktabs})."""
    body = [" & ".join(rf"\textbf{{{tex_escape(c)}}}" if (i, j) in best else tex_escape(c)
                       for j, c in enumerate(row)) + r" \\" for i, row in enumerate(cells)]
    return "\n".join([r"% generated by bench report; needs \usepackage{booktabs}",
                      r"\begin{tabular}{" + "l" * 4 + "r" + "l" + "r" * (len(header) - 6) + "}", r"\toprule",
                      " & ".join(map(tex_escape, header)) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}"]) + "\n"


# --------------------------------------------------------------------------------------------------- plots

class Style:
    """One colour per method (the same in every figure), one line style per training reward."""

    def __init__(self, runs: pd.DataFrame):
        self.colour = {m: f"C{i % 10}" for i, m in enumerate(sorted(runs["method"].unique()))}
        rewards = sorted(runs["reward"].unique())
        self.dash = {r: ["-", "--", ":", "-."][i % 4] for i, r in enumerate(rewards)}
        self.several_rewards = len(rewards) > 1
        self.incomplete = set(runs.loc[~runs["complete"], GROUP].itertuples(index=False, name=None))

    def __call__(self, method: str, reward: str) -> dict[str, str]:
        label = f"{method} ({reward})" if self.several_rewards else method
        label += " [incomplete]" if (method, reward) in self.incomplete else ""
        return {"color": self.colour[method], "linestyle": self.dash[reward], "label": label}


def curves(ev: pd.DataFrame, split: str, metric: str, xcol: str) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (method, reward): at each fraction the mean compute, mean value and CI half-width over seeds."""
    sub = ev[(ev["split"] == split) & (ev["metric"] == metric)]
    out = {}
    for key, g in sub.groupby(GROUP):
        rows = [{"fraction": f, "x": gf[xcol].mean(), **dict(zip(("mean", "ci", "n"), mean_ci(gf["value"])))}
                for f, gf in g.groupby("fraction")]
        out[key] = pd.DataFrame(rows)
    return out


def plot_metric(ev, metric: str, xcol: str, style: Style, hib: dict[str, bool]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for (method, reward), c in curves(ev, "heldout", metric, xcol).items():
        s = style(method, reward)
        ax.plot(c["x"], c["mean"], marker="o", **s)
        ax.fill_between(c["x"], c["mean"] - c["ci"], c["mean"] + c["ci"], color=s["color"], alpha=0.18, lw=0)
    ax.set(xlabel=XLABEL[xcol], ylabel=_ylabel(metric, hib), title=f"{metric} on held-out prompts (95% CI band)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def plot_overfitting(ev, runs, xcol: str, style: Style, hib: dict[str, bool]) -> plt.Figure:
    rewards = sorted(runs["reward"].unique())
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.4 * len(rewards), 4.4), layout="constrained", squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for split, dash in (("train", "-"), ("heldout", "--")):
            for (method, r), c in curves(ev, split, reward, xcol).items():
                if r == reward:
                    ax.plot(c["x"], c["mean"], marker="o", color=style.colour[method], linestyle=dash)
        handles = [Line2D([], [], color=style.colour[m], label=m) for m in sorted(runs.loc[runs.reward == reward,
                                                                                           "method"].unique())]
        handles += [Line2D([], [], color="k", linestyle=d, label=f"{s} prompts") for s, d in
                    (("train", "-"), ("held-out", "--"))]
        ax.legend(handles=handles, fontsize="small")
        ax.set(xlabel=XLABEL[xcol], ylabel=_ylabel(reward, hib), title=f"trained on {reward}: train vs held-out")
        ax.grid(alpha=0.3)
    return fig


def plot_reward_vs_divergence(ev, runs, style: Style, hib: dict[str, bool]) -> plt.Figure:
    rewards = sorted(runs["reward"].unique())
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.4 * len(rewards), 4.4), layout="constrained", squeeze=False)
    kl = curves(ev, "heldout", KL, "nfe")
    for ax, reward in zip(axes[0], rewards):
        for (method, r), c in curves(ev, "heldout", reward, "nfe").items():
            if r != reward or (method, r) not in kl:
                continue
            both = c.merge(kl[(method, r)], on="fraction", suffixes=("", "_kl"))
            ax.plot(both["mean_kl"], both["mean"], marker="o", color=style.colour[method], label=method)
        ax.set(xlabel=f"{KL} (KL divergence from the base model)", ylabel=_ylabel(reward, hib),
               title=f"trained on {reward}: held-out reward vs divergence")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def sample_grid(run: pd.Series, ev: pd.DataFrame, xcol: str, notes: list[str]) -> plt.Figure | None:
    """Start, middle and end sample grids of one run side by side, or None (with a note) if there are none."""
    files = {float(m[1]): p for p in (run["dir"] / "samples").glob("frac*.png")
             if (m := re.fullmatch(r"frac(\d+(?:\.\d+)?)", p.stem))}
    if not files:
        notes.append(f"no sample grids in `runs/{run['run_id']}/samples`")
        return None
    fr = sorted(files)
    picks: dict[float, str] = {}
    for f, label in ((fr[0], "start"), (min(fr, key=lambda f: abs(f - 0.5)), "middle"), (fr[-1], "end")):
        picks.setdefault(f, label)
    mine = ev[ev["run_id"] == run["run_id"]]
    try:
        images = {f: _read_image(files[f]) for f in picks}
    except OSError as e:
        notes.append(f"sample grids of `runs/{run['run_id']}` unreadable: {e}")
        return None
    height = 4 * max(im.shape[0] / im.shape[1] for im in images.values()) + 0.9
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), height), layout="constrained", squeeze=False)
    for ax, (f, label) in zip(axes[0], sorted(picks.items())):
        spent = mine.loc[np.isclose(mine["fraction"], f, atol=0.005), xcol].mean()
        ax.imshow(images[f])
        ax.set_title(label if label == "start" or not np.isfinite(spent) else f"{label} ({spent:.4g} {XUNIT[xcol]})")
        ax.axis("off")
    fig.suptitle(f"{run['method']} trained on {run['reward']}, seed {run['seed']}")
    return fig


# --------------------------------------------------------------------------------------------------- index

def index_markdown(suite_dir, header, cells, best, plots: list[Path], grids: list[Path], notes: list[str]) -> str:
    lines = [f"# Benchmark report: {suite_dir.resolve().name}", "", *manifest_lines(suite_dir, notes), "",
             "## Results", "", markdown_table(header, cells, best), LEGEND, "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})\n" for p in plots]
    if grids:
        lines += ["## Samples", ""] + [f"![{g.stem}]({g.name})\n" for g in grids]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def manifest_lines(suite_dir: Path, notes: list[str]) -> list[str]:
    """The suite's command, budget, versions, git revision and device, from manifest.json when present."""
    if not (suite_dir / "manifest.json").exists():
        notes.append("no manifest.json in the suite folder")
        return []
    manifest = read_json(suite_dir / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    lines = []
    for key, label in (("argv", "command"), ("budget", "budget"), ("versions", "versions"), ("git", "git"),
                       ("device", "device")):
        if manifest.get(key) not in (None, "", [], {}):
            lines.append(f"- **{label}**: `{_describe(manifest[key], key)}`")
    return lines


def _describe(value: Any, key: str = "") -> str:
    if isinstance(value, list):
        return shlex.join(map(str, value))
    if isinstance(value, dict):
        if key == "budget" and "text" in value:
            return str(value["text"])
        return ", ".join(f"{k} {_describe(v)}" for k, v in value.items())
    return str(value)


# ------------------------------------------------------------------------------------------------- helpers

def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _join(values: pd.Series) -> str:
    """The distinct values of a column over seeds, as text ("" when there are none)."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in pd.unique(values.dropna()))


def _decimals(x: float) -> int:
    return 0 if x == 0 or not np.isfinite(x) else int(np.clip(2 - math.floor(math.log10(abs(x))), 0, 6))


def _pm(mean: float, ci: float) -> str:
    """'0.123 ± 0.004': three significant digits for the mean, enough decimals to show the CI."""
    if not np.isfinite(mean):
        return "–"
    if np.isfinite(ci) and ci <= 1e-4 * abs(mean):
        ci = 0.0  # seeds that agree up to float noise: no extra decimals for a CI that is not there
    d = _decimals(mean) if not np.isfinite(ci) else max(_decimals(mean), min(6, -math.floor(math.log10(ci or 1))))
    return f"{mean:.{d}f}" if not np.isfinite(ci) else f"{mean:.{d}f} ± {ci:.{d}f}"


def _compute(nfe: float, seconds: float) -> str:
    parts = ([f"{nfe:.0f} nfe"] if np.isfinite(nfe) else []) + ([f"{seconds:.1f} s"] if np.isfinite(seconds) else [])
    return ", ".join(parts) or "–"


def _ylabel(metric: str, hib: dict[str, bool]) -> str:
    return metric + {True: " ↑", False: " ↓"}.get(hib.get(metric), "")


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _write_text(path: Path, text: str) -> Path:
    write_bytes_atomic(path, text.encode("utf-8"))
    return path


def _save_fig(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path
