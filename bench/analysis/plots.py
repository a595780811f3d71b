"""The report's figures (see bench.analysis.report): metric curves against compute, train against reported split, the
training reward against KL, the Gao et al. (2022) frontiers, and sample grids. Matplotlib (Agg) only, no torch.

Every plotting function takes the loaded evaluation rows (one row per run x fraction x split x metric, with the
run's method, reward and seed) and returns a figure; ``save_fig`` writes it atomically as PNG.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402

from bench.analysis.table import GROUP, KL, mean_ci, ylabel
from bench.results.io import write_bytes_atomic

XLABEL = {"nfe": "compute (NFE-equivalents: denoiser evaluations, a backward counted as 2)",
          "seconds": "compute (device seconds)", "flops": "compute (training FLOPs)"}
XUNIT = {"nfe": "NFE", "seconds": "s", "flops": "FLOPs"}
SPLIT_TEXT = {"test": "test", "heldout": "held-out", "validation": "validation", "train": "train"}


class Style:
    """Every method's look (bench/analysis/style.py: its family's hue and line style, a shade of its own; the same
    in every figure), and a marker per training reward when a suite trained on several."""

    def __init__(self, runs: pd.DataFrame):
        from bench.analysis.style import looks

        self.look = looks(sorted(runs["method"].unique()))
        self.colour = {m: look.colour for m, look in self.look.items()}
        rewards = sorted(runs["reward"].unique())
        self.marker = {r: ["o", "s", "^", "D", "v"][i % 5] for i, r in enumerate(rewards)}
        self.several_rewards = len(rewards) > 1
        self.incomplete = set(runs.loc[~runs["complete"], GROUP].itertuples(index=False, name=None))

    def __call__(self, method: str, reward: str) -> dict[str, str]:
        label = f"{method} ({reward})" if self.several_rewards else method
        label += " [incomplete]" if (method, reward) in self.incomplete else ""
        return {"color": self.colour[method], "linestyle": self.look[method].linestyle,
                "marker": self.marker[reward] if self.several_rewards else self.look[method].marker, "label": label}


def curves(ev: pd.DataFrame, split: str, metric: str, xcol: str,
           runs: pd.DataFrame | None = None) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (method, reward): at each fraction the mean compute, mean value and the half-width of its 95% interval
    — over seeds, prompts and images from the runs' per-image scores when `runs` (with their folders) is given and
    they have them (bench/analysis/stats.py), else over seeds (Student t; none with one seed)."""
    from bench.analysis.stats import estimate
    from bench.results.scores import read_scores

    sub = ev[(ev["split"] == split) & (ev["metric"] == metric)]
    per_image: dict[str, dict[float, np.ndarray]] = {}
    if runs is not None:
        for r in runs.itertuples():
            per_image[r.run_id] = {round(f, 4): e["scores"][split][metric] for e in read_scores(r.dir)
                                   if metric in e["scores"].get(split, {}) for f in e["fractions"]}
    out = {}
    for key, g in sub.groupby(GROUP):
        rows = []
        for f, gf in g.groupby("fraction"):
            arrays = [per_image.get(run_id, {}).get(round(f, 4)) for run_id in gf["run_id"]]
            mean, ci, n = mean_ci(gf["value"])
            if arrays and all(a is not None for a in arrays):
                ci = estimate(np.stack(arrays)).half_width
            rows.append({"fraction": f, "x": gf[xcol].mean(), "mean": mean, "ci": ci, "n": n})
        out[key] = pd.DataFrame(rows)
    return out


def robust_limits(values: np.ndarray) -> tuple[float, float] | None:
    """y limits that follow the middle of the data: when a few points (a collapsed method) lie more than 3 times
    the interquartile range beyond the quartiles, the axis stops there and they are drawn at its edge."""
    v = values[np.isfinite(values)]
    if len(v) < 8:
        return None
    q1, q3 = np.percentile(v, [25, 75])
    lo, hi = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
    if q3 == q1 or (v.min() >= lo and v.max() <= hi):
        return None
    pad = 0.05 * (min(hi, v.max()) - max(lo, v.min()))
    return max(lo, v.min()) - pad, min(hi, v.max()) + pad


