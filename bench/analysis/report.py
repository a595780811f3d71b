"""Tables, plots and image grids from a suite folder (``bench report SUITE``).

Reads files only, through bench.results.io and bench.results.schema (the runner's typed schema), and never imports torch: a
report can be built on a laptop from results copied off a GPU machine, also while the suite is still running.
Everything goes into SUITE/report unless told otherwise, each file written atomically:

- ``table.md``, ``table.csv``, ``table.tex``: one row per (method, training reward) over seeds (see
  bench.analysis.table): per metric the reported split's value at each run's last evaluation point, the peak of
  the selection metric and the KL where it peaked, and the metrics hacked (bench.analysis.judge) in a majority of seeds;
- ``frontier_<reward>.png``: every other metric against √KL from the base model, per seed (Gao et al. 2022);
- ``pareto_<reward>.png``: for a training reward that is a sum of two terms (``pickscore+0.5*hpsv2``), each
  method's last point in the plane of the two terms, the base model and the front of the undominated methods;
- ``metric_<name>.png``: the reported split's value against compute, one line per (method, reward), 95% CI band;
- ``overfitting.png``: the training reward on train prompts (solid) and the reported split (dashed);
- ``reward_vs_divergence.png``: the training reward on the reported split against the KL from the base model;
- ``grid_<method>__<reward>.png``: the first seed's sample grids at the start, middle and end;
- ``human_eval.json``: when the suite has votes (``bench human-eval``), their analysis (bench.human_eval.analysis),
  also shown in index.md's "Human evaluation" section;
- ``index.md``: the protocol, the budget, model, methods, rewards and seeds, every command that contributed to the
  suite (time, git revision, device, package versions), the table, the plots and a legend.

Decisions worth knowing:
- The reported split is "test" when the suite has one (protocol 2), else "heldout" (protocol 1 folders), else
  "validation" (a sweep trial); the legend names it. A suite's protocol is its manifest's "protocol" (absent: 1).
- A run's "final" value is taken at its own last evaluation point, so an unfinished run counts where it
  stopped; its group is marked "incomplete" and the CSV gives the number of seeds behind each mean.
- A run evaluated twice at one point (resumed after a crash) counts with the row written last.
- Fractions are rounded to 4 decimals before seeds are aligned on them.
- The x axis is NFE per sample when every run's budget is counted in NFE, training FLOPs when every one is
  counted in FLOPs (and the rows have them), otherwise device seconds.
- A folder under runs/ without config.json (a run being created) is skipped with a note in index.md.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis import judge
from bench.analysis.plots import (
    Style,
    frontier_metrics,
    plot_frontier,
    plot_metric,
    plot_overfitting,
    plot_pareto,
    plot_reward_vs_divergence,
    sample_grid,
    save_fig,
)
from bench.analysis.ranking import final_scores
from bench.analysis.table import GROUP, KL, build_table, display_table, latex_table, markdown_table, pm
from bench.core.errors import BenchError
from bench.core.objective import parse, trained_metrics
from bench.registry.catalog import MODEL_DEFAULTS
from bench.results import schema
from bench.results.io import read_json, read_jsonl, write_bytes_atomic

EVAL_NEEDED, EVAL_OPTIONAL = list(schema.EVAL_REQUIRED), list(schema.EVAL_OPTIONAL)  # optional: absent in older folders
SPLIT_MEANING = {"test": "test prompts, used for neither training nor selection",
                 "heldout": "held-out prompts of a protocol-1 folder, which has no test split",
                 "validation": "validation prompts, which selection also used (a sweep trial): optimistic"}
LEGEND = ("↑ higher is better, ↓ lower is better. `a ± b`: the mean over seeds, prompts and images ± the half-width "
          "of its 95% interval over every source of noise the runs kept — seeds, prompts and images for per-image "
          "metrics, seeds for set metrics (table.csv's `<metric>_ci_over`; docs/protocol.md §6). Metric values are "
          "on the reported split, **{split}** ({meaning}), at each run's last evaluation point. "
          "**peak**: the best value of the selection metric ({select}) over each run's evaluation points, base "
          "model included, and the {kl} where it occurred, mean over seeds: chosen on the reported split itself, "
          "so it is an oracle early stop, an upper bound. **hacked**: the metrics that, in more than half of the "
          "row's seeds, got worse from the base model to the last evaluation point while the training reward "
          "improved by any amount (Gao et al. 2022), by more than 1.96·√(se₀² + se₁²), or, for a metric "
          "without a standard error (set metrics such as diversity, or clean-FID), by more than {rel:.0%} of its base value. "
          "**Bold** marks a row significantly better than every other row not flagged hacked (paired comparisons, "
          "Holm-corrected: comparisons.md); when the best cannot be told apart from the runner-up nothing is bold — "
          "a tie. A hacked row is never bold. The first row is the base model (fraction 0). "
          "Compute is the mean over seeds of the final training compute.")


def compare_rows(finals: dict, table: pd.DataFrame, metrics: list[str],
                 hib: dict[str, bool]) -> tuple[str, dict[str, str | None]]:
    """comparisons.md (every pair of rows per metric, paired and Holm-corrected over the metric's pairs: wins,
    ties, losses and the minimum detectable difference) and, per metric, the row that is not flagged hacked and is
    significantly better than every other such row (the one to bold), or None: a tie."""
    from bench.analysis.ranking import detectable, paired, ranking

    rows = {f"{m}@{r}": bool(h) for m, r, h in zip(table["method"], table["reward"], table["hacked"])
            if m != "base model"}
    lines, significant = ["# Pairwise comparisons (bench report)\n",
                          "Every pair of rows, per metric, on the reported split at each run's last evaluation: "
                          "paired (the same prompts, images and seeds), Holm-corrected over the metric's pairs; a "
                          "difference with corrected p < 0.05 is a win, anything else a tie. Bold in the table: the "
                          "row not flagged hacked that wins against every other such row (at least one).\n"], {}
    for m in metrics:
        per, over = finals.get(m, ({}, "seeds"))
        scores = paired({k: v for k, v in per.items() if k in rows})
        significant[m] = None
        if len(scores) < 2:
            lines.append(f"## {m}\n\nNo comparison: fewer than two rows with scores on common seeds.\n")
            continue
        higher = hib.get(m, True)
        ranked, comps = ranking(scores, higher)
        clean = [k for k in ranked["system"] if not rows[k]]  # best first
        if clean:
            top = clean[0]
            beats = {c.b if c.a == top else c.a for c in comps if top in (c.a, c.b) and c.significant
                     and ((c.diff if c.a == top else -c.diff) > 0) == higher}
            # best of one is no finding: bold needs at least one other unhacked row, beaten significantly
            significant[m] = top if len(clean) > 1 and set(clean[1:]) <= beats else None
        lines += [f"## {m} ({'↑' if higher else '↓'}; over {over}; {ranked['seeds'].min()} common seeds)\n",
                  f"Minimum detectable difference: {detectable(comps):.4g}. Significantly best of the rows not "
                  f"flagged hacked: {significant[m] or 'none (a tie)'}.\n",
                  "| system | mean ± 95% CI | hacked | wins | ties | losses | significantly better than |",
                  "|---|---|---|---|---|---|---|",
                  *(f"| {r['system']} | {pm(r['mean'], r['ci'])} | {'yes' if rows[r['system']] else ''} | "
                    f"{r['wins']} | {r['ties']} | {r['losses']} | {r['better than'] or '—'} |"
                    for r in ranked.to_dict("records")), ""]
    return "\n".join(lines) + "\n", significant


def build_report(suite_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the report of one suite folder (see bench.results.io for its layout); return the files written."""
    suite_dir = Path(suite_dir)
    out_dir = Path(out_dir) if out_dir is not None else suite_dir / "report"
    runs, ev, notes = load_suite(suite_dir)
    manifest = read_manifest(suite_dir, notes)
    split = judge.reported_split(ev["split"].unique())
    if split is None:
        raise BenchError(f"no test, heldout or validation evaluation rows under {suite_dir / 'runs'}: "
                         f"nothing to report")
    metrics = metric_order(ev, runs)
    hib = higher_is_better(ev)
    xcol = x_column(runs, ev)
    select = selection_metrics(runs, ev, manifest)
    finals = {m: final_scores(runs, ev, m, split) for m in metrics}
    table = build_table(runs, ev, metrics, split, select, finals)
    comparisons, significant = compare_rows(finals, table, metrics, hib)
    header, cells, best = display_table(table, metrics, hib, significant)

    written = [_write_text(out_dir / "table.csv", table.to_csv(index=False)),
               _write_text(out_dir / "comparisons.md", comparisons),
               _write_text(out_dir / "table.md", markdown_table(header, cells, best)),
               _write_text(out_dir / "table.tex", latex_table(header, cells, best))]
    style = Style(runs)
    has_kl = ((ev["metric"] == KL) & (ev["split"] == split)).any()
    frontiers = []
    for reward in dict.fromkeys(runs["reward"]):
        if has_kl and frontier_metrics(ev[ev["reward"] == reward], reward, split):
            frontiers.append(save_fig(plot_frontier(ev, runs, reward, split, style, hib),
                                      out_dir / f"frontier_{_safe(reward)}.png"))
        else:
            notes.append(f"frontier_{_safe(reward)}.png skipped: no `{KL}` or no metric other than the "
                         f"training reward on the {split} split")
    paretos = []
    for reward in dict.fromkeys(runs["reward"]):
        terms = objective_terms(reward)
        if len(terms) != 2:
            continue
        shown = set(ev.loc[(ev["reward"] == reward) & (ev["split"] == split), "metric"])
        if set(terms) <= shown:
            paretos.append(save_fig(plot_pareto(ev, reward, terms, split, style, hib),
                                    out_dir / f"pareto_{_safe(reward)}.png"))
        else:
            notes.append(f"pareto_{_safe(reward)}.png skipped: {' or '.join(t for t in terms if t not in shown)} "
                         f"not evaluated on the {split} split")
    plots = [save_fig(plot_metric(ev, m, xcol, split, style, hib, runs), out_dir / f"metric_{_safe(m)}.png")
             for m in metrics]
    plots.append(save_fig(plot_overfitting(ev, runs, xcol, split, style, hib), out_dir / "overfitting.png"))
    if has_kl:
        plots.append(save_fig(plot_reward_vs_divergence(ev, runs, split, style, hib),
                              out_dir / "reward_vs_divergence.png"))
    else:
        notes.append(f"reward_vs_divergence.png skipped: no `{KL}` evaluation rows on the {split} split")
    grids = []
    for (method, reward), g in runs.groupby(GROUP):
        fig = sample_grid(g.sort_values("seed").iloc[0], ev, xcol, notes)
        if fig is not None:
            grids.append(save_fig(fig, out_dir / f"grid_{_safe(method)}__{_safe(reward)}.png"))
    written += frontiers + paretos + plots + grids
    legend = LEGEND.format(split=split, meaning=SPLIT_MEANING[split], kl=KL, rel=judge.REL_TOL,
                           select=", ".join(f"{s} for {r}" for r, s in select.items() if s) or "none")
    index = index_markdown(suite_dir, manifest, runs, markdown_table(header, cells, best), legend,
                           frontiers, plots, grids, notes, paretos)
    from bench.human_eval.analysis import add_section, report_section  # torch-free; nothing without votes

    human, human_files = report_section(suite_dir, out_dir)
    index, written = add_section(index, human), written + human_files
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
    for k in EVAL_OPTIONAL:
        if k not in ev.columns:
            ev[k] = math.nan
    ev = ev[["run_id", *EVAL_NEEDED, *EVAL_OPTIONAL]].copy()
    for k in ("fraction", "nfe", "seconds", "value", "stderr", "flops", "budget_used"):
        ev[k] = pd.to_numeric(ev[k], errors="coerce")
    ev = ev.dropna(subset=["fraction"])
    ev["fraction"] = ev["fraction"].round(4)
    ev["metric"] = ev["metric"].astype(str)
    ev["split"] = ev["split"].astype(str)
    ev = ev.drop_duplicates(["run_id", "fraction", "split", "metric"], keep="last")
    return runs, ev.merge(runs[["run_id", *GROUP, "seed"]], on="run_id"), notes


