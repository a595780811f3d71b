"""What `bench sweep` writes (sweep.json, selected.json, sensitivity.md/.csv, trials.csv) and what
`bench run --from-sweep` reads back: the selected configuration of every method, on fresh seeds and the test
prompts (see bench/sweep/protocol.py for the protocol)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.objective import folder_name
from bench.results.io import read_json, write_json_atomic
from bench.sweep.protocol import (
    RULE,
    SPLIT,
    SWEEP_SPLITS,
    SweepSettings,
    base_suite,
    free_knobs,
    metric_direction,
    storage_url,
)


def settings_record(s: SweepSettings) -> dict:
    """sweep.json: the settings, the declared rule and every method's knob ranges."""
    import json

    suite = base_suite(s, s.methods, s.rewards[0], s.sweep_seeds)
    knobs = {m: {k: asdict(v) for k, v in free_knobs(m, suite).items()} for m in s.methods}
    record = {**asdict(s), "selection_split": SPLIT, "eval_splits": list(SWEEP_SPLITS), "rule": RULE,
              "higher_is_better": {r: metric_direction(m) for r, m in s.select.items()}, "knobs": knobs}
    return json.loads(json.dumps(record))  # tuples as lists, as they read back


def save_settings(out: Path, s: SweepSettings) -> SweepSettings:
    """Write DIR/sweep.json, or check a rerun against it (methods may be added). Returns the merged settings."""
    path, new = out / "sweep.json", settings_record(s)
    if path.exists():
        old = read_json(path)
        if not isinstance(old, dict) or not isinstance(old.get("knobs"), dict):
            raise BenchError(f"corrupt sweep settings {path}: not written by bench sweep")
        differ = sorted(k for k in {*old, *new} - {"methods", "knobs"} if old.get(k) != new.get(k))
        differ += [f"knobs of {m}" for m, v in new["knobs"].items() if old.get("knobs", {}).get(m, v) != v]
        if differ:
            raise BenchError(f"{out} holds a sweep with different settings ({', '.join(differ)}; see {path}); "
                             f"choose another --out")
        s.methods = list(dict.fromkeys([*old["methods"], *s.methods]))
        new = {**new, "methods": s.methods, "knobs": {**old["knobs"], **new["knobs"]}}
    write_json_atomic(path, new)
    return s


def load_settings(sweep_dir: Path) -> SweepSettings:
    if not (sweep_dir / "sweep.json").is_file():
        raise BenchError(f"not a sweep folder: {sweep_dir} (no sweep.json); run bench sweep --out {sweep_dir} first")
    rec = read_json(sweep_dir / "sweep.json")
    try:
        return SweepSettings(**{k: rec[k] for k in SweepSettings.__dataclass_fields__})
    except (KeyError, TypeError):
        raise BenchError(f"corrupt sweep settings {sweep_dir / 'sweep.json'}: not written by bench sweep") from None


