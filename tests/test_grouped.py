"""Grouped sampling for DDPO: each step draws P distinct prompts x K samples, so advantages come from per-prompt
statistics from the first step (the reviewer's point: with 32 prompts drawn with replacement from 90 and
stat_min_count = 16, most advantages came from whole-batch statistics). Checked on the tiny model and by
simulating the real draw and the real tracker over many steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.core.sampler import SamplerConfig
from methods.ddpo import DDPO, DDPOConfig
from rewards.toy import Brightness

# The testbed's training split has 90 prompts; a 15,000-NFE testbed run of DDPO at 4 sampling steps takes
# 15000 / (32 x 13 NFE) = 36 outer steps.
NUM_PROMPTS, RUN_STEPS = 90, 36
BEFORE_GROUPING = {"prompts_per_step": 32, "samples_per_prompt": 1, "prompt_replacement": True,
                   "stat_min_count": 16, "stat_buffer": 32}


def ddpo(policy, prompts, **fields) -> DDPO:
    return DDPO("ddpo", DDPOConfig(**fields), policy, SamplerConfig(steps=2), Brightness(), prompts,
                torch.Generator().manual_seed(0))


def simulated_share(algo: DDPO, steps: int, seed: int = 0) -> float:
    """Fraction of advantages from per-prompt statistics over `steps` outer steps of the method's own prompt draw
    and tracker, with random rewards in place of sampling (the share does not depend on the rewards' values)."""
    rng = np.random.default_rng(seed)
    own = []
    for _ in range(steps):
        prompts = algo.draw_prompt_groups(algo.cfg.prompts_per_step, algo.cfg.samples_per_prompt,
                                          algo.cfg.prompt_replacement)
        assert len(prompts) == algo.cfg.batch_size
        own.append(algo.tracker.update_with_mask(prompts, rng.normal(size=len(prompts)))[1])
    return float(np.concatenate(own).mean())


@pytest.fixture
def many_prompts() -> list[str]:
    return [f"prompt {i}" for i in range(NUM_PROMPTS)]


def test_default_step_uses_per_prompt_statistics_from_the_first_step(tiny_policy, train_prompts) -> None:
    algo = ddpo(tiny_policy, train_prompts)
    cfg = algo.cfg
    assert (cfg.prompts_per_step, cfg.samples_per_prompt, cfg.batch_size) == (4, 8, 32)
    assert cfg.stat_min_count <= cfg.samples_per_prompt and cfg.stat_buffer >= cfg.stat_min_count
    logs = algo.step()
    assert logs["per_prompt_share"] >= 0.99
    assert np.isfinite(logs["loss"]) and logs["grad_norm"] > 0


def test_default_draw_keeps_per_prompt_statistics_over_a_run(tiny_policy, many_prompts) -> None:
    assert simulated_share(ddpo(tiny_policy, many_prompts), 10 * RUN_STEPS) >= 0.99


def test_before_grouping_configuration_falls_back_to_batch_statistics(tiny_policy, many_prompts) -> None:
    # The switch is real: the old configuration, over a run's worth of steps, mostly used batch statistics.
    assert simulated_share(ddpo(tiny_policy, many_prompts, **BEFORE_GROUPING), RUN_STEPS) < 0.2


@pytest.mark.parametrize("k", [2, 4, 16])
def test_every_swept_group_size_keeps_per_prompt_statistics(tiny_policy, many_prompts, k) -> None:
    algo = ddpo(tiny_policy, many_prompts, samples_per_prompt=k)
    assert algo.cfg.batch_size == 4 * k
    assert simulated_share(algo, RUN_STEPS) >= 0.99


def test_prompts_of_a_step_are_distinct_groups(tiny_policy, many_prompts) -> None:
    algo = ddpo(tiny_policy, many_prompts, prompts_per_step=30, samples_per_prompt=3, train_batch_size=2)
    seen = set()
    for _ in range(20):
        prompts = algo.draw_prompt_groups(30, 3)
        groups = [prompts[i:i + 3] for i in range(0, 90, 3)]
        assert all(len(set(g)) == 1 for g in groups)  # each group is K samples of one prompt, in a row
        firsts = [g[0] for g in groups]
        assert len(set(firsts)) == 30  # distinct prompts within the step
        seen.update(firsts)
    assert len(seen) == NUM_PROMPTS  # and not always the same ones


def test_more_groups_than_prompts_spreads_them_evenly(tiny_policy, train_prompts) -> None:
    algo = ddpo(tiny_policy, train_prompts)  # 4 prompts
    counts = {p: 0 for p in train_prompts}
    for p in algo.draw_prompt_groups(10, 1):
        counts[p] += 1
    assert sorted(counts.values()) == [2, 2, 3, 3]


def test_before_grouping_draws_exactly_as_draw_prompts_did(tiny_policy, many_prompts) -> None:
    algo = ddpo(tiny_policy, many_prompts, **BEFORE_GROUPING)
    reference = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(NUM_PROMPTS, (32,), generator=reference)  # the old DDPO step's draw
        assert algo.draw_prompt_groups(32, 1, replacement=True) == [many_prompts[i] for i in idx.tolist()]


def test_each_sample_of_a_group_has_its_own_noise(tiny_policy, train_prompts) -> None:
    from bench.core.sampler import sample

    algo = ddpo(tiny_policy, train_prompts, prompts_per_step=2, samples_per_prompt=2, train_batch_size=2)
    prompts = algo.draw_prompt_groups(2, 2)
    traj = sample(tiny_policy, prompts, algo.sampler, algo.generator)
    start = traj.states[:, 0].flatten(1)  # (4, D) initial noise
    assert prompts[0] == prompts[1] and not torch.allclose(start[0], start[1])


def test_batch_size_is_derived_and_an_inconsistent_one_is_an_error(tiny_policy, train_prompts) -> None:
    assert ddpo(tiny_policy, train_prompts, batch_size=32).cfg.batch_size == 32
    with pytest.raises(BenchError, match=r"batch_size \(8\) must equal prompts_per_step x samples_per_prompt") as e:
        ddpo(tiny_policy, train_prompts, batch_size=8)
    assert "\n" not in str(e.value)
    with pytest.raises(BenchError, match="multiple of train_batch_size"):
        ddpo(tiny_policy, train_prompts, prompts_per_step=3, samples_per_prompt=2)
    with pytest.raises(BenchError, match="never use per-prompt statistics"):
        ddpo(tiny_policy, train_prompts, stat_min_count=20)


def test_set_values_are_resolved_after_they_are_applied() -> None:
    # bench/run/config.py builds the config, then applies --set fields: the derived batch must follow them.
    from bench.core.compute import Budget
    from bench.run.config import SuiteConfig, apply_sets, method_config

    suite = SuiteConfig(methods=["ddpo"], rewards=["brightness"], seeds=[0], budget=Budget.parse("100nfe"))
    apply_sets(suite, ["ddpo.prompts_per_step=2", "ddpo.samples_per_prompt=4"])
    _, cfg = method_config("ddpo", suite)
    cfg.resolve("ddpo")
    assert (cfg.batch_size, cfg.stat_min_count, cfg.stat_buffer) == (8, 4, 8)
    apply_sets(suite, ["method.batch_size=16"])
    _, cfg = method_config("ddpo", suite)
    with pytest.raises(BenchError, match="set ddpo.prompts_per_step=4 instead"):
        cfg.resolve("ddpo")