def _run_record(d: Path) -> dict[str, Any]:
    """A run's identity from its config.json; its final compute from summary.json, or the last train row."""
    cfg = schema.RunConfig.from_json(read_json(d / "config.json"), d / "config.json")
    complete = (d / "summary.json").exists()
    # A train row carries the same counters as a summary at its top level (schema.TrainRow, schema.Summary).
    last = schema.Summary.from_json(read_json(d / "summary.json") if complete
                                    else (read_jsonl(d / "train.jsonl") or [{}])[-1]).counters
    return {"run_id": d.name, "method": cfg.method, "reward": cfg.reward, "seed": cfg.seed,
            "beta": cfg.method_config.get("beta"), "model": cfg.model.get("name"), "protocol": _num(cfg.protocol),
            "budget_kind": cfg.budget.get("kind", "nfe"), "budget": budget_text(cfg.budget),
            "complete": complete, "nfe": _num(last.get("nfe")), "seconds": _num(last.get("seconds")),
            "flops": _num(last.get("flops")), "dir": d}


def budget_text(budget: dict) -> str:
    """A budget as it was given ("400nfe"), from schema.Manifest.budget / RunConfig.budget."""
    return str(budget.get("text") or f"{budget.get('amount', '?')} {budget.get('kind', '')}".strip())


