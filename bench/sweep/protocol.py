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

Files (DIR):  sweep.json (settings)  optuna.db  trials/<method>__<reward>/trial-<n>/ (one suite folder each; the
              reward spelled as in run folders, bench.core.objective.folder_name)
              selected.json (per method and reward: values, score, trial, rule)  sensitivity.md/.csv, trials.csv

Resume: one sweep per DIR at a time (a lock file). Trials a killed sweep left RUNNING are marked failed and
their parameters re-enqueued with the same trial folder, whose completed runs run_suite skips. Each trial's
sampler is seeded by (method, reward, number of trials done), so a resumed sweep proposes what an
uninterrupted one would have.

Parallel (`--executor ray`): the studies are independent — each reads only its own trials, its sampler is
seeded per study, each trial's runs are deterministic — so each study runs as one Ray task (its trials in order)
and the sweep's results equal a serial sweep's. The studies share optuna.db: the driver creates every study
before the tasks start (no two processes create the tables; bench/run/executors.py run_studies_on_ray), and every
connection waits up to SQLITE_BUSY_TIMEOUT_S for another process's write instead of failing with "database is
locked".
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.errors import BenchError, unknown_name
from bench.core.objective import trained_metrics
from bench.results.io import read_jsonl

if TYPE_CHECKING:  # bench.core.method imports torch; this module stays light for the report
    from bench.core.method import Knob

SAMPLERS = ("protocol", "tpe", "grid", "random")
"""protocol: the designed trials of bench/sweep/design.py (the same learning-rate grid for every method, crossed
with its own knobs; edges widened); tpe, grid, random: `trials` Optuna trials over each method's knob ranges."""
SQLITE_BUSY_TIMEOUT_S = 600  # how long a write to optuna.db waits for another process's (parallel studies)
SPLIT = "validation"
SWEEP_SPLITS = ("train", SPLIT)
RULE = ("score = mean over sweep seeds of the selection metric on the validation split at the evaluation point of "
        "each reported budget; the best score in the metric's direction wins, ties to the earlier trial; a margin "
        "over the runner-up below the winner's standard error is flagged a tie; a trial stopped by a non-finite "
        "loss scores worst")


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
    budgets: list[str] = field(default_factory=list)
    """Reported budgets, each selected on separately from the same trials, which run to the largest (`budget`);
    empty: `budget` alone."""
    lr_points: int = 5
    """protocol sampler: points of the shared learning-rate grid (bench/sweep/design.py)."""

    @property
    def reported(self) -> list[str]:
        """The budgets a selection is made at, smallest first (the last is the trials' length, `budget`)."""
        from bench.core.compute import Budget

        return sorted(self.budgets or [self.budget], key=lambda b: Budget.parse(b).amount)

    def fraction(self, budget: str) -> float:
        """Where `budget` falls in a trial run of `self.budget`."""
        from bench.core.compute import Budget

        return Budget.parse(budget).amount / Budget.parse(self.budget).amount

def selection_metric(model: str, reward: str) -> str:
    """The model's declared selection metric, unless that is the training reward or one it optimises (a term of a
    weighted sum, the reward inside z(...)): then the first of the model's default metrics that is none of those
    nor kl-to-base (the report's rule, bench.analysis.judge)."""
    from bench.analysis.judge import selection_metric as pick
    from bench.registry.catalog import MODEL_DEFAULTS

    defaults = MODEL_DEFAULTS.get(model, {})
    chosen = pick(reward, defaults.get("metrics", []), defaults.get("select"), optimised=trained_metrics(reward))
    if chosen is None:
        raise BenchError(f"model '{model}' has no selection metric other than the training reward '{reward}'; "
                         f"pass --select METRIC")
    return chosen


def metric_direction(metric: str) -> bool:
    """True when higher is better (kl-to-base, computed by the harness, is lower-is-better)."""
    from bench.registry.lookup import metric_class

    return False if metric == "kl-to-base" else bool(metric_class(metric).higher_is_better)


def method_knobs(method: str, suite) -> dict[str, Knob]:
    """Absolute knob ranges of a registered entry under the suite's `--set`s (which may move a relative range,
    e.g. ROCM's β, centred on D × β where the per-dimension divergence applies to a D-dimensional latent) and
    its sampler (a range that follows sampler.steps, e.g. DRaFT-K's K in 1 … N-1)."""
    from bench.registry.catalog import latent_dims
    from bench.run.config import apply_model_defaults, method_config

    apply_model_defaults(suite)  # the model's own sampler settings where --set gives none (idempotent)
    _, cfg = method_config(method, suite)
    return dict(cfg.resolved_knobs(latent_dims(suite.model.name, suite.model.resolution), suite.sampler.steps))


