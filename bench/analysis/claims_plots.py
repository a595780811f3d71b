"""The figures of `bench claims` (the numbers are bench/analysis/claims.py's). Every method keeps one look across
figures (bench/analysis/style.py); compute axes carry the budget's own unit; an interval never reaches past what
was measured; a method that never reached a threshold is drawn as such.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.analysis.style import looks  # noqa: E402

UNIT = {"nfe": "NFE-equivalents", "nfe_eq": "NFE-equivalents (FLOPs in policy-denoiser forwards)",
        "flops": "training FLOPs", "seconds": "device seconds"}


def unit(xcol: str) -> str:
    return UNIT.get(xcol, xcol)


def label(method: str, reward: str, gold: str) -> str:
    return f"{method} (on {gold})" if reward == gold else method


def plot_c1(tables: list[pd.DataFrame], xcol: str, gold: str, split: str):
    """One panel per threshold: each system's median compute to reach it, the seeds' range (never beyond a run's
    measured compute), dots for each seed; systems that never reached it are listed as "never"."""
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 0.38 * max(map(len, tables)) + 1.8),
                             squeeze=False)
    for ax, t in zip(axes[0], tables):
        style = looks(list(t["method"]))
        right = max([v for v in t["max"] if math.isfinite(v)] + [1.0])
        for y, row in enumerate(t.itertuples()):
            look = style[row.method]
            if row.reached == 0:
                ax.text(0, y, "  never reached", va="center", fontsize=7, color="dimgrey")
                continue
            ax.plot([row.min, row.max], [y, y], "-", color=look.colour, lw=2.5, alpha=0.6)
            ax.plot(row.seeds, [y] * len(row.seeds), look.marker, color=look.colour, ms=4, alpha=0.9)
            ax.plot(row.median, y, "|", color="black", ms=12)
        ax.set_yticks(range(len(t)), [f"{label(m, r, gold)}  {k}/{n}" for m, r, k, n in
                                      zip(t["method"], t["reward"], t["reached"], t["runs"])], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, right * 1.05)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
        ax.set_xlabel(f"{unit(xcol)} to first reach {t['metric'].iloc[0]} >= {t['threshold'].iloc[0]:.4g}")
        ax.set_title(f"C1: compute to threshold, {split} prompts (bar: seeds' range, |: median, k/n seeds)",
                     fontsize=8)
    fig.tight_layout()
    return fig


def plot_c4(curves: pd.DataFrame, metric: str, base: float = math.nan):
    """One panel per method: the selection score against the learning rate, a line per setting of the method's own
    knobs (the centre setting thick), each point with its seeds' range."""
    methods = list(dict.fromkeys(curves["method"]))
    cols = min(4, len(methods)) or 1
    rows = -(-len(methods) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True, sharex=True)
    style = looks(methods)
    for ax, method in zip(axes.flat, methods):
        look = style[method]
        for setting, c in curves[curves["method"] == method].groupby("setting", sort=False):
            c = c.sort_values("lr")
            centre = bool(c["centre"].iloc[0])
            ax.plot(c["lr"], c["score"], look.marker + "-", color=look.colour if centre else "grey", ms=3,
                    lw=1.8 if centre else 0.8, alpha=1.0 if centre else 0.7, label=setting or "(no own knobs)")
            ax.vlines(c["lr"], c["low"], c["high"], color=look.colour if centre else "grey", lw=0.8, alpha=0.6)
        if math.isfinite(base):
            ax.axhline(base, color="black", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(method, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="best")
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.supxlabel("learning rate (the same grid for every method)", fontsize=8)
    fig.supylabel(f"{metric}, validation prompts (bars: seeds' range)", fontsize=8)
    fig.suptitle("C4: sensitivity — selection score against learning rate, per setting of each method's own knobs "
                 "(--: base model)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_gap(gaps: dict[str, pd.DataFrame], xcol: str):
    fig, axes = plt.subplots(1, len(gaps), figsize=(6.5 * len(gaps), 4.5), squeeze=False)
    for ax, (metric, g) in zip(axes[0], gaps.items()):
        style = looks(list(g["method"]))
        for method, c in g.groupby("method", sort=False):
            look = style[method]
            ax.plot(c["x"], c["gap"], look.marker, ls=look.linestyle, ms=3, color=look.colour, label=method)
            ax.fill_between(c["x"], c["gap"] - c["ci"].fillna(0), c["gap"] + c["ci"].fillna(0),
                            color=look.colour, alpha=0.12)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(unit(xcol))
        ax.set_ylabel(f"{metric}: train − test prompts")
        ax.set_title(f"C6: generalisation gap of {metric} over compute (band: 95% CI over seeds)", fontsize=9)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_frontier(curves: pd.DataFrame, peaks: pd.DataFrame, gold: str, split: str, base: float):
    fig, ax = plt.subplots(figsize=(7.5, 5))
    style = looks(list(curves["method"]))
    for (method, reward), c in curves.groupby(["method", "reward"], sort=False):
        c = c.sort_values("fraction")
        look = style[method]
        ax.plot(np.sqrt(c["kl-to-base"].clip(lower=0)), c[gold] - base, look.marker, ms=3, color=look.colour,
                ls=":" if reward == gold else look.linestyle, label=label(method, reward, gold))
    for _, p in peaks.iterrows():
        ax.plot(p["peak_sqrt_kl"], p["peak_gain"], "*", ms=11, color=style[p["method"]].colour,
                markeredgecolor="black", markeredgewidth=0.5)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("√(kl-to-base)")
    ax.set_ylabel(f"{gold} gain over the base model ({split} prompts)")
    ax.set_title("C6: gold against √KL, mean over seeds (★ = each method's peak)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_gain(curves: pd.DataFrame, gold: str, split: str, xcol: str):
    """The one-glance figure: gold gain over the base model against compute, a line per system with its 95% band
    over seeds, prompts and images; the y axis is robust (it follows the middle 98% of the points, so one collapsed
    method does not squash the others; points beyond are clipped to the edge and marked)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    style = looks(list(curves["method"]))
    lo, hi = np.nanpercentile(curves["gain"], [1, 99]) if len(curves) else (0, 0)
    pad = 0.1 * (hi - lo or 1)
    lo, hi = min(lo, 0) - pad, max(hi, 0) + pad
    for (method, reward), c in curves.groupby(["method", "reward"], sort=False):
        c = c.sort_values("x")
        look = style[method]
        y = c["gain"].clip(lo, hi)
        ax.plot(c["x"], y, look.marker, ls=":" if reward == gold else look.linestyle, ms=3, color=look.colour,
                label=label(method, reward, gold))
        ax.fill_between(c["x"], (c["gain"] - c["ci"]).clip(lo, hi), (c["gain"] + c["ci"]).clip(lo, hi),
                        color=look.colour, alpha=0.12)
        out = c[(c["gain"] < lo) | (c["gain"] > hi)]
        ax.plot(out["x"], out["gain"].clip(lo, hi), "v", color=look.colour, ms=6, mec="black", mew=0.4)
    ax.set_ylim(lo, hi)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(unit(xcol))
    ax.set_ylabel(f"{gold} gain over the base model ({split} prompts)")
    ax.set_title("Gold gain against compute (band: 95% interval over seeds, prompts and images; "
                 "▼: beyond the axis)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