def read_manifest(suite_dir: Path, notes: list[str]) -> schema.Manifest:
    """The suite's manifest in any schema (bench/results/schema.py); an empty one, with a note, when there is none."""
    if not (suite_dir / "manifest.json").exists():
        notes.append("no manifest.json in the suite folder")
        return schema.Manifest(config={})
    return schema.Manifest.from_json(read_json(suite_dir / "manifest.json"), suite_dir / "manifest.json")


def metric_order(ev: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Training rewards first (in the order of the runs), each followed by its terms when it is a weighted sum of
    rewards (one column per term), then the other metrics alphabetically."""
    metrics = sorted(ev["metric"].unique())
    first = [m for r in dict.fromkeys(runs["reward"]) for m in [r, *objective_terms(r)] if m in metrics]
    first = list(dict.fromkeys(first))
    return first + [m for m in metrics if m not in first]


def objective_terms(reward: str) -> list[str]:
    """The terms' metric names of a weighted sum of rewards (bench/core/objective.py); [] for any other reward."""
    try:
        obj = parse(reward)
    except BenchError:
        return []
    return [t for t in obj.labels if t != reward] if obj is not None else []


def higher_is_better(ev: pd.DataFrame) -> dict[str, bool]:
    known = ev.dropna(subset=["higher_is_better"])
    return {m: bool(v) for m, v in known.groupby("metric")["higher_is_better"].last().items()}


def x_column(runs: pd.DataFrame, ev: pd.DataFrame) -> str:
    """The compute axis: the budget's own counter when every run shares it, else device seconds."""
    kinds = set(runs["budget_kind"])
    if kinds == {"nfe"}:
        return "nfe"
    if kinds == {"flops"} and ev["flops"].notna().any():
        return "flops"
    return "seconds"


def selection_metrics(runs: pd.DataFrame, ev: pd.DataFrame, manifest: schema.Manifest) -> dict[str, str | None]:
    """Per training reward, the metric the peak column reports (bench.analysis.judge.selection_metric): the model's
    MODEL_DEFAULTS "select" unless it is that reward, one the reward optimises, or was not evaluated; then its
    "rater" (a folder made before the testbed selected by testbed-pref-b selected by the gold); else the first
    other metric."""
    model = manifest.model or next((m for m in runs["model"] if isinstance(m, str)), None)
    defaults = MODEL_DEFAULTS.get(model, {}) if model else {}
    preferred = [m for m in (defaults.get("select"), defaults.get("rater")) if m]
    return {r: judge.selection_metric(r, metric_order(ev[ev["reward"] == r], runs), preferred,
                                      optimised=trained_metrics(r))
            for r in dict.fromkeys(runs["reward"])}


def protocol(manifest: schema.Manifest, runs: pd.DataFrame) -> int:
    """The manifest's "protocol", else the runs' (a suite without a manifest), else 1: the old protocol."""
    value = _num(manifest.protocol)
    if not np.isfinite(value) and runs["protocol"].notna().any():
        value = float(runs["protocol"].max())
    return int(value) if np.isfinite(value) else 1


# --------------------------------------------------------------------------------------------------- index

def index_markdown(suite_dir: Path, manifest: schema.Manifest, runs: pd.DataFrame, table_md: str, legend: str,
                   frontiers: list[Path], plots: list[Path], grids: list[Path], notes: list[str],
                   paretos: list[Path] = ()) -> str:
    lines = [f"# Benchmark report: {suite_dir.resolve().name}", "", *protocol_lines(manifest, runs),
             *manifest_lines(manifest, runs), "", "## Results", "", table_md, legend, ""]
    if frontiers:
        lines += ["## Frontiers", "", "Each metric the method was not trained on against √KL of the policy from "
                  "the base model (Gao et al. 2022), every evaluation point of every seed, one line per seed in "
                  "budget order; the dotted line is the base model. A better-regularised method gains more "
                  "before its curve turns down, or never turns down.", ""]
        lines += [f"![{p.stem}]({p.name})\n" for p in frontiers]
    if paretos:
        lines += ["## Two-term objectives", "", ("Each method's last evaluation point in the plane of the two terms "
                  "it was trained on (mean over seeds with 95% CI bars, the seeds faint), the base model (star), and "
                  "the dashed front of the methods that no other beats on both terms: which trade-off each method "
                  "bought, not only how much of the weighted sum."), ""]
        lines += [f"![{p.stem}]({p.name})\n" for p in paretos]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})\n" for p in plots]
    if grids:
        lines += ["## Samples", ""] + [f"![{g.stem}]({g.name})\n" for g in grids]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def protocol_lines(manifest: schema.Manifest, runs: pd.DataFrame) -> list[str]:
    """The protocol version, for protocol 1 a warning that the folder predates the fair protocol, and for protocol 2
    a note that its counts and KLs are measured otherwise than protocol 3's."""
    version = protocol(manifest, runs)
    lines = [f"- **protocol**: {version}"]
    if version < 2:
        ev = manifest.config.get("eval")
        n = ev.get("max_prompts") if isinstance(ev, dict) else None
        first = f"the first {n} prompts" if n else "the first prompts"
        lines = [f"> **Warning: protocol {version}.** This folder was made before the fair protocol: evaluation "
                 f"on {first} of each split, no validation split, denoiser-only compute. It is kept for "
                 f"reference only.", "", *lines]
    elif version == 2:
        lines = ["> **Note: protocol 2.** Its count budgets also charged the sampler's checkpoint recomputation, and "
                 "its kl-to-base left out the final sampling step: compare its compute and KL columns only with "
                 "protocol-2 folders (docs/protocol.md).", "", *lines]
    return lines