def free_knobs(method: str, suite) -> dict[str, Knob]:
    """The knobs of `method` that no `--set` fixes (`method.`, family and entry prefixes all fix a field)."""
    from bench.registry.catalog import METHODS
    from bench.run.config import family

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
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, apply_sets

    suite = SuiteConfig(methods=list(methods), rewards=[reward], seeds=list(seeds), budget=Budget.parse(s.budget),
                        model=ModelConfig(name=s.model), device=s.device)
    apply_sets(suite, [*s.sets, *extra_sets])
    return suite


def trial_suite(s: SweepSettings, method: str, reward: str, values: dict[str, Any]):
    from bench.run.config import eval_schedule

    suite = base_suite(s, [method], reward, s.sweep_seeds)
    suite.eval.splits = SWEEP_SPLITS  # never the test prompts
    # every reported budget is an evaluation point of the trial's run
    suite.eval.fractions = tuple(sorted(set(eval_schedule(suite.eval)) | {s.fraction(b) for b in s.reported}))
    for name, value in values.items():
        suite.method_sets.setdefault(method, {})[name] = value_text(value)
    return suite


def run_score(run_dir: Path, metric: str, higher: bool, fraction: float = 1.0) -> float:
    """The selection metric on the validation split at the run's evaluation point of `fraction` (1: the last)."""
    rows = [r for r in read_jsonl(run_dir / "eval.jsonl") if r.get("split") == SPLIT and r.get("metric") == metric]
    if not rows:
        raise BenchError(f"{run_dir}: no {SPLIT} evaluation of '{metric}' (is it in eval.metrics?)")
    at = [r for r in rows if abs(r["fraction"] - fraction) < 1e-9]
    if not at:
        raise BenchError(f"{run_dir}: no {SPLIT} evaluation at {fraction:.4g} of the budget")
    last = at[-1]  # a resumed run may hold a row twice: the later counts
    if last.get("higher_is_better") is not None and bool(last["higher_is_better"]) != higher:
        raise BenchError(f"{run_dir}: '{metric}' rows disagree with its registered direction")
    return float("nan") if last["value"] is None else float(last["value"])


def hacked_metrics(run_dirs: list[Path], reward: str) -> list[str] | None:
    """Metrics that got worse beyond their CI while the trained reward rose, in any seed's run (bench.analysis.judge);
    None where bench.analysis.judge is not available."""
    try:
        from bench.analysis.judge import hacking
    except ImportError:
        return None
    import pandas as pd

    flagged: set[str] = set()
    for d in run_dirs:
        verdict = hacking(pd.DataFrame(read_jsonl(d / "eval.jsonl")), reward, SPLIT,
                          optimised=trained_metrics(reward))
        flagged |= {m for m, bad in verdict.items() if bad}
    return sorted(flagged)


def diverged(error: BenchError) -> bool:
    """A training run stopped by its numbers (a knob's legitimate outcome), not by a mistake to fix."""
    from bench.core import errors

    kind = getattr(errors, "DivergedError", None)
    return (kind is not None and isinstance(error, kind)) or "non-finite" in str(error)


# ---- studies ----------------------------------------------------------------------------------------------
def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


# ---- the sweep --------------------------------------------------------------------------------------------
def probe_value(knob: Knob) -> Any:
    """A value inside the knob's range, to check before anything runs that every trial's config builds."""
    if knob.choices:
        return knob.choices[0]
    mid = math.sqrt(knob.low * knob.high) if knob.log else (knob.low + knob.high) / 2
    return int(round(mid)) if knob.integer else mid


def validate_sweep(s: SweepSettings) -> None:
    """Every name and value of the sweep, and every method's trial config, before anything is written."""
    from bench.registry.lookup import method_class, reward_class
    from bench.run.config import method_config, metrics_for, validate

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchError("bench sweep runs in one process, not under accelerate launch (bench run --from-sweep can)")
    if s.sampler not in SAMPLERS:
        raise unknown_name("sampler", s.sampler, SAMPLERS)
    if s.sampler != "protocol" and s.trials < 1:
        raise BenchError(f"--trials must be >= 1, got {s.trials}")
    if s.sampler == "protocol" and len(s.sweep_seeds) < 2:
        raise BenchError("the tuning protocol scores every trial over >= 2 sweep seeds (--sweep-seeds 100,101)")
    if s.lr_points < 2:
        raise BenchError(f"--lr-points must be >= 2, got {s.lr_points}")
    from bench.core.compute import Budget

    kinds = {Budget.parse(b).kind for b in [s.budget, *s.budgets]}
    if len(kinds) > 1 or (s.budgets and s.budget != s.reported[-1]):
        raise BenchError(f"--budgets {','.join(s.budgets)}: one unit, and the trials' --budget is the largest")
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


