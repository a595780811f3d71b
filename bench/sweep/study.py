"""One Optuna study of `bench sweep`: the trials of one method on one training reward, each a suite run on the
sweep seeds, scored on the validation prompts (bench/sweep/protocol.py); a killed study resumes.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.core.objective import folder_name
from bench.sweep.design import WIDEN_ROUNDS, design, edges, step_out
from bench.sweep.protocol import (
    SPLIT,
    SQLITE_BUSY_TIMEOUT_S,
    SweepSettings,
    base_suite,
    distributions,
    diverged,
    free_knobs,
    grid_points,
    hacked_metrics,
    make_sampler,
    metric_direction,
    run_score,
    storage_url,
    study_seed,
    trial_suite,
)


def release_memory() -> None:
    """Free the trial's models before the next one is built (real models would otherwise pile up on the GPU)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_se(dirs: list[Path], metric: str, fraction: float, seed_scores: list[float]) -> float:
    """The standard error of a trial's score: from the runs' per-image scores on the validation prompts where the
    metric has them (every source of noise: seeds, prompts, images; bench/analysis/stats.py), else over seeds."""
    from bench.analysis.stats import estimate
    from bench.results.scores import at_fraction, read_scores

    arrays = []
    for d in dirs:
        entry = at_fraction(read_scores(d), fraction)
        if entry is None or metric not in entry["scores"].get(SPLIT, {}):
            arrays = []
            break
        arrays.append(entry["scores"][SPLIT][metric])
    if arrays and all(np.isfinite(a).all() for a in arrays):
        return estimate(np.stack(arrays)).se
    return statistics.stdev(seed_scores) / math.sqrt(len(seed_scores)) if len(seed_scores) > 1 else math.nan


def run_trial(s: SweepSettings, method: str, reward: str, values: dict, folder: Path, argv: list[str]) -> dict:
    """Run one trial's suite: its score at every reported budget (the largest is `score`), per-seed scores, their
    standard errors, hacked metrics and any error, as user attributes."""
    from bench.run.runner import run_suite

    metric = s.select[reward]
    higher = metric_direction(metric)
    worst = -math.inf if higher else math.inf
    try:
        dirs = run_suite(trial_suite(s, method, reward, values), folder, argv=argv, show_progress=False)
    except BenchError as e:
        if not diverged(e):
            raise
        return {"score": worst, "seed_scores": {}, "scores": {}, "ses": {}, "hacked": None, "error": str(e)}
    finally:
        release_memory()
    scores, ses, by_seed = {}, {}, {}
    for budget in s.reported:
        f = s.fraction(budget)
        by_seed[budget] = {str(seed): run_score(d, metric, higher, f) for seed, d in zip(s.sweep_seeds, dirs)}
        mean = statistics.fmean(by_seed[budget].values())
        scores[budget] = mean if math.isfinite(mean) else worst
        ses[budget] = score_se(dirs, metric, f, list(by_seed[budget].values())) if math.isfinite(mean) else math.nan
    score = scores[s.reported[-1]]
    return {"score": score, "seed_scores": by_seed[s.reported[-1]], "scores": scores, "ses": ses,
            "seed_scores_by_budget": by_seed, "hacked": hacked_metrics(dirs, reward),
            "error": None if math.isfinite(score) else "non-finite score"}


def open_study(out: Path, method: str, reward: str, higher: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # several processes (studies as Ray tasks) write the file: wait for the SQLite lock rather than fail
    storage = optuna.storages.RDBStorage(storage_url(out),
                                         engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}})
    return optuna.create_study(storage=storage, study_name=f"{method}__{reward}", load_if_exists=True,
                               direction="maximize" if higher else "minimize")


def trial_line(s: SweepSettings, method: str, reward: str, number: int, folder: str, values: dict, attrs: dict,
               best_value: float) -> str:
    """The line shown when a trial ends."""
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    note = f" ({attrs['error']})" if attrs["error"] else ""
    resumed = f" (resumes {folder})" if folder.startswith("trial-") and folder != f"trial-{number}" else ""
    return (f"{method} {reward} trial {number}{resumed}: {shown} -> {s.select[reward]} {attrs['score']:.4g}{note}; "
            f"best {best_value:.4g}")


def recover(study) -> int:
    """Trials left RUNNING belong to a killed sweep (the lock says no other is alive): mark them failed and
    enqueue their parameters again, with their folder so that run_suite reuses the runs they completed."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        folder = t.user_attrs.get("folder", f"trial-{t.number}")
        study.enqueue_trial(t.params, user_attrs={"folder": folder, "resumes": t.number})
    return len(stale)


def run_study(s: SweepSettings, method: str, reward: str, out: Path, argv: list[str], report) -> None:
    """The study of one method and reward: the protocol's design (run_designed_study), or Optuna's sampler."""
    if s.sampler == "protocol":
        return run_designed_study(s, method, reward, out, argv, report)
    return run_sampled_study(s, method, reward, out, argv, report)


def run_sampled_study(s: SweepSettings, method: str, reward: str, out: Path, argv: list[str], report) -> None:
    """Complete the study of one method and reward up to `s.trials` trials; after each, `report(trials done,
    trial number, folder, values, attrs, best score so far)`."""
    from optuna.trial import TrialState

    suite = base_suite(s, [method], reward, s.sweep_seeds)
    knobs = free_knobs(method, suite)
    higher = metric_direction(s.select[reward])
    study = open_study(out, method, reward, higher)
    recover(study)
    seed = study_seed(method, reward)
    grid = grid_points(knobs, s.trials, seed) if s.sampler == "grid" else None
    dists = distributions(knobs, grid)
    while (done := len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))) < s.trials:
        if grid is not None and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.enqueue_trial(grid[done])
        study.sampler = make_sampler(s.sampler, (seed + 7919 * done) % 2**32, s.trials)  # same proposal on resume
        trial = study.ask(dists)
        folder = trial.user_attrs.get("folder", f"trial-{trial.number}")
        trial.set_user_attr("folder", folder)
        attrs = run_trial(s, method, reward, dict(trial.params),
                          out / "trials" / f"{method}__{folder_name(reward)}" / folder, argv)
        for key, value in attrs.items():
            trial.set_user_attr(key, finite_or_none(value))
        study.tell(trial, attrs["score"])
        report(done + 1, trial.number, folder, dict(trial.params), attrs, study.best_value)


# ---- the protocol's designed studies ------------------------------------------------------------------------
def planned_trials(s: SweepSettings, method: str, reward: str) -> int:
    """Trials a study runs before any widening: the protocol's design size, or `trials`."""
    if s.sampler != "protocol":
        return s.trials
    return len(design(free_knobs(method, base_suite(s, [method], reward, s.sweep_seeds)), s.lr_points))