def manifest_lines(manifest: schema.Manifest, runs: pd.DataFrame) -> list[str]:
    """The suite's budget, model, methods, rewards and seeds, then every command that contributed to it (oldest
    first) with its time, git revision and device, and the package versions (once if every command shares them)."""
    budget = budget_text(manifest.budget) if manifest.budget else ", ".join(dict.fromkeys(runs["budget"]))
    config = manifest.config
    listed = lambda key, fallback: ", ".join(map(str, config.get(key) or fallback))  # noqa: E731
    lines = [f"- **budget**: `{budget}` of training compute per run (evaluation is not charged)",
             f"- **model**: {manifest.model or ', '.join(map(str, dict.fromkeys(runs['model'].dropna()))) or '?'}",
             f"- **methods**: {listed('methods', dict.fromkeys(runs['method']))}",
             f"- **rewards**: {listed('rewards', dict.fromkeys(runs['reward']))}",
             f"- **seeds**: {listed('seeds', sorted(set(runs['seed'])))}"]
    commands = manifest.commands
    versions = [_describe(c.versions) for c in commands]
    shared = len(set(versions)) == 1 and versions[0]
    if commands:
        lines.append(f"- **commands** ({len(commands)}, oldest first):")
    for i, c in enumerate(commands, 1):
        about = [c.time, f"git `{c.git}`" if c.git else "", c.device, "" if shared else _describe(c.versions), c.note]
        lines.append(f"  {i}. `{_describe(c.argv) or '(not recorded)'}` — " + "; ".join(a for a in about if a))
    if shared:
        lines.append(f"- **versions**: {shared}")
    digests = {tuple(sorted(c.weights.items())) for c in commands if c.weights}
    if digests:  # a folder whose commands ran on different testbed weights does not hold one experiment
        lines.append("- **testbed weights** (sha256, first 12 hex): " + " | ".join(
            ", ".join(f"{name.removesuffix('.safetensors')} {h[:12]}" for name, h in d) for d in sorted(digests))
            + (" — **the commands used different weights**" if len(digests) > 1 else ""))
    return lines


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return shlex.join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {_describe(v)}" for k, v in value.items())
    return str(value)


# ------------------------------------------------------------------------------------------------- helpers

def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _write_text(path: Path, text: str) -> Path:
    write_bytes_atomic(path, text.encode("utf-8"))
    return path
