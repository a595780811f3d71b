"""`bench gpu-check` end to end on the CPU at the tiny model's size (slow: run with `-m slow`): every stage runs
and writes its JSON and table; the time-budget suite spends its budget within 0.5% past (how far short depends on
the step size: at most one step). The numbers themselves are a benchmark's, never asserted."""

from __future__ import annotations

import json

import pytest

from bench.perf.gpu_check import gpu_check

SMALL = ["method.batch_size=4", "ddpo.prompts_per_step=2", "ddpo.samples_per_prompt=2", "method.train_batch_size=2",
         "sampler.steps=2"]


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    report = gpu_check(tmp_path, device="cpu", model="tiny", methods=["rocm-kl", "ddpo"], sets=SMALL, minutes=15,
                       repeats=1, memory_steps=(1, 2), suite_budget="20s", log=lambda msg: None)
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    table = (tmp_path / "gpu_check.md").read_text()
    timing = report["stages"]["timing"]
    assert timing["status"] == "complete" and set(timing["methods"]) == {"rocm-kl", "ddpo"}
    for row in timing["methods"].values():
        assert row["step_s"] > 0 and 0 < row["mfu"] and row["step_peak_mib"] >= 0
    assert len(timing["memory_sweep"]["rows"]) == 4
    for method, run in report["stages"]["suite"].items():
        assert run["status"] == "complete" and run["budget_used"] <= 1.005 and run["warmup_seconds"] > 0, run
        assert f"| {method} |" in table