def point_key(values: dict) -> str:
    """A design point's identity (the same values, however they were produced)."""
    return json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True)


def point_folder(values: dict) -> str:
    """A design point's trial folder: named by its values, so a killed sweep's runs are found and resumed."""
    return "p-" + "_".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items()))


def completed(study) -> list[dict]:
    """The completed trials of a study as {"trial", "values", "score", **user attributes}, oldest first."""
    from optuna.trial import TrialState

    return [{**t.user_attrs, "trial": t.number, "values": dict(t.params), "score": t.value}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def best_at(trials: list[dict], budget: str, higher: bool) -> dict | None:
    """The best trial at a reported budget (finite scores only; ties to the earlier trial)."""
    scored = [t for t in trials if isinstance((t.get("scores") or {}).get(budget), float)
              and math.isfinite(t["scores"][budget])]
    if not scored:
        return None
    top = (max if higher else min)(t["scores"][budget] for t in scored)
    return min((t for t in scored if t["scores"][budget] == top), key=lambda t: t["trial"])


def widening_points(s: SweepSettings, method: str, reward: str, knobs: dict, trials: list[dict]) -> list[dict]:
    """One step further out for every knob at an edge of a reported budget's selection (bench/sweep/design.py),
    the selection's other values kept; values a method's config refuses are left out (the edge is exhausted)."""
    from bench.run.config import method_config

    higher = metric_direction(s.select[reward])
    tried = {point_key(t["values"]) for t in trials}
    new: dict[str, dict] = {}
    for budget in s.reported:
        best = best_at(trials, budget, higher)
        if best is None:
            continue
        for name in edges(best["values"], [t["values"] for t in trials]):
            value = step_out(name, knobs.get(name), [t["values"][name] for t in trials if name in t["values"]],
                             best["values"][name])
            point = {**best["values"], name: value}
            if value is None or point_key(point) in tried | set(new):
                continue
            try:
                _, cfg = method_config(method, trial_suite(s, method, reward, point))
                cfg.validate(method, trial_suite(s, method, reward, point).sampler)
            except BenchError:
                continue
            new[point_key(point)] = point
    return list(new.values())


def run_designed_study(s: SweepSettings, method: str, reward: str, out: Path, argv: list[str], report) -> None:
    """Every design point of the protocol (bench/sweep/design.py) for one method and reward, then up to
    WIDEN_ROUNDS rounds of one step further out where a reported budget's selection sits at an edge of what was
    tried. Points already completed (a rerun of a killed sweep) are skipped; after each trial `report(trials done,
    trial number, folder, values, attrs, best score so far)`."""
    from optuna.trial import create_trial

    knobs = free_knobs(method, base_suite(s, [method], reward, s.sweep_seeds))
    higher = metric_direction(s.select[reward])
    study = open_study(out, method, reward, higher)

    def run(points: list[dict]) -> None:
        for values in points:
            if point_key(values) in {point_key(t["values"]) for t in completed(study)}:
                continue
            folder = point_folder(values)
            attrs = run_trial(s, method, reward, values, out / "trials" / f"{method}__{reward}" / folder, argv)
            attrs["folder"] = folder
            study.add_trial(create_trial(
                params=values, distributions={k: recorded(knobs.get(k)) for k in values},
                value=attrs["score"], user_attrs={k: finite_or_none(v) for k, v in attrs.items()}))
            trials = completed(study)
            best = best_at(trials, s.reported[-1], higher)
            report(len(trials), trials[-1]["trial"], folder, values, attrs,
                   best["score"] if best else attrs["score"])

    run(design(knobs, s.lr_points))
    for _ in range(WIDEN_ROUNDS):
        extra = widening_points(s, method, reward, knobs, completed(study))
        if not extra:
            break
        run(extra)


def recorded(knob):
    """The distribution a designed trial's value is recorded under in Optuna's storage: one per knob for the
    whole study (Optuna requires it), wide enough for every widened value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if knob is None or not knob.choices and knob.log:  # the learning rate, log knobs: any positive value
        return FloatDistribution(1e-30, 1e30, log=True)
    if knob.choices:
        return CategoricalDistribution(list(knob.choices))
    if knob.integer:
        return IntDistribution(-10**9, 10**9)
    return FloatDistribution(-1e30, 1e30)


def finite_or_none(value):
    """A user attribute as JSON stores it: non-finite floats (also inside dicts) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value
