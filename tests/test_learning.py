"""Methods must learn, not only run: on the built-in testbed, a short count budget raises the training reward
(the learned preference proxy) on the training prompts for ROCM-KL and DDPO, by more than the run-to-run
spread measured for this budget (see the margins below)."""

import json

import pytest

from bench.core.compute import Budget
from bench.core.policy import ModelConfig
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite

# (budget, margin). The gain of testbed-pref on the training split (end minus start), measured with this test's
# evaluation settings (16 training prompts spread evenly over the 90, 2 images each) on the shipped testbed-v2
# weights (guidance 2), seeds 0-2, protocol 2: rocm-kl (β = 10) at 6000 NFE +3.24, +3.83, +3.37 (gold 0.734 ->
# 0.745-0.747); ddpo (grouped, 4 prompts x 8) at 15000 NFE +6.89, +7.12, +3.61. Each margin is about half the
# smallest measured gain.
CASES = {"rocm-kl": ("6000nfe", 1.6), "ddpo": ("15000nfe", 1.8)}
# Truncated first-order methods, unregularised as published, at 3000 NFE, seeds 0-2 (testbed v2): draft-k (DRaFT-1)
# +69.0, +92.8, +91.7; alignprop (K uniform on 1-3) +47.4, +54.0, +51.6; refl (j uniform on 1-3, hinge at 30) +40.1,
# +43.7, +45.7. Each hacks the proxy (train gold 0.73 -> 0.23-0.39), as rocm-none does.
CASES |= {"draft-k": ("3000nfe", 34.0), "alignprop": ("3000nfe", 23.0), "refl": ("3000nfe", 20.0)}
# grpo (Flow-GRPO's β = 0.04, groups of 8) at 15000 NFE, seeds 0-2 (testbed v2): +4.86, +3.52, +2.09.
CASES |= {"grpo": ("15000nfe", 1.0)}
# Slow cases, margins measured on testbed v1 (guidance 8, proxy v1) and NOT re-measured on v2, where the proxy's
# scale is about 1.6x larger and every fast case gained more: rebel (RLCM's η = 1) at 15000 NFE +1.28, +2.29, +1.58;
# ddpo-kl (β = 0.3; registered as "dpok" then) at 30000 NFE +1.59, +1.35, +1.26. Run with `-m slow`.
CASES |= {"rebel": ("15000nfe", 0.6), "ddpo-kl": ("30000nfe", 0.6)}
SLOW = {"rebel", "ddpo-kl", "grpo", "alignprop", "refl"}  # the same test with the slow mark: cases over ~60 s, and
# the truncated variants of draft-k and DDPO's group variant, whose family keeps a case in the default run
# DPOK as published (methods/dpok.py, its defaults) is NOT shown to learn here: at DDPO's 15000 NFE, seeds 0-2,
# testbed v2, protocol 3, the proxy on the training split went 5.88 -> 6.58, 3.76, 8.85 (+0.70, -2.12, +2.97; gold
# 0.734 -> 0.712, 0.631, 0.721). One DPOK round costs 84 NFE per sampled trajectory (5 updates x 12 replayed
# transitions x 2 per round), DDPO 13: it sees 178 trajectories in that budget to DDPO's 1152. Its defaults were
# not tuned to make it learn; the sweep protocol tunes it like every other method.


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in sorted(CASES)])
def test_method_raises_training_reward_on_testbed(tmp_path, method):
    budget, margin = CASES[method]
    suite = SuiteConfig(methods=[method], rewards=["testbed-pref"], seeds=[0], budget=Budget.parse(budget),
                        model=ModelConfig(name="testbed"))
    apply_sets(suite, ["eval.points=1", "eval.max_prompts=16", "eval.samples_per_prompt=2", "eval.min_images=0",
                       "eval.metrics=testbed-gold"])
    (run,) = run_suite(suite, tmp_path, show_progress=False)
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    pref = {r["fraction"]: r["value"] for r in rows if r["metric"] == "testbed-pref" and r["split"] == "train"}
    assert pref[1.0] - pref[0.0] > margin, pref
