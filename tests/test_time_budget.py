"""Time budgets are spent exactly (bench/run/budget.py), shown with an injected clock so that nothing depends on the
machine: a method whose first step is slow (CUDA start-up, kernel selection) still gets its whole budget, because
that step is taken once before the clock starts (the warm-up, uncharged and undone); noisy step times never take a
run past its budget plus 0.5%; and a method that can take a smaller last step fills what is left, ending within
0.5% past and 2% short of the budget. The method here does no training: each step advances the fake clock."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from bench.api import Method, TrainConfig
from bench.core.compute import Budget, ComputeMeter
from bench.core.policy import ModelConfig
from bench.run.budget import StopRule
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite

HERE = "tests.test_time_budget"


class FakeClock:
    """Seconds that pass only when a step says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()
COSTS: list[float] = []  # seconds of the 1st, 2nd, … call of step(), the warm-up included; the last one repeats


@dataclass
class FakeConfig(TrainConfig):
    pass


class Timed(Method):
    """A step that costs COSTS[i] seconds (times `fraction`) and charges one denoiser evaluation."""

    Config = FakeConfig
    name = "timed"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.fractions: list[float] = []

    def step(self, fraction: float = 1.0) -> dict[str, float]:
        CLOCK.now += COSTS[min(self.calls, len(COSTS) - 1)] * fraction
        self.calls += 1  # not part of the method's state: the warm-up's call stays counted
        self.fractions.append(fraction)
        self.policy.meter.charge_forward(1)
        self.steps_done += 1
        return {"reward_mean": 0.0}


class PartialTimed(Timed):
    name = "partial-timed"

    def step_parts(self) -> int:
        return 100  # a step of k / 100 of its size, as a batch of 100 samples would allow


def spend(tmp_path, monkeypatch, method: str, costs: list[float], budget: str = "20s") -> dict:
    monkeypatch.setattr(ComputeMeter, "clock", staticmethod(CLOCK))
    CLOCK.now, COSTS[:] = 0.0, costs
    suite = SuiteConfig(methods=[f"{HERE}:{method}"], rewards=["brightness"], seeds=[0],
                        budget=Budget.parse(budget), model=ModelConfig(name="tiny"))
    apply_sets(suite, ["eval.points=1", "eval.max_prompts=1", "eval.min_images=0", "eval.samples_per_prompt=1"])
    (run,) = run_suite(suite, tmp_path / "suite", show_progress=False)
    summary = json.loads((run / "summary.json").read_text())
    summary["rows"] = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    return summary


def test_a_slow_first_step_is_the_uncharged_warm_up(tmp_path, monkeypatch):
    # Without the warm-up the 5 s first step would be "the costliest": the run would stop at 16 s (0.80).
    s = spend(tmp_path, monkeypatch, "Timed", [5.0, 1.0])
    assert s["warmup_seconds"] == 5.0
    assert s["steps"] == 20 and s["budget_used"] == pytest.approx(1.0)
    assert [r["seconds"] for r in s["rows"]] == pytest.approx([float(k) for k in range(1, 21)])


def test_noisy_steps_never_take_a_run_past_its_budget(tmp_path, monkeypatch):
    # Step times wander between 0.7 and 1.3 s: the next step is predicted by the costliest of the last three.
    costs = [2.0] + [1.0 + 0.3 * ((7 * k) % 5 - 2) / 2 for k in range(60)]
    s = spend(tmp_path, monkeypatch, "Timed", costs)
    assert 1 - 1.3 / 20 <= s["budget_used"] <= 1.005


def test_a_smaller_last_step_fills_the_budget(tmp_path, monkeypatch):
    # 1.5 s steps: 13 of them are 19.5 s; the 14th, at a third of its size, ends at 19.98 s.
    s = spend(tmp_path, monkeypatch, "PartialTimed", [1.5])
    assert 0.98 <= s["budget_used"] <= 1.005
    assert s["steps"] == 14
    without = spend(tmp_path / "b", monkeypatch, "Timed", [1.5])
    assert without["steps"] == 13 and without["budget_used"] == pytest.approx(0.975)


def test_count_budgets_keep_the_costliest_step_rule():
    rule = StopRule(Budget.parse("100nfe"))
    assert rule.next_step(0.0, parts=8) == 1.0
    rule.record(30.0)
    rule.record(10.0)
    assert rule.predicted == 30.0  # deterministic costs: the costliest so far, never a partial step
    assert rule.next_step(70.0, parts=8) == 1.0 and rule.next_step(71.0, parts=8) == 0.0
    timed = StopRule(Budget.parse("100s"))
    for cost in (30.0, 10.0, 10.0, 10.0):
        timed.record(cost)
    assert timed.predicted == 10.0  # the last three
    assert timed.next_step(95.0, parts=1) == 0.0  # an indivisible step
    # (99.9 - 95) / 10 = 0.49 of a step fits: 3 of 8 parts (0.375), never 4 (0.5, past the aim)
    assert timed.next_step(95.0, parts=8) == 3 / 8
    assert timed.next_step(99.0, parts=8) == 0.0  # less than one part fits: stop


@pytest.mark.parametrize("name", ["rocm-kl", "draft-k", "refl"])
def test_a_partial_first_order_step_takes_part_of_the_batch_and_charges_that_part(tiny_policy, train_prompts, name):
    """A batch of 8 cuts into 8 parts; a step of 3/8 samples 3 images and charges exactly 3/8 of a full step's NFE
    (every NFE these methods charge is per sample; ReFL's stopping step j is fixed so that both steps draw the same)."""
    from bench.core.sampler import SamplerConfig
    from bench.registry.lookup import method_class
    from rewards.toy import Brightness

    cls, overrides = method_class(name)
    fixed = {"step_min": 2, "step_max": 2} if name == "refl" else {}
    cfg = cls.Config(**{**overrides, "batch_size": 8, **fixed})
    algo = cls(name, cfg, tiny_policy, SamplerConfig(steps=4), Brightness(), train_prompts,
               torch.Generator().manual_seed(0))
    assert algo.step_parts() == 8
    meter = tiny_policy.meter
    counts = []
    for fraction in (1.0, 3 / 8):
        before = meter.counters()["nfe"]
        algo.step(fraction)
        counts.append(meter.counters()["nfe"] - before)
    assert counts[1] * 8 == counts[0] * 3 and len(algo.drawn[-1]) == 3
