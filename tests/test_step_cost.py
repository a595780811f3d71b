"""The cost of one outer step, declared and charged: every registered method's `nfe_per_step(sampler)` equals what
the meter charges to `nfe` in a step on the tiny model (at 2 and 4 sampling steps); the count budgets charge the
algorithm and not gradient checkpointing, whose recomputation is counted apart (`nfe_recompute`,
`flops_recompute`); and an `nfe` budget smaller than one step is refused before anything runs."""

from __future__ import annotations

import pytest
import torch

from bench.core.compute import ComputeMeter
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig
from bench.core.tiny import tiny
from bench.prompts.sets import PROMPT_SETS
from bench.registry.catalog import METHODS
from bench.registry.lookup import method_class
from rewards.toy import Brightness
from tests.conftest import assert_one_line_error

PROMPTS = PROMPT_SETS["tiny"]["train"]
# Smaller steps than the registered ones where a default step takes seconds on the CPU (the formula is the same).
SMALL = {"dpok": {"updates_per_step": 2, "accumulation": 2, "batch_size": 4},
         "ddpo": {"prompts_per_step": 2, "samples_per_prompt": 4}, "ddpo-kl": {"prompts_per_step": 2},
         "grpo": {"prompts_per_step": 2, "timestep_fraction": 0.5}, "d3po": {"batch_size": 8},
         "rebel": {"batch_size": 8, "memory_saving": True}, "rocm-kl": {"final_step": True}}
# A range of draws whose cost differs: ReFL's j, AlignProp's K (the declared cost is the costliest step's).
DRAWN = {"refl": "step_j", "alignprop": "k"}


def build(name: str, steps: int, checkpointing: bool = False, **fields):
    torch.manual_seed(0)
    policy = tiny(ModelConfig())
    cls, overrides = method_class(name)
    cfg = cls.Config(**(overrides | SMALL.get(name, {}) | fields))
    sampler = SamplerConfig(steps=steps, checkpointing=checkpointing)
    algo = cls(name, cfg, policy, sampler, Brightness(), PROMPTS, torch.Generator().manual_seed(0))
    return algo, policy.meter


@pytest.mark.parametrize("steps", [2, 4])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_step_cost_is_what_the_meter_charges(name, steps):
    fields = {"step_min": 0} if name == "refl" and steps == 2 else {}  # {1} alone at N = 2 is DRaFT-1: refused
    if name == "alignprop" and steps == 2:  # K from {1} is DRaFT-1: AlignProp needs N >= 3
        with pytest.raises(Exception, match="needs sampler.steps >= 3"):
            build(name, steps)
        return
    algo, meter = build(name, steps, **fields)
    declared = algo.cfg.nfe_per_step(algo.sampler)
    assert isinstance(declared, int) and declared > 0
    if name not in DRAWN:
        before = meter.nfe
        algo.step()
        assert meter.nfe - before == declared
        return
    # The costliest draw costs exactly the declared step; every other draw less.
    seen = {}
    for _ in range(12):
        before = meter.nfe
        draw = algo.step()[DRAWN[name]]
        seen[draw] = meter.nfe - before
    top = max(seen)
    assert seen[top] == declared and all(cost < declared for draw, cost in seen.items() if draw != top), seen
    assert len(seen) > 1  # the draws really vary


def test_a_plugin_config_declares_nothing():
    from bench.core.method import TrainConfig

    assert TrainConfig().nfe_per_step(SamplerConfig()) is None


@pytest.mark.parametrize("name, fields", [("rocm-kl", {}), ("rocm-kl", {"final_step": True}),
                                          ("draft-k", {"k": 2, "divergence": "kl", "beta": 1.0}), ("rocm-none", {})])
def test_checkpointing_changes_no_count_only_the_recompute_counters(name, fields):
    """The count budgets charge the algorithm: rocm-kl's FLOPs and NFE per step are identical with and without the
    sampler's checkpointing, its recomputation visible in nfe_recompute and flops_recompute alone."""
    counters, per_sample = {}, {}
    for checkpointing in (False, True):
        algo, meter = build(name, 4, checkpointing=checkpointing, batch_size=4, **fields)
        algo.step()
        counters[checkpointing] = meter.counters()
        per_sample = {key[1][0]: flops for key, flops in meter.flops_per_sample.items() if key[0] == "denoiser"}
    off, on = counters[False], counters[True]
    for key in ("nfe", "nfe_forward", "nfe_backward", "flops", "flops_denoiser", "flops_decoder", "flops_reward",
                "flops_text", "nfe_eq"):
        assert on[key] == off[key], key
    assert off["nfe_recompute"] == 0 and off["flops_recompute"] == 0
    # Recomputed: each checkpointed step whose backward runs (the final step is never checkpointed). ROCM: the
    # policy's N-1 noisy steps, and the reference's where its input carries gradient (not at x_T): K - 2 of them.
    b, n = 4, 4
    k = fields.get("k", n)
    policy, reference = k - 1, (k - 2 if name != "rocm-none" else 0)  # recomputed forwards per sample
    assert on["nfe_recompute"] == b * (policy + reference)
    expected = b * (policy * per_sample["policy"] + reference * per_sample.get("reference", 0.0))
    assert on["flops_recompute"] == pytest.approx(expected, rel=1e-12)


def test_rebel_memory_saving_pass_is_recomputation():
    counters = {}
    for saving in (False, True):
        algo, meter = build("rebel", 4, batch_size=8, memory_saving=saving)
        algo.step()
        counters[saving] = meter.counters()
    assert counters[True]["nfe"] == counters[False]["nfe"] and counters[True]["flops"] == counters[False]["flops"]
    assert counters[False]["nfe_recompute"] == 0 and counters[True]["nfe_recompute"] == 8 * 3  # one pass: 3 steps


def test_counters_round_trip_with_the_recompute_counters():
    algo, meter = build("rocm-kl", 4, checkpointing=True, batch_size=2)
    algo.step()
    c = meter.counters()
    assert c["nfe_recompute"] > 0 and c["flops_recompute"] > 0
    back = ComputeMeter()
    back.load_counters(c)
    assert back.counters() == c


TINY = ["--model", "tiny", "--no-progress", "--set", "eval.points=1"]


def test_an_nfe_budget_smaller_than_one_step_is_refused_up_front(bench_cli, tmp_path):
    """ddpo on tiny: 32 trajectories x (4 forwards + 3 x (forward + backward)) = 416 NFE a step."""
    out = tmp_path / "suite"
    code, _, err = bench_cli("run", "--methods", "rocm-kl,ddpo", "--budget", "400nfe", "--out", str(out), *TINY)
    assert_one_line_error(code, err, "ddpo: one outer step costs 416 NFE (sampler.steps = 4), more than the whole "
                                     "budget (400nfe)")
    assert not out.exists()
    # Within the runner's tolerance (0.5%) a step still fits, as the runner would let it.
    from bench.core.compute import Budget
    from bench.run.config import SuiteConfig, validate

    suite = SuiteConfig(methods=["ddpo"], rewards=["brightness"], seeds=[0], budget=Budget.parse("414nfe"))
    validate(suite)
