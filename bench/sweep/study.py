"""One Optuna study of `bench sweep`: the trials of one method on one training reward, each a suite run on the
sweep seeds, scored on the validation prompts (bench/sweep/protocol.py); a killed study resumes.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.objective import folder_name
from bench.sweep.protocol import (
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


def run_trial(s: SweepSettings, method: str, reward: str, values: dict, folder: Path, argv: list[str]) -> dict:
    """Run one trial's suite; its score, per-seed scores, hacked metrics and any error, as user attributes."""
    from bench.run.runner import run_suite

    higher = metric_direction(s.select[reward])
    worst = -math.inf if higher else math.inf
    try:
        dirs = run_suite(trial_suite(s, method, reward, values), folder, argv=argv, show_progress=False)
    except BenchError as e:
        if not diverged(e):
            raise
        return {"score": worst, "seed_scores": {}, "hacked": None, "error": str(e)}
    finally:
        release_memory()
    seed_scores = {str(seed): run_score(d, s.select[reward], higher) for seed, d in zip(s.sweep_seeds, dirs)}
    score = statistics.fmean(seed_scores.values())
    return {"score": score if math.isfinite(score) else worst, "seed_scores": seed_scores,
            "hacked": hacked_metrics(dirs, reward), "error": None if math.isfinite(score) else "non-finite score"}


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
    resumed = "" if folder == f"trial-{number}" else f" (resumes {folder})"
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
            trial.set_user_attr(key, value if not (isinstance(value, float) and not math.isfinite(value)) else None)
        study.tell(trial, attrs["score"])
        report(done + 1, trial.number, folder, dict(trial.params), attrs, study.best_value)
