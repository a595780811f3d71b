"""`bench sweep`'s driver: one lock per sweep folder, the settings checked and saved, every study run (in this
process, or each as a Ray task), then the selections written (bench/sweep/outputs.py).
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.core.errors import BenchError
from bench.run.executors import ExecutorConfig, raise_failures, ray_threads, run_on_ray
from bench.sweep.outputs import save_settings, write_outputs
from bench.sweep.protocol import SweepSettings, metric_direction, validate_sweep
from bench.sweep.study import open_study, planned_trials, run_study, trial_line


# ---- bench sweep --executor ray -------------------------------------------------------------------------------
def study_task(s, method: str, reward: str, out: Path, argv: list[str], threads: int) -> tuple[str | None, str | None]:
    """One study of a sweep in a Ray task: (study name, None), or (None, a one-line error). Its trial lines are
    printed, and Ray shows them in the driver's output."""
    import torch

    torch.set_num_threads(threads)
    try:
        run_study(s, method, reward, out, argv,
                  lambda done, *trial: print(trial_line(s, method, reward, *trial), flush=True))
    except BenchError as e:
        return None, str(e)
    return f"{method}__{reward}", None


def run_studies_on_ray(s, out: Path, argv: list[str], cfg: ExecutorConfig, show_progress: bool) -> None:
    """Every study of a sweep (bench.sweep.protocol.SweepSettings) as a Ray task; failed ones are one BenchError line once
    the others have finished (their trials are kept, and rerunning the sweep resumes them)."""
    studies = [(m, r) for m in s.methods for r in s.rewards]
    for m, r in studies:  # created here, by one process, before the tasks open them
        open_study(out, m, r, metric_direction(s.select[r]))
    calls = [(s, m, r, out, argv, ray_threads(cfg)) for m, r in studies]
    labels = [f"{m} on {r}" for m, r in studies]
    outcomes = run_on_ray(study_task, calls, labels, cfg, s.device, show_progress, what="studies")
    write_outputs(out, s)  # the finished studies' selections, even if another failed
    raise_failures(outcomes, labels, "studies")


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
    `executor` of kind ray (bench/run/executors.py ExecutorConfig) runs the studies side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    validate_sweep(s)
    out = Path(out)
    with sweep_lock(out):
        s = save_settings(out, s)
        if executor is not None and executor.kind == "ray":
            run_studies_on_ray(s, out, argv, executor, show_progress)  # outputs kept even if a study failed
            return write_outputs(out, s)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not show_progress) as progress:
            for m in s.methods:
                for r in s.rewards:
                    total = [planned_trials(s, m, r)]  # widening may add trials: the bar's total follows
                    task = progress.add_task(f"{m} on {r}", total=total[0])

                    def report(done: int, number: int, folder: str, values: dict, attrs: dict, best_value: float,
                               m=m, r=r, task=task, total=total):
                        total[0] = max(total[0], done)
                        progress.update(task, completed=done, total=total[0])
                        progress.console.print(trial_line(s, m, r, number, folder, values, attrs, best_value),
                                               soft_wrap=True)

                    run_study(s, m, r, out, argv, report)
                    progress.update(task, completed=total[0])
                    write_outputs(out, s)  # a partial sweep already has its selections
        return write_outputs(out, s)
