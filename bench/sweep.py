"""`bench sweep`: the same tuning budget for every method, chosen on validation prompts and sweep seeds only.

For each method and training reward an Optuna study (DIR/optuna.db, named `<method>__<reward>`) runs exactly
`trials` completed trials. A trial is a suite run of that one method with the trial's knob values applied as
`--set <method>.<field>=<value>`, on the sweep seeds (default 100,101: disjoint from the reported 0,1,2),
evaluated on the train and validation prompts — the test prompts are never looked at while choosing.

Selection rule (RULE): a trial's score is the mean over sweep seeds of the selection metric on the validation
split at the run's last evaluation point, maximised or minimised by the metric's direction; the best trial
wins, ties going to the earlier one. The selection metric is never the training reward (selection_metric).
A trial whose training stops on a non-finite loss or gradient counts as a trial and scores worst (±inf), so
every method gets the same number of trials whatever its ranges. Knobs fixed with `--set` are not tuned.

Files (DIR):  sweep.json (settings)  optuna.db  trials/<method>__<reward>/trial-<n>/ (one suite folder each)
              selected.json (per method and reward: values, score, trial, rule)  sensitivity.md/.csv, trials.csv

Resume: one sweep per DIR at a time (a lock file). Trials a killed sweep left RUNNING are marked failed and
their parameters re-enqueued with the same trial folder, whose completed runs run_suite skips. Each trial's
sampler is seeded by (method, reward, number of trials done), so a resumed sweep proposes what an
uninterrupted one would have.

Parallel (`--executor ray`): the studies are independent — each reads only its own trials, its sampler is
seeded per study, each trial's runs are deterministic — so each study runs as one Ray task (its trials in order)
and the sweep's results equal a serial sweep's. The studies share optuna.db: the driver creates every study
before the tasks start (no two processes create the tables; bench/executors.py run_studies_on_ray), and every
connection waits up to SQLITE_BUSY_TIMEOUT_S for another process's write instead of failing with "database is
locked".
"""

from __future__ import annotations

import fcntl
import math
import os
import statistics
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from bench.errors import BenchError, unknown_name
from bench.results import read_jsonl

if TYPE_CHECKING:  # bench.method imports torch; this module stays light for the report
    from bench.method import Knob

SAMPLERS = ("tpe", "grid", "random")
SQLITE_BUSY_TIMEOUT_S = 600  # how long a write to optuna.db waits for another process's (parallel studies)
SPLIT = "validation"
SWEEP_SPLITS = ("train", SPLIT)
RULE = ("score = mean over sweep seeds of the selection metric on the validation split at the run's last "
        "evaluation point; the best score in the metric's direction wins, ties to the earlier trial; a trial "
        "stopped by a non-finite loss scores worst")


@dataclass
class SweepSettings:
    """Everything that defines a sweep (saved as DIR/sweep.json; a rerun must match it, methods may grow)."""

    methods: list[str]
    rewards: list[str]
    model: str
    budget: str
    trials: int
    sampler: str
    sweep_seeds: list[int]
    select: dict[str, str]
    """Selection metric by training reward (selection_metric, or --select)."""
    sets: list[str] = field(default_factory=list)
    device: str = "auto"


def selection_metric(model: str, reward: str) -> str:
    """The model's declared selection metric, unless that is the training reward: then the first of the model's
    default metrics that is neither the training reward nor kl-to-base (the report's rule, bench.judge)."""
    from bench.judge import selection_metric as pick
    from bench.registry import MODEL_DEFAULTS

    defaults = MODEL_DEFAULTS.get(model, {})
    chosen = pick(reward, defaults.get("metrics", []), defaults.get("select"))
    if chosen is None:
        raise BenchError(f"model '{model}' has no selection metric other than the training reward '{reward}'; "
                         f"pass --select METRIC")
    return chosen


def metric_direction(metric: str) -> bool:
    """True when higher is better (kl-to-base, computed by the harness, is lower-is-better)."""
    from bench.registry import metric_class

    return False if metric == "kl-to-base" else bool(metric_class(metric).higher_is_better)


def method_knobs(method: str, suite) -> dict[str, Knob]:
    """Absolute knob ranges of a registered entry under the suite's `--set`s (which may move a relative range,
    e.g. ROCM's β, centred on D × β where the per-dimension divergence applies to a D-dimensional latent)."""
    from bench.config import method_config
    from bench.registry import latent_dims

    _, cfg = method_config(method, suite)
    return dict(cfg.resolved_knobs(latent_dims(suite.model.name, suite.model.resolution)))


def free_knobs(method: str, suite) -> dict[str, Knob]:
    """The knobs of `method` that no `--set` fixes (`method.`, family and entry prefixes all fix a field)."""
    from bench.config import family
    from bench.registry import METHODS

    sets = suite.method_sets
    fixed = {f for prefix in ("method", family(METHODS[method][0]), method) for f in sets.get(prefix, {})}
    knobs = {k: v for k, v in method_knobs(method, suite).items() if k not in fixed}
    if not knobs:
        raise BenchError(f"method '{method}' has no knobs to tune" + (" (all fixed by --set)" if fixed else ""))
    return knobs