def plot_metric(ev, metric: str, xcol: str, split: str, style: Style, hib: dict[str, bool],
                runs: pd.DataFrame | None = None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    data = curves(ev, split, metric, xcol, runs)
    limits = robust_limits(np.concatenate([c["mean"].to_numpy() for c in data.values()] or [np.array([])]))
    banded = False
    for (method, reward), c in data.items():
        s = style(method, reward)
        y = c["mean"] if limits is None else c["mean"].clip(*limits)
        ax.plot(c["x"], y, **s)
        if c["ci"].notna().any():
            banded = True
            low, high = c["mean"] - c["ci"], c["mean"] + c["ci"]
            if limits is not None:
                low, high = low.clip(*limits), high.clip(*limits)
            ax.fill_between(c["x"], low, high, color=s["color"], alpha=0.18, lw=0)
        if limits is not None:
            out = c[(c["mean"] < limits[0]) | (c["mean"] > limits[1])]
            ax.plot(out["x"], out["mean"].clip(*limits), "v", color=s["color"], mec="black", mew=0.4, ms=6)
    band = "95% interval band" if banded else "no band: one seed of a set metric has no interval"
    clipped = "; ▼ beyond the axis" if limits is not None else ""
    ax.set(xlabel=XLABEL[xcol], ylabel=ylabel(metric, hib),
           title=f"{metric} on {SPLIT_TEXT.get(split, split)} prompts ({band}{clipped})")
    if limits is not None:
        ax.set_ylim(*limits)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def plot_overfitting(ev, runs, xcol: str, split: str, style: Style, hib: dict[str, bool]) -> plt.Figure:
    """The training reward on train prompts (solid) against the reported split (dashed)."""
    rewards = sorted(runs["reward"].unique())
    shown = SPLIT_TEXT.get(split, split)
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.4 * len(rewards), 4.4), layout="constrained", squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for s, dash in (("train", "-"), (split, "--")):
            for (method, r), c in curves(ev, s, reward, xcol).items():
                if r == reward:
                    ax.plot(c["x"], c["mean"], marker="o", color=style.colour[method], linestyle=dash)
        handles = [Line2D([], [], color=style.colour[m], label=m) for m in sorted(runs.loc[runs.reward == reward,
                                                                                           "method"].unique())]
        handles += [Line2D([], [], color="k", linestyle=d, label=f"{s} prompts") for s, d in
                    (("train", "-"), (shown, "--"))]
        ax.legend(handles=handles, fontsize="small")
        ax.set(xlabel=XLABEL[xcol], ylabel=ylabel(reward, hib), title=f"trained on {reward}: train vs {shown}")
        ax.grid(alpha=0.3)
    return fig


def plot_reward_vs_divergence(ev, runs, split: str, style: Style, hib: dict[str, bool]) -> plt.Figure:
    rewards = sorted(runs["reward"].unique())
    fig, axes = plt.subplots(1, len(rewards), figsize=(6.4 * len(rewards), 4.4), layout="constrained", squeeze=False)
    kl = curves(ev, split, KL, "fraction")
    for ax, reward in zip(axes[0], rewards):
        for (method, r), c in curves(ev, split, reward, "fraction").items():
            if r != reward or (method, r) not in kl:
                continue
            both = c.merge(kl[(method, r)], on="fraction", suffixes=("", "_kl"))
            ax.plot(both["mean_kl"], both["mean"], marker="o", color=style.colour[method], label=method)
        ax.set(xlabel=f"{KL} (KL divergence from the base model)", ylabel=ylabel(reward, hib),
               title=f"trained on {reward}: {SPLIT_TEXT.get(split, split)} reward vs divergence")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def frontier_metrics(ev: pd.DataFrame, reward: str, split: str) -> list[str]:
    """The metrics a frontier of `reward` shows: every one evaluated on `split` except it and kl-to-base."""
    on = ev[ev["split"] == split]
    return sorted(m for m in on["metric"].unique() if m not in (reward, KL))


