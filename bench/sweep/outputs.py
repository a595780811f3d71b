"""What `bench sweep` writes (sweep.json, selected.json, sensitivity.md/.csv, trials.csv) and what
`bench run --from-sweep` reads back: the selected configuration of every method, on fresh seeds and the test
prompts (see bench/sweep/protocol.py for the protocol)."""

from __future__ import annotations

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


def write_outputs(out: Path, s: SweepSettings) -> str:
    """selected.json, sensitivity.md/.csv and trials.csv from the studies; returns the Markdown table."""
    selected: dict[str, dict] = {}
    table, every = [], []
    for (m, r), trials in trial_records(out, s).items():
        chosen, row = summarise(trials, metric_direction(s.select[r]))
        table.append({"method": m, "reward": r, "metric": s.select[r], **row})
        if chosen is not None:
            selected.setdefault(m, {})[r] = {
                "values": chosen["values"], "score": chosen["score"], "trial": chosen["trial"],
                "seed_scores": chosen.get("seed_scores"), "folder": f"trials/{m}__{folder_name(r)}/{chosen['folder']}",
                "rule": RULE, "selection_metric": s.select[r], "split": SPLIT}
        every += [{"method": m, "reward": r, "trial": t["trial"], "folder": t.get("folder"),
                   "values": " ".join(f"{k}={v}" for k, v in t["values"].items()), "score": t["score"],
                   "hacked": "" if t.get("hacked") is None else ",".join(t["hacked"]) or "no",
                   "error": t.get("error") or ""} for t in trials]
    write_json_atomic(out / "selected.json", {
        "rule": RULE, "selection_metric": s.select, "split": SPLIT, "sweep_seeds": s.sweep_seeds,
        "model": s.model, "budget": s.budget, "trials": s.trials, "sampler": s.sampler, "methods": selected})
    _write_csv(out / "sensitivity.csv", table)
    _write_csv(out / "trials.csv", every)
    metrics = ", ".join(f"{m} {'↑' if metric_direction(m) else '↓'} (training on {r})" for r, m in s.select.items())
    md = [f"Selection by {metrics} on the {SPLIT} prompts, sweep seeds {','.join(map(str, s.sweep_seeds))}; "
          f"{s.trials} trials per method ({s.sampler}), {s.budget} per run. Rule: {RULE}.", "",
          "| method | reward | metric | trials | stopped | min | median | max | hacked | selected |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        hacked = "n/a" if row["hacked"] is None else f"{row['hacked']:.0%}"
        md.append(f"| {row['method']} | {row['reward']} | {row['metric']} | {row['trials']} | {row['stopped']} | "
                  f"{_fmt(row['min'])} | {_fmt(row['median'])} | {_fmt(row['max'])} | {hacked} | {row['selected']} |")
    md += ["", "min / median / max: the trials' selection scores; stopped: trials ended by a non-finite loss (scored "
           "worst); hacked: share of trials in which some seed's run raised the training reward while another "
           "metric got worse beyond its CI on the validation prompts (bench.analysis.judge); every trial is in trials.csv."]
    text = "\n".join(md) + "\n"
    _write_text(out / "sensitivity.md", text)
    return text


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


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


