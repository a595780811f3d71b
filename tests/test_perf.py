"""`bench perf` smoke test: it runs end to end on the tiny model and writes sane JSON. It is a benchmark, so
nothing here asserts a timing or a target."""

from __future__ import annotations

import json
import math
import statistics

from bench.perf.command import run_perf
from bench.perf.memory import own_sets

METHODS = ["rocm-kl", "ddpo", "d3po"]
REPEATS = 2  # one pair in each order (step first, bare compute first)
# method.train_batch_size applies to DDPO and D3PO (d3po's own value wins), not to ROCM, which lacks the field: each
# one-method memory process must still accept it.
SMALL = ["method.batch_size=4", "ddpo.prompts_per_step=2", "ddpo.samples_per_prompt=2", "method.train_batch_size=2",
         "d3po.train_batch_size=1", "sampler.steps=2"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_perf_writes_finite_positive_numbers(tmp_path):
    out = tmp_path / "perf.json"
    returned = run_perf(model="tiny", methods=METHODS, repeats=REPEATS, sets=SMALL, out=out, memory_steps=[1, 2],
                        device="cpu")
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    assert set(data) >= {"config", "bare_compute", "memory_measure", "methods", "memory_sweep", "matmul_flops_per_s"}
    assert data["complete"] is True and data["matmul_dtype"] == "float32" and _positive(data["matmul_flops_per_s"])
    assert data["config"]["sampler"]["steps"] == 2 and data["config"]["model"]["name"] == "tiny"
    assert set(data["config"]["methods"]) == set(METHODS) and data["config"]["threads"] >= 1
    assert set(data["methods"]) == set(METHODS)
    for name, row in data["methods"].items():
        for key in ("step_s", "bare_s", "bare_unet_s", "ratio", "ratio_unet", "ratio_cpu", "samples_per_s", "peak_mib",
                    "target", "mfu", "mfu_bare"):
            assert _positive(row[key]), (name, key, row[key])
        # Interleaved pairs: one step and one bare timing (wall and CPU) per repeat, the ratio is their median.
        for key in ("step_times_s", "bare_times_s", "pair_ratios", "step_cpu_s", "bare_cpu_s"):
            assert len(row[key]) == REPEATS and all(_positive(x) for x in row[key]), (name, key, row[key])
        assert row["pair_ratios"] == [s / b for s, b in zip(row["step_times_s"], row["bare_times_s"])]
        assert math.isclose(row["ratio"], statistics.median(row["pair_ratios"]))
        assert math.isfinite(row["step_peak_mib"]) and row["step_peak_mib"] >= 0
        assert isinstance(row["met"], bool)
        assert row["meter_agrees"] and row["same_work_every_step"], name
        assert row["calls"]["unet_forward"] > 0 and row["calls"]["unet_backward"] > 0
        # MFU = the step's counted FLOPs / its time / the matmul rate, and the same FLOPs over the bare time
        flops = row["meter_per_step"]["flops"]
        assert math.isclose(row["mfu"], flops / row["step_s"] / data["matmul_flops_per_s"])
        assert math.isclose(row["mfu_bare"], flops / row["bare_s"] / data["matmul_flops_per_s"])
    assert data["methods"]["rocm-kl"]["calls"]["unet_recompute"] == 0  # checkpointing is off by default on tiny
    assert data["methods"]["ddpo"]["calls"]["unet_recompute"] == 0
    assert data["methods"]["d3po"]["calls"]["reference_forward"] > 0
    sweep = data["memory_sweep"]
    assert sweep["method"] == "rocm-kl" and sweep["ratio_8_to_1"] is None and sweep["met"] is None
    assert sorted((r["steps"], r["checkpointing"]) for r in sweep["rows"]) == [(1, False), (1, True), (2, False),
                                                                                (2, True)]
    for r in sweep["rows"]:
        assert _positive(r["peak_mib"]) and math.isfinite(r["step_peak_mib"]) and r["step_peak_mib"] >= 0


def test_a_one_method_suite_keeps_only_the_method_sets_it_has():
    sets = ["method.train_batch_size=2", "method.lr=1e-3", "rocm.beta=3", "sampler.steps=2"]
    assert own_sets("rocm-kl", sets) == ["method.lr=1e-3", "rocm.beta=3", "sampler.steps=2"]
    assert own_sets("ddpo", sets) == sets  # a family's or an entry's key stays: validation names a wrong one


def test_a_run_stopped_midway_keeps_what_it_measured(tmp_path, monkeypatch):
    """The JSON is rewritten after each method: a run that dies while timing the second method leaves the first."""
    import pytest

    import bench.perf.command as command

    real, calls = command.time_method, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(command, "time_method", dies_on_the_second)
    out = tmp_path / "perf.json"
    with pytest.raises(KeyboardInterrupt):
        run_perf(model="tiny", methods=["rocm-kl", "ddpo"], repeats=1, sets=SMALL, out=out, memory_steps=[],
                 device="cpu")
    data = json.loads(out.read_text())
    assert data["complete"] is False and list(data["methods"]) == ["rocm-kl"]
    assert _positive(data["methods"]["rocm-kl"]["step_s"])