def plot_frontier(ev: pd.DataFrame, runs: pd.DataFrame, reward: str, split: str, style: Style,
                  hib: dict[str, bool]) -> plt.Figure:
    """Gao et al. (2022): each non-trained metric against √KL from the base model, one subplot per metric.
    Every evaluation point of every run (each seed its own line, in fraction order) — the spread of the seeds
    stays visible, and a method regularises better when its points reach further right before they fall."""
    metrics = frontier_metrics(ev, reward, split)
    cols = len(metrics) if len(metrics) <= 3 else (2 if len(metrics) == 4 else 3)
    cols = max(cols, 1)
    nrows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows + 0.6), layout="constrained",
                             squeeze=False)
    on = ev[(ev["split"] == split) & (ev["reward"] == reward)]
    kl = on[on["metric"] == KL].set_index(["run_id", "fraction"])["value"]
    linthresh = _symlog_threshold(np.sqrt(kl.clip(lower=0).groupby(level="run_id").max().to_numpy(dtype=float)))
    for ax, metric in zip(axes.flat, metrics):
        rows = on[on["metric"] == metric].join(kl.rename("kl"), on=["run_id", "fraction"])
        for run_id, g in rows.dropna(subset=["kl", "value"]).groupby("run_id"):
            g = g.sort_values("fraction")
            ax.plot(np.sqrt(g["kl"].clip(lower=0)), g["value"], marker="o", markersize=3.5, linewidth=1.0,
                    alpha=0.8, color=style.colour[g["method"].iloc[0]])
        base = rows[rows["fraction"] == 0]["value"]
        if len(base):  # every run starts from the same base model: its value is the reference level
            ax.axhline(float(base.mean()), color="0.4", linestyle=":", linewidth=1)
        if linthresh:
            ax.set_xscale("symlog", linthresh=linthresh, linscale=1.5)
        ax.set(xlabel=f"√({KL})" + (" (log beyond the dashed line)" if linthresh else ""),
               ylabel=ylabel(metric, hib), title=metric)
        if linthresh:
            ax.axvline(linthresh, color="0.7", linestyle="--", linewidth=0.8)
        ax.set_xlim(left=0)  # √KL is never negative (symlog would otherwise show a mirrored empty half)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    methods = sorted(runs.loc[runs["reward"] == reward, "method"].unique())
    handles = [Line2D([], [], color=style.colour[m], marker="o", markersize=4, label=m) for m in methods]
    handles.append(Line2D([], [], color="0.4", linestyle=":", label="base model"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), fontsize="small")
    fig.suptitle(f"trained on {reward}: the other metrics against √KL from the base model\n"
                 f"{SPLIT_TEXT.get(split, split)} prompts, every evaluation point, one line per seed")
    return fig


def final_points(ev: pd.DataFrame, reward: str, split: str, metrics: list[str]) -> pd.DataFrame:
    """Per run of `reward`: the value of each of `metrics` on `split` at the run's last evaluation point (columns
    run_id, method, seed, *metrics), and a row with method "" for the base model (fraction 0, mean over runs)."""
    on = ev[(ev["split"] == split) & (ev["reward"] == reward) & ev["metric"].isin(metrics)]
    last = on.loc[on.groupby(["run_id", "metric"])["fraction"].idxmax()]
    runs = last.pivot_table(index=["run_id", "method", "seed"], columns="metric", values="value").reset_index()
    base = on[on["fraction"] == 0].groupby("metric")["value"].mean()
    base_row = pd.DataFrame([{"run_id": "", "method": "", "seed": -1, **base.to_dict()}])
    return pd.concat([runs, base_row], ignore_index=True).reindex(columns=["run_id", "method", "seed", *metrics])


def pareto_front(points: np.ndarray, higher: tuple[bool, bool]) -> np.ndarray:
    """Indices of the points (n, 2) that no other point dominates (at least as good in both coordinates, better in
    one), in order of the first coordinate; `higher`: whether each coordinate is better high."""
    signed = points * np.where(higher, 1.0, -1.0)
    keep = [i for i in range(len(points))
            if not any(np.all(signed[j] >= signed[i]) and np.any(signed[j] > signed[i]) for j in range(len(points)))]
    return np.array(sorted(keep, key=lambda i: points[i, 0]), dtype=int)


