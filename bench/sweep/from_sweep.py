"""`bench run --from-sweep DIR`: the configurations a sweep selected, run on fresh seeds and the test prompts
(at the sweep's budget or another, on its training reward or another: the ceiling rows).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.results.io import write_json_atomic
from bench.sweep.outputs import load_selected, load_settings
from bench.sweep.protocol import SweepSettings, base_suite, value_text


def tuned_on(s: SweepSettings, rewards: list[str] | None) -> dict[str, str]:
    """{training reward: the sweep reward whose selection it runs}. By default every sweep reward runs its own
    selection; `rewards` given: a sweep reward keeps its own, and with a one-reward sweep any other reward runs
    that one selection (e.g. the ceiling rows: the proxy-tuned configuration trained on the gold itself)."""
    if not rewards:
        return {r: r for r in s.rewards}
    out = {}
    for r in rewards:
        if r in s.rewards or len(s.rewards) == 1:
            out[r] = r if r in s.rewards else s.rewards[0]
        else:
            raise BenchError(f"--rewards {r}: the sweep tuned {', '.join(s.rewards)}; with several tuned rewards a "
                             f"reward it did not tune has no one selection to run")
    return out


def final_suites(sweep_dir: Path, seeds: list[int], methods: list[str] | None, sets: list[str],
                 device: str, budget: str | None = None, rewards: list[str] | None = None) -> dict[str, Any]:
    """One suite per training reward: the sweep's model, budget and `--set`s with every method's selected
    values, on `seeds` and the default (train, test) evaluation. Only eval.* may be changed (`sets`); `budget`
    replaces the tuning budget (reporting at several budgets), `rewards` the training rewards (tuned_on)."""
    from bench.registry.lookup import find

    s = load_settings(sweep_dir)
    if budget is not None:
        s = replace(s, budget=budget)
    selected = load_selected(sweep_dir)
    if overlap := sorted(set(seeds) & set(s.sweep_seeds)):
        raise BenchError(f"--seeds {','.join(map(str, overlap))}: the sweep selected on these (sweep seeds "
                         f"{','.join(map(str, s.sweep_seeds))}); report on seeds it never saw")
    for item in sets:
        if not item.strip().startswith("eval."):
            raise BenchError(f"--set {item}: with --from-sweep only eval.* may change (the rest was tuned)")
    methods = methods or [m for m in s.methods if m in selected]
    for m in methods:
        find("method", m)  # a registered name or an installed plugin's, else did-you-mean
        if m not in selected:
            raise BenchError(f"method '{m}' has no selected configuration in {sweep_dir / 'selected.json'} (it "
                             f"has {', '.join(selected) or 'none'}); tune it first: bench sweep --methods {m} "
                             f"--out {sweep_dir}")
    suites = {}
    for r, tuned in tuned_on(s, rewards).items():
        suite = base_suite(s, methods, r, seeds, sets)
        suite.device = device
        for m in methods:
            if tuned not in selected[m]:
                raise BenchError(f"{sweep_dir / 'selected.json'} has no selection of {m} trained on {tuned}")
            # the selection made at the budget the runs report at, where the sweep made one; else its longest
            chosen = (selected[m][tuned].get("by_budget") or {}).get(s.budget, selected[m][tuned])
            for name, value in chosen["values"].items():
                suite.method_sets.setdefault(m, {})[name] = value_text(value)
        suites[r] = suite
    return suites


def run_from_sweep(sweep_dir: Path, seeds: list[int], out: Path | None, methods: list[str] | None, sets: list[str],
                   device: str, argv: list[str], show_progress: bool = True, log_with: tuple[str, ...] = (),
                   budget: str | None = None, rewards: list[str] | None = None, executor=None) -> list[Path]:
    """Run the selected configurations; one suite folder (or OUT/<reward> for several rewards) recording the
    sweep in from_sweep.json and, in its manifest, the selected values as method `--set`s."""
    from bench.run.config import to_dict, validate
    from bench.run.launch import launch

    sweep_dir = Path(sweep_dir)
    suites = final_suites(sweep_dir, seeds, methods, sets, device, budget, rewards)
    tuned = tuned_on(load_settings(sweep_dir), rewards)
    out = Path(out) if out is not None else sweep_dir / "final"
    dirs = []
    for r, suite in suites.items():
        folder = out if len(suites) == 1 else out / r
        validate(suite)
        if os.environ.get("RANK", "0") == "0":
            write_json_atomic(folder / "from_sweep.json", {
                "sweep": str(sweep_dir.resolve()), "reward": r, "tuned_on": tuned[r], "budget": suite.budget.text,
                "tuning_budget": load_settings(sweep_dir).budget, "method_sets": to_dict(suite.method_sets),
                "selected": {m: load_selected(sweep_dir)[m][tuned[r]] for m in suite.methods}})
        dirs += launch(suite, folder, argv=argv, show_progress=show_progress, log_with=log_with,
                          executor=executor)  # None or serial: this process; ray / slurm: bench/run/executors.py
    return dirs