def value_text(value: Any) -> str:
    """A knob value as a `--set` string (repr of floats round-trips exactly)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---- search space -----------------------------------------------------------------------------------------
def grid_values(knob: Knob, n: int) -> list:
    """n points over a numeric knob's range (log-spaced when `log`), or its choices."""
    if knob.choices:
        return list(knob.choices)
    lo, hi = (math.log(knob.low), math.log(knob.high)) if knob.log else (knob.low, knob.high)
    points = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    points = [math.exp(p) for p in points] if knob.log else points
    if knob.integer:
        return sorted({int(round(p)) for p in points})
    return [float(f"{p:.6g}") for p in points]


def grid_points(knobs: dict[str, Knob], trials: int, seed: int) -> list[dict]:
    """A full grid with enough points per numeric knob for `trials` trials, in a seeded random order."""
    import itertools
    import random

    n_cat = math.prod(len(k.choices) for k in knobs.values() if k.choices)
    n_num = sum(1 for k in knobs.values() if not k.choices)
    n = max(2, math.ceil((trials / n_cat) ** (1 / n_num) - 1e-9)) if n_num else 0
    axes = {name: grid_values(k, n) for name, k in knobs.items()}
    grid = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    if len(grid) < trials:
        raise BenchError(f"the grid has {len(grid)} points, fewer than --trials {trials}; use --sampler tpe or random")
    random.Random(seed).shuffle(grid)
    return grid


def distributions(knobs: dict[str, Knob], grid: list[dict] | None) -> dict:
    """Optuna distributions: the grid's values as categories, or each knob's range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, k in knobs.items():
        if grid is not None:
            out[name] = CategoricalDistribution(sorted({p[name] for p in grid}, key=str))
        elif k.choices:
            out[name] = CategoricalDistribution(list(k.choices))
        elif k.integer:
            out[name] = IntDistribution(int(k.low), int(k.high), log=k.log)
        else:
            out[name] = FloatDistribution(k.low, k.high, log=k.log)
    return out


def study_seed(method: str, reward: str) -> int:
    """A seed that depends only on the study (Python's hash() changes between processes)."""
    return zlib.crc32(f"{method}__{reward}".encode())


def make_sampler(kind: str, seed: int, trials: int):
    import optuna

    if kind == "tpe":  # the first half of the trials are random, the rest model them
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, trials // 2))
    return optuna.samplers.RandomSampler(seed=seed)  # grid: every trial is enqueued, the sampler never draws


# ---- one trial --------------------------------------------------------------------------------------------
def base_suite(s: SweepSettings, methods: list[str], reward: str, seeds: list[int], extra_sets: list[str] = ()):
    """The suite every trial and final run of the sweep shares: its model, budget, device and `--set`s."""
    from bench.compute import Budget
    from bench.config import SuiteConfig, apply_sets
    from bench.models import ModelConfig

    suite = SuiteConfig(methods=list(methods), rewards=[reward], seeds=list(seeds), budget=Budget.parse(s.budget),
                        model=ModelConfig(name=s.model), device=s.device)
    apply_sets(suite, [*s.sets, *extra_sets])
    return suite


def trial_suite(s: SweepSettings, method: str, reward: str, values: dict[str, Any]):
    suite = base_suite(s, [method], reward, s.sweep_seeds)
    suite.eval.splits = SWEEP_SPLITS  # never the test prompts
    for name, value in values.items():
        suite.method_sets.setdefault(method, {})[name] = value_text(value)
    return suite


def run_score(run_dir: Path, metric: str, higher: bool) -> float:
    """The selection metric on the validation split at the run's last evaluation point."""
    rows = [r for r in read_jsonl(run_dir / "eval.jsonl") if r.get("split") == SPLIT and r.get("metric") == metric]
    if not rows:
        raise BenchError(f"{run_dir}: no {SPLIT} evaluation of '{metric}' (is it in eval.metrics?)")
    last = max(rows, key=lambda r: r["fraction"])
    if last.get("higher_is_better") is not None and bool(last["higher_is_better"]) != higher:
        raise BenchError(f"{run_dir}: '{metric}' rows disagree with its registered direction")
    return float("nan") if last["value"] is None else float(last["value"])


def hacked_metrics(run_dirs: list[Path], reward: str) -> list[str] | None:
    """Metrics that got worse beyond their CI while the trained reward rose, in any seed's run (bench.judge);
    None where bench.judge is not available."""
    try:
        from bench.judge import hacking
    except ImportError:
        return None
    import pandas as pd

    flagged: set[str] = set()
    for d in run_dirs:
        verdict = hacking(pd.DataFrame(read_jsonl(d / "eval.jsonl")), reward, SPLIT)
        flagged |= {m for m, bad in verdict.items() if bad}
    return sorted(flagged)


def diverged(error: BenchError) -> bool:
    """A training run stopped by its numbers (a knob's legitimate outcome), not by a mistake to fix."""
    from bench import errors

    kind = getattr(errors, "DivergedError", None)
    return (kind is not None and isinstance(error, kind)) or "non-finite" in str(error)


def release_memory() -> None:
    """Free the trial's models before the next one is built (real models would otherwise pile up on the GPU)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_trial(s: SweepSettings, method: str, reward: str, values: dict, folder: Path, argv: list[str]) -> dict:
    """Run one trial's suite; its score, per-seed scores, hacked metrics and any error, as user attributes."""
    from bench.runner import run_suite

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


# ---- studies ----------------------------------------------------------------------------------------------
def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


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
                          out / "trials" / f"{method}__{reward}" / folder, argv)
        for key, value in attrs.items():
            trial.set_user_attr(key, value if not (isinstance(value, float) and not math.isfinite(value)) else None)
        study.tell(trial, attrs["score"])
        report(done + 1, trial.number, folder, dict(trial.params), attrs, study.best_value)