def plot_pareto(ev: pd.DataFrame, reward: str, terms: list[str], split: str, style: Style,
                hib: dict[str, bool]) -> plt.Figure:
    """A two-term objective's plane: each method's final point (mean over seeds, 95% CI bars both ways; its seeds
    faint), the base model, and the dashed front of the methods no other method beats on both terms."""
    a, b = terms
    points = final_points(ev, reward, split, terms)
    fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    means = []
    for method, g in points[points["method"] != ""].groupby("method"):
        (xa, ca, _), (xb, cb, _) = mean_ci(g[a]), mean_ci(g[b])
        colour = style.colour[method]
        ax.scatter(g[a], g[b], color=colour, alpha=0.3, s=14)
        ax.errorbar(xa, xb, xerr=None if math.isnan(ca) else ca, yerr=None if math.isnan(cb) else cb, fmt="o",
                    color=colour, capsize=3, label=style(method, reward)["label"])
        means.append((xa, xb))
    base = points[points["method"] == ""]
    if len(base) and base[[a, b]].notna().all(axis=None):
        ax.scatter(base[a], base[b], marker="*", s=160, color="0.3", label="base model", zorder=3)
    if len(means) > 1:
        arr = np.array(means)
        front = pareto_front(arr, (hib.get(a, True), hib.get(b, True)))
        ax.plot(arr[front, 0], arr[front, 1], linestyle="--", color="0.5", linewidth=1, label="front (means)")
    ax.set(xlabel=ylabel(a, hib), ylabel=ylabel(b, hib))
    ax.set_title(f"trained on {reward}\neach method's last point on {SPLIT_TEXT.get(split, split)} prompts: "
                 f"mean ± 95% CI over seeds (seeds faint)", fontsize="medium")
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize="small")
    return fig


def _symlog_threshold(reach: np.ndarray) -> float | None:
    """Where a frontier's x axis turns logarithmic, or None for a linear one, from each run's largest √KL.
    An unregularised run can drift a hundred times further from the base model than the regularised ones; on a
    linear axis those would all sit in the first pixels, so when the farthest run goes more than 10 times as far
    as the median run, the axis is linear up to a round number (1, 2, 5 × 10^k) at or above that median and
    logarithmic beyond."""
    reach = reach[np.isfinite(reach) & (reach > 0)]
    if len(reach) == 0 or reach.max() <= 10 * np.median(reach):
        return None
    median = float(np.median(reach))
    decade = 10.0 ** math.floor(math.log10(median))
    return next(k * decade for k in (1, 2, 5, 10) if k * decade >= median)


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
    height = 4 * max(im.shape[0] / im.shape[1] for im in images.values()) + 1.3
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), height), layout="constrained", squeeze=False)
    fig.supxlabel(grid_prompts(run["dir"]), fontsize=7)
    for ax, (f, label) in zip(axes[0], sorted(picks.items())):
        spent = mine.loc[np.isclose(mine["fraction"], f, atol=0.005), xcol].mean()
        ax.imshow(images[f])
        ax.set_title(label if label == "start" or not np.isfinite(spent) else f"{label} ({spent:.4g} {XUNIT[xcol]})")
        ax.axis("off")
    fig.suptitle(f"{run['method']} trained on {run['reward']}, seed {run['seed']}")
    return fig


def grid_prompts(run_dir: Path) -> str:
    """Which prompt each image of a run's sample grid shows (the reported split's first images, in order)."""
    from bench.results.io import read_json

    from bench.results.scores import read_scores

    try:
        cfg = read_json(Path(run_dir) / "config.json")
        split = (cfg.get("eval") or {}).get("splits", ["test"])[-1]
        evaluated = [e["prompts"][split] for e in read_scores(run_dir)[-1:] if split in e["prompts"]]
        prompts = evaluated[0] if evaluated else (cfg.get("prompts") or {}).get(split) or []
        per = int((cfg.get("eval_images_per_prompt") or {}).get(split, 1))
        shown = int((cfg.get("eval") or {}).get("grid_images", 16))
    except Exception:  # noqa: BLE001 - a caption is not worth failing a report for
        return ""
    parts, start = [], 1
    for p in prompts:
        if start > shown:
            break
        end = min(start + per - 1, shown)
        parts.append(f"{start}-{end}: \"{p}\"" if end > start else f"{start}: \"{p}\"")
        start = end + 1
    return "images (row by row) " + "; ".join(parts) if parts else ""


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def save_fig(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path
