"""Methods must learn, not only run: on the built-in testbed, a short count budget raises the training reward
(the learned preference proxy) on the training prompts for ROCM-KL and DDPO, by more than the run-to-run
spread measured for this budget (see the margins below)."""

import json

import pytest

from bench.compute import Budget
from bench.config import SuiteConfig, apply_sets
from bench.models import ModelConfig
from bench.runner import run_suite

BUDGET = "6000nfe"
# Gain of testbed-pref on the training split (fraction 1 minus fraction 0), measured for seeds 0-4 at this
# budget with these settings; the margin sits well below the smallest gain and well above zero.
MARGINS = {"rocm-kl": 1.0, "ddpo": 0.5}


@pytest.mark.parametrize("method", sorted(MARGINS))
def test_method_raises_training_reward_on_testbed(tmp_path, method):
    suite = SuiteConfig(methods=[method], rewards=["testbed-pref"], seeds=[0], budget=Budget.parse(BUDGET),
                        model=ModelConfig(name="testbed"))
    apply_sets(suite, ["eval.points=1", "eval.max_prompts=16", "eval.samples_per_prompt=2",
                       "eval.metrics=testbed-gold"])
    (run,) = run_suite(suite, tmp_path, show_progress=False)
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    pref = {r["fraction"]: r["value"] for r in rows if r["metric"] == "testbed-pref" and r["split"] == "train"}
    assert pref[1.0] - pref[0.0] > MARGINS[method], pref