# ---- the sweep --------------------------------------------------------------------------------------------
def probe_value(knob: Knob) -> Any:
    """A value inside the knob's range, to check before anything runs that every trial's config builds."""
    if knob.choices:
        return knob.choices[0]
    mid = math.sqrt(knob.low * knob.high) if knob.log else (knob.low + knob.high) / 2
    return int(round(mid)) if knob.integer else mid


def validate_sweep(s: SweepSettings) -> None:
    """Every name and value of the sweep, and every method's trial config, before anything is written."""
    from bench.config import method_config, metrics_for, validate
    from bench.registry import method_class, reward_class

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchError("bench sweep runs in one process, not under accelerate launch (bench run --from-sweep can)")
    if s.trials < 1:
        raise BenchError(f"--trials must be >= 1, got {s.trials}")
    if s.sampler not in SAMPLERS:
        raise unknown_name("sampler", s.sampler, SAMPLERS)
    if not s.methods:
        raise BenchError("no methods given: e.g. --methods rocm-kl,ddpo,d3po (see `bench ls`)")
    if not s.sweep_seeds:
        raise BenchError("no sweep seeds given: e.g. --sweep-seeds 100,101")
    if any(item.split("=", 1)[0].strip() == "eval.splits" for item in s.sets):
        raise BenchError(f"--set eval.splits: bench sweep evaluates {','.join(SWEEP_SPLITS)}, never the test prompts")
    for m in s.methods:
        method_class(m)
    for r in s.rewards:
        reward_class(r)
        if s.select[r] == r:
            raise BenchError(f"--select {r}: selecting on the training reward rewards hacking it; choose another "
                             f"metric")
        metric_direction(s.select[r])
    for m in s.methods:
        for r in s.rewards:
            knobs = free_knobs(m, base_suite(s, [m], r, s.sweep_seeds))
            mid = {k: probe_value(v) for k, v in knobs.items()}
            probe = trial_suite(s, m, r, mid)
            validate(probe)
            for name, knob in knobs.items():  # every choice and both ends of every range build a valid config
                for value in knob.choices or [int(v) if knob.integer else v for v in (knob.low, knob.high)]:
                    _, cfg = method_config(m, trial_suite(s, m, r, {**mid, name: value}))
                    getattr(cfg, "resolve", lambda _name: None)(m)
            if s.select[r] not in metrics_for(probe, r):
                raise BenchError(f"selection metric '{s.select[r]}' is not evaluated; add it to --set eval.metrics")
            if s.sampler == "grid":
                grid_points(knobs, s.trials, 0)


@contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep per folder: a RUNNING trial found while holding the lock was left by a dead process."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".sweep.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another bench sweep is running in {out}") from None
        yield


def run_sweep(s: SweepSettings, out: Path, argv: list[str], show_progress: bool = True, executor=None) -> str:
    """Run (or resume) every study of the sweep into `out`; returns the sensitivity table (Markdown). An
    `executor` of kind ray (bench/executors.py ExecutorConfig) runs the studies side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.sweep_results import save_settings, write_outputs

    validate_sweep(s)
    out = Path(out)
    with sweep_lock(out):
        s = save_settings(out, s)
        if executor is not None and executor.kind == "ray":
            from bench.executors import run_studies_on_ray

            run_studies_on_ray(s, out, argv, executor, show_progress)  # outputs kept even if a study failed
            return write_outputs(out, s)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not show_progress) as progress:
            for m in s.methods:
                for r in s.rewards:
                    task = progress.add_task(f"{m} on {r}", total=s.trials)

                    def report(done: int, number: int, folder: str, values: dict, attrs: dict, best_value: float,
                               m=m, r=r, task=task):
                        progress.update(task, completed=done)
                        progress.console.print(trial_line(s, m, r, number, folder, values, attrs, best_value),
                                               soft_wrap=True)

                    run_study(s, m, r, out, argv, report)
                    progress.update(task, completed=s.trials)
                    write_outputs(out, s)  # a partial sweep already has its selections
        return write_outputs(out, s)