def trial_records(out: Path, s: SweepSettings) -> dict[tuple[str, str], list[dict]]:
    """Completed trials of every study in the folder, by (method, reward)."""
    import optuna
    from optuna.trial import TrialState

    names = set(optuna.get_all_study_names(storage_url(out)))
    records = {}
    for m in s.methods:
        for r in s.rewards:
            if f"{m}__{r}" not in names:
                continue
            study = optuna.load_study(study_name=f"{m}__{r}", storage=storage_url(out))
            records[(m, r)] = [{**t.user_attrs, "trial": t.number, "values": t.params, "score": t.value}
                               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return records


def best_trial(trials: list[dict], higher: bool) -> dict | None:
    """The best finite score in the direction, ties to the earlier trial; None if every trial was stopped."""
    finite = [t for t in trials if math.isfinite(t["score"])]
    if not finite:
        return None
    top = (max if higher else min)(t["score"] for t in finite)
    return min((t for t in finite if t["score"] == top), key=lambda t: t["trial"])


def summarise(trials: list[dict], higher: bool) -> tuple[dict | None, dict]:
    """The selected trial (None if every trial was stopped) and the sensitivity row of one study."""
    chosen = best_trial(trials, higher)
    scores = [t["score"] for t in trials if math.isfinite(t["score"])]
    judged = [t for t in trials if t.get("hacked") is not None]
    return chosen, {"trials": len(trials), "stopped": len(trials) - len(scores),
                    "min": min(scores, default=None), "median": statistics.median(scores) if scores else None,
                    "max": max(scores, default=None),
                    "hacked": sum(bool(t["hacked"]) for t in judged) / len(judged) if judged else None,
                    "selected": " ".join(f"{k}={_fmt(v)}" for k, v in (chosen or {}).get("values", {}).items())}


def scores_of(trial: dict, s: SweepSettings) -> dict[str, float]:
    """A trial's score at every reported budget (a sampled study's trials know only the run's last point)."""
    raw = trial.get("scores") or {s.reported[-1]: trial["score"]}
    return {b: (v if isinstance(v, (int, float)) else math.nan) for b, v in raw.items()}


def selection(trials: list[dict], s: SweepSettings, budget: str, higher: bool, knobs: dict) -> dict | None:
    """The selection at one reported budget with its flags: `tie` when the margin over the runner-up is below
    the winner's standard error (they cannot be told apart), `edges` where a selected value is the lowest or
    highest value tried for its knob (with the next value out, or None where none exists)."""
    from bench.sweep.design import edges, step_out

    scored = [(scores_of(t, s).get(budget, math.nan), t) for t in trials]
    scored = sorted(((v, t) for v, t in scored if math.isfinite(v)), key=lambda vt: (-vt[0] if higher else vt[0],
                                                                                    vt[1]["trial"]))
    if not scored:
        return None
    (score, best), runner = scored[0], scored[1] if len(scored) > 1 else None
    se = ((best.get("ses") or {}).get(budget))
    se = se if isinstance(se, (int, float)) and math.isfinite(se) else math.nan
    margin = abs(score - runner[0]) if runner else math.nan
    at_edge = edges(best["values"], [t["values"] for t in trials])
    return {"values": best["values"], "score": score, "se": se, "trial": best["trial"],
            "seed_scores": (best.get("seed_scores_by_budget") or {}).get(budget, best.get("seed_scores")),
            "folder": best.get("folder"), "margin": margin,
            "tie": bool(runner) and math.isfinite(se) and margin < se,
            "runner_up": {"trial": runner[1]["trial"], "values": runner[1]["values"], "score": runner[0]}
            if runner else None,
            "edges": {k: {"side": side, "next": step_out(k, knobs.get(k), [
                t["values"][k] for t in trials if k in t["values"]], best["values"][k])}
                for k, side in at_edge.items()}}


def write_outputs(out: Path, s: SweepSettings) -> str:
    """selected.json, sensitivity.md/.csv and trials.csv from the studies; returns the Markdown table."""
    selected: dict[str, dict] = {}
    table, every = [], []
    for (m, r), trials in trial_records(out, s).items():
        higher = metric_direction(s.select[r])
        _, row = summarise(trials, higher)
        knobs = free_knobs(m, base_suite(s, [m], r, s.sweep_seeds))
        by_budget = {b: sel for b in s.reported if (sel := selection(trials, s, b, higher, knobs)) is not None}
        final = by_budget.get(s.reported[-1])
        if final is not None:
            selected.setdefault(m, {})[r] = {
                **final, "folder": f"trials/{m}__{folder_name(r)}/{final['folder']}", "rule": RULE,
                "selection_metric": s.select[r], "split": SPLIT, "by_budget": by_budget}
        for b, sel in by_budget.items():
            table.append({"method": m, "reward": r, "budget": b, "metric": s.select[r], **row,
                          "selected": " ".join(f"{k}={_fmt(v)}" for k, v in sel["values"].items()),
                          "score": sel["score"], "se": sel["se"], "tie": sel["tie"],
                          "edges": ",".join(f"{k}:{e['side']}" + ("" if e["next"] is not None else "(exhausted)")
                                            for k, e in sel["edges"].items())})
        for t in trials:
            scores = scores_of(t, s)
            every.append({"method": m, "reward": r, "trial": t["trial"], "folder": t.get("folder"),
                          "values": json.dumps(t["values"], sort_keys=True), "score": t["score"],
                          **{f"score@{b}": scores.get(b, math.nan) for b in s.reported},
                          **{f"se@{b}": (t.get("ses") or {}).get(b) for b in s.reported},
                          **{f"seeds@{b}": json.dumps((t.get("seed_scores_by_budget") or {}).get(b) or
                                                      t.get("seed_scores") or {}) for b in s.reported},
                          "hacked": "" if t.get("hacked") is None else ",".join(t["hacked"]) or "no",
                          "error": t.get("error") or ""})
    write_json_atomic(out / "selected.json", {
        "rule": RULE, "selection_metric": s.select, "split": SPLIT, "sweep_seeds": s.sweep_seeds,
        "model": s.model, "budget": s.budget, "budgets": s.reported, "trials": s.trials, "sampler": s.sampler,
        "lr_points": s.lr_points, "methods": selected})
    _write_csv(out / "sensitivity.csv", table)
    _write_csv(out / "trials.csv", every)
    metrics = ", ".join(f"{m} {'↑' if metric_direction(m) else '↓'} (training on {r})" for r, m in s.select.items())
    design = (f"the protocol's design ({s.lr_points} learning rates x each method's own knobs, edges widened)"
              if s.sampler == "protocol" else f"{s.trials} trials per method ({s.sampler})")
    md = [f"Selection by {metrics} on the {SPLIT} prompts, sweep seeds {','.join(map(str, s.sweep_seeds))}; "
          f"{design}, {s.budget} per run, selected at {', '.join(s.reported)}. Rule: {RULE}.", "",
          "| method | reward | budget | trials | stopped | min | median | max | hacked | selected | score ± se | "
          "tie | at an edge |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        hacked = "n/a" if row["hacked"] is None else f"{row['hacked']:.0%}"
        md.append(f"| {row['method']} | {row['reward']} | {row['budget']} | {row['trials']} | {row['stopped']} | "
                  f"{_fmt(row['min'])} | {_fmt(row['median'])} | {_fmt(row['max'])} | {hacked} | {row['selected']} "
                  f"| {_fmt(row['score'])}{_pm(row['se'])} | {'tie' if row['tie'] else ''} | "
                  f"{row['edges']} |")
    md += ["", "min / median / max: the trials' selection scores at the run's length; stopped: trials ended by a "
           "non-finite loss (scored worst); hacked: share of trials in which some seed's run raised the training "
           "reward while another metric got worse beyond its CI on the validation prompts (bench.analysis.judge); "
           "tie: the selection's margin over the runner-up is below its standard error; at an edge: a selected "
           "value is the lowest or highest tried for its knob ((exhausted): no value beyond it); every trial is "
           "in trials.csv."]
    text = "\n".join(md) + "\n"
    _write_text(out / "sensitivity.md", text)
    return text


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}" if isinstance(x, float) \
        else str(x)


def _pm(se: Any) -> str:
    """' ± se', or nothing where the score has no standard error (one sweep seed and no per-image scores)."""
    return f" ± {se:.4g}" if isinstance(se, float) and math.isfinite(se) else ""


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["method"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def _write_text(path: Path, text: str) -> None:
    from bench.results.io import write_bytes_atomic

    write_bytes_atomic(path, text.encode())


# ---- bench run --from-sweep -------------------------------------------------------------------------------
def load_selected(sweep_dir: Path) -> dict[str, dict[str, dict]]:
    """DIR/selected.json's methods: {method: {reward: {"values": {...}, ...}}}, checked."""
    if not (sweep_dir / "selected.json").is_file():
        raise BenchError(f"no selected.json in {sweep_dir}: the sweep has not completed a study yet")
    rec = read_json(sweep_dir / "selected.json")
    methods = rec.get("methods") if isinstance(rec, dict) else None
    ok = isinstance(methods, dict) and all(
        isinstance(by_reward, dict) and all(isinstance(e, dict) and isinstance(e.get("values"), dict)
                                            for e in by_reward.values()) for by_reward in methods.values())
    if not ok:
        raise BenchError(f"corrupt selection {sweep_dir / 'selected.json'}: not written by bench sweep")
    return methods


