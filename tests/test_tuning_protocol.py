"""The tuning protocol (bench/sweep/design.py, docs/protocol.md §4): one learning-rate grid for every method crossed
with its own knobs under a trial budget that grows by rule with the number of knobs; a selection at each reported
budget, flagged a tie when its margin is below its standard error and flagged at an edge (and widened) when it sits
at the end of what was tried. Unit checks on synthetic trials, then a real 2-seed sweep on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from bench.core.method import Knob
from bench.sweep.design import design, edges, levels, lr_grid, step_out
from bench.sweep.outputs import selection
from bench.sweep.protocol import SweepSettings


def test_every_method_gets_the_same_learning_rates_and_trials_grow_with_its_knobs():
    lr = Knob(1e-4, 1e-2, log=True)
    plain = design({"lr": lr})
    beta = design({"lr": lr, "beta": Knob(1.0, 100.0, log=True)})
    two = design({"lr": lr, "clip_range": Knob(1e-4, 1e-2, log=True), "samples_per_prompt": Knob(choices=(2, 4, 8, 16))})
    assert lr_grid() == [1e-4, 0.000316228, 0.001, 0.00316228, 0.01]
    for d in (plain, beta, two):
        assert sorted({p["lr"] for p in d}) == lr_grid()  # the same grid for everyone
    assert (len(plain), len(beta), len(two)) == (5, 5 * 3, 5 * 5)  # 5 x (1 + sum of (levels - 1))
    assert levels(Knob(1.0, 100.0, log=True)) == pytest.approx([1.0 * 100 ** (1 / 6), 10.0, 100 ** (5 / 6)], rel=1e-5)
    assert levels(Knob(choices=(2, 4, 8, 16))) == [2, 8, 16] and levels(Knob(1, 3, integer=True)) == [1, 2, 3]
    assert len(design({"lr": lr}, lr_points=3)) == 3  # a uniform cut: fewer learning rates, for every method


def test_edges_and_the_step_out():
    tried = [{"lr": v, "beta": b} for v in lr_grid() for b in (2.0, 10.0, 50.0)]
    assert edges({"lr": 1e-4, "beta": 10.0}, tried) == {"lr": "low"}
    assert edges({"lr": 1e-3, "beta": 50.0}, tried) == {"beta": "high"}
    assert step_out("lr", None, [t["lr"] for t in tried], 1e-4) == pytest.approx(10 ** -4.5, rel=1e-5)
    assert step_out("beta", Knob(1.0, 100.0, log=True), [2.0, 10.0, 50.0], 50.0) == pytest.approx(250.0)
    assert step_out("k", Knob(choices=(2, 4)), [2, 4], 4) is None  # a choice knob cannot widen: exhausted
    assert step_out("lr", None, [0.1, 1.0], 1.0) is None  # past the learning rate's limit
    # an integer knob's range is its domain: K in 1 … N-1 = 3 does not widen past 1 or 3, but inside it does
    assert step_out("k", Knob(1, 3, integer=True), [1, 2], 1) is None
    assert step_out("k", Knob(1, 3, integer=True), [1, 2], 2) == 3


def settings(**kw) -> SweepSettings:
    return SweepSettings(methods=["rocm-kl"], rewards=["brightness"], model="tiny", budget="300nfe", trials=0,
                         sampler="protocol", sweep_seeds=[100, 101], select={"brightness": "colorfulness"},
                         budgets=["100nfe", "300nfe"], **kw)


def test_a_selection_is_made_at_each_budget_and_flags_ties_and_edges():
    s = settings()
    trials = [
        {"trial": 0, "values": {"lr": 1e-4}, "score": 0.50, "scores": {"100nfe": 0.30, "300nfe": 0.50},
         "ses": {"100nfe": 0.01, "300nfe": 0.05}},
        {"trial": 1, "values": {"lr": 1e-3}, "score": 0.52, "scores": {"100nfe": 0.20, "300nfe": 0.52},
         "ses": {"100nfe": 0.01, "300nfe": 0.05}},
        {"trial": 2, "values": {"lr": 1e-2}, "score": -math.inf, "scores": {"100nfe": None, "300nfe": None}},
    ]
    knobs = {"lr": Knob(1e-4, 1e-2, log=True)}
    early, late = (selection(trials, s, b, True, knobs) for b in s.reported)
    assert early["trial"] == 0 and not early["tie"] and early["edges"]["lr"]["side"] == "low"  # 0.10 > se 0.01
    assert late["trial"] == 1 and late["tie"] and late["runner_up"]["trial"] == 0  # margin 0.02 < se 0.05
    assert late["edges"] == {}  # 1e-3 is inside the values tried


def test_a_tiny_protocol_sweep_selects_per_budget_with_flags(tmp_path):
    """rocm-none has no knob of its own: a 2-point learning-rate grid (1e-4, 1e-2), 2 sweep seeds, 2 budgets.
    With two points any selection is at an edge, so the sweep widens it (one step further out, at most twice)."""
    from bench.sweep.driver import run_sweep

    s = SweepSettings(methods=["rocm-none"], rewards=["brightness"], model="tiny", budget="400nfe", trials=0,
                      sampler="protocol", sweep_seeds=[100, 101], select={"brightness": "colorfulness"},
                      sets=["eval.max_prompts=2", "eval.samples_per_prompt=2", "eval.min_images=0",
                            "method.batch_size=4"], budgets=["200nfe", "400nfe"], lr_points=2)
    run_sweep(s, tmp_path, argv=["bench", "sweep"], show_progress=False)
    record = json.loads((tmp_path / "selected.json").read_text())
    chosen = record["methods"]["rocm-none"]["brightness"]
    assert set(chosen["by_budget"]) == {"200nfe", "400nfe"} and record["budgets"] == ["200nfe", "400nfe"]
    import csv

    with open(tmp_path / "trials.csv") as f:
        lrs = sorted(json.loads(row["values"])["lr"] for row in csv.DictReader(f))
    assert lrs[0] <= 1e-4 and lrs[-1] >= 1e-2 and 3 <= len(lrs) <= 4  # the 2 design points, then 1-2 widened
    assert any(lr not in (1e-4, 1e-2) for lr in lrs)  # 1e-6 or 1.0: one step of the grid's ratio further out
    for sel in chosen["by_budget"].values():
        assert isinstance(sel["tie"], bool) and math.isfinite(sel["se"]) and sel["se"] > 0
        assert set(sel["seed_scores"]) == {"100", "101"}
    assert "| tie |" in (tmp_path / "sensitivity.md").read_text()


def test_a_tiny_sweep_flags_a_tie_and_an_edge_in_selected_json(tmp_path):
    """DRaFT-K at N = 3 steps has one knob, K in {1, 2}, and the learning rate fixed by --set at 1e-7: each of the
    two trials is then at an edge of K's range, which cannot be widened (exhausted), and both train so little
    (Adam moves each weight by about lr per update: ~1e-6 over the run) that their selection scores differ by far
    less than their standard error over 2 seeds x 2 prompts x 2 images (~1e-2 for colorfulness on tiny): a tie."""
    from bench.sweep.driver import run_sweep

    s = SweepSettings(methods=["draft-k"], rewards=["brightness"], model="tiny", budget="200nfe", trials=0,
                      sampler="protocol", sweep_seeds=[100, 101], select={"brightness": "colorfulness"},
                      sets=["eval.points=1", "eval.max_prompts=2", "eval.samples_per_prompt=2",
                            "eval.min_images=0", "method.batch_size=4", "draft-k.lr=1e-7", "sampler.steps=3"])
    run_sweep(s, tmp_path, argv=["bench", "sweep"], show_progress=False)
    chosen = json.loads((tmp_path / "selected.json").read_text())["methods"]["draft-k"]["brightness"]
    (sel,) = chosen["by_budget"].values()
    assert sel["tie"] is True and sel["runner_up"] is not None
    assert set(sel["edges"]) == {"k"} and sel["edges"]["k"]["next"] is None  # exhausted
    assert sel["values"]["k"] in (1, 2) and "lr" not in sel["values"]
