"""Validation up front: every method entry's config (after `--set`) is checked before the first run starts, by
the shared rules of bench/core/checks.py. Each case goes through `bench run` with a valid method first in the
suite: a bad value of a later entry is exit 2, one line, and no suite folder written (no run started)."""

import pytest

from bench.core import checks
from bench.core.errors import BenchError
from tests.conftest import assert_one_line_error

TINY = ["--model", "tiny", "--budget", "200nfe", "--no-progress", "--set", "eval.points=1"]


@pytest.mark.parametrize("method, sets, match", [
    # shared by every method (TrainConfig)
    ("ddpo", ["ddpo.lr=0"], "ddpo: lr must be > 0, got 0.0"),
    ("d3po", ["d3po.weight_decay=-1"], "d3po: weight_decay must be >= 0"),
    ("rocm-js", ["rocm-js.max_grad_norm=nan"], "rocm-js: max_grad_norm must be a finite number, got nan"),
    ("refl", ["refl.batch_size=0"], "refl: batch_size must be >= 1"),
    # ROCM
    ("rocm-kl", ["rocm-kl.divergence=kll"], "unknown divergence 'kll'; did you mean 'kl'?"),
    ("rocm-none", ["rocm-none.beta=1"], "rocm-none: divergence 'none' needs beta = 0"),
    ("rocm-tv", ["rocm.beta=-1"], "rocm-tv: beta must be >= 0"),
    ("rocm-kl", ["rocm-kl.per_dim=maybe"], "per_dim setting 'maybe'"),
    ("rocm-kl", ["rocm-kl.step_weighting=normalised"], "did you mean 'normalized'?"),
    # DRaFT-K / AlignProp (the sampler-dependent rule too)
    ("draft-k", ["draft-k.k=-1"], "draft-k: k must be >= 0"),
    ("draft-k", ["draft-k.k=4"], "draft-k: k = 4 >= sampler.steps = 4: gradient through every step, that is rocm-none"),
    ("alignprop", ["alignprop.k=2", "alignprop.k_min=5"], "alignprop: k_min must be 0"),
    ("alignprop", ["sampler.steps=2"], "is DRaFT-1 (draft-k); AlignProp's random truncation needs sampler.steps >= 3"),
    ("draft-k", ["draft-k.n_lv=2", "sampler.steps=1"], "needs sampler.steps >= 2"),
    # ReFL
    ("refl", ["refl.step_min=9"], "refl: steps 9 … -1 are not a range within the 4 sampling steps"),
    ("refl", ["refl.scale=0"], "refl: scale must be > 0"),
    ("refl", ["refl.step_min=3"], "refl: steps 3 … 3 are the last step alone at sampler.steps = 4: that is DRaFT-1"),
    ("refl", ["refl.step_min=3", "refl.step_max=2"], "refl: step_max (2) is below step_min (3)"),
    # DDPO
    ("ddpo", ["ddpo.train_batch_size=3"], "ddpo: batch_size (32) must be a multiple of train_batch_size (3)"),
    ("ddpo", ["ddpo.train_batch_size=0"], "ddpo: train_batch_size must be >= 1"),
    ("ddpo", ["ddpo.batch_size=5"], "must equal prompts_per_step x samples_per_prompt"),
    ("ddpo", ["ddpo.stat_min_count=100"], "would never use per-prompt statistics"),
    ("ddpo", ["ddpo.clip_range=0"], "ddpo: clip_range must be > 0"),
    ("ddpo", ["ddpo.inner_epochs=0"], "ddpo: inner_epochs must be >= 1"),
    # GRPO, DPOK
    ("grpo", ["grpo.samples_per_prompt=1", "grpo.train_batch_size=4"], "group size G"),
    ("grpo", ["grpo.timestep_fraction=1.5"], "grpo: timestep_fraction must be in (0, 1], got 1.5"),
    ("grpo", ["grpo.stat_buffer=5"], "GRPO's advantages use each step's group alone"),
    ("grpo", ["grpo.adv_norm=batch"], "unknown grpo.adv_norm 'batch'"),
    ("ddpo-kl", ["ddpo-kl.divergence=hellingr"], "did you mean 'hellinger'?"),
    ("ddpo-kl", ["ddpo.beta=-0.5"], "ddpo-kl: beta must be >= 0"),
    ("dpok", ["dpok.kl_weight=-0.5"], "dpok: kl_weight must be >= 0"),
    ("dpok", ["dpok.batch_size=1", "dpok.train_batch_size=4"], "fewer than train_batch_size"),
    # D3PO, REBEL: pairs
    ("d3po", ["d3po.train_batch_size=3"], "twice a multiple of train_batch_size"),
    ("d3po", ["d3po.train_batch_size=0"], "d3po: train_batch_size must be >= 1"),
    ("d3po", ["d3po.ratio_clip=0"], "d3po: ratio_clip must be > 0"),
    ("rebel", ["rebel.eta=0"], "rebel: eta must be > 0"),
    ("rebel", ["rebel.stat_min_count=40"], "stat_min_count"),
    # the shared sections
    ("ddpo", ["sampler.steps=0"], "sampler.steps must be >= 1"),
    ("ddpo", ["model.dtype=bf16"], "unknown model.dtype 'bf16'"),
    ("ddpo", ["model.lora_rank=-1"], "model.lora_rank must be >= 0"),
])
def test_a_bad_method_setting_stops_the_suite_before_its_first_run(bench_cli, tmp_path, method, sets, match):
    out = tmp_path / "suite"
    first = "ddpo" if method.startswith("rocm") else "rocm-kl"  # a valid entry that would otherwise run first
    code, _, err = bench_cli("run", "--methods", f"{first},{method}", "--out", str(out), *TINY,
                             *[a for s in sets for a in ("--set", s)])
    assert_one_line_error(code, err, match)
    assert not out.exists()


@pytest.mark.parametrize("methods, reward", [("rocm-kl", "jpeg-compressibility"), ("draft-k", "jpeg-compressibility"),
                                             ("refl", "jpeg-compressibility")])
def test_first_order_methods_need_a_differentiable_reward_up_front(bench_cli, tmp_path, methods, reward):
    out = tmp_path / "suite"
    code, _, err = bench_cli("run", "--methods", f"ddpo,{methods}", "--rewards", reward, "--out", str(out), *TINY)
    assert_one_line_error(code, err, f"method '{methods}' back-propagates through the reward, but reward '{reward}'")
    assert not out.exists()


def test_shared_rules():
    checks.at_least("x", 0, 0)
    checks.positive("x", 1e-9)
    checks.in_range("x", 1.0, 0, 1, open_low=True)
    checks.multiple_of("m", "batch", 8, "mb", 4)
    for call, match in ((lambda: checks.at_least("x", float("nan"), 0), "x must be a finite number, got nan"),
                        (lambda: checks.positive("x", 0), "x must be > 0"),
                        (lambda: checks.in_range("x", 0, 0, 1, open_low=True), r"x must be in \(0, 1\]"),
                        (lambda: checks.in_range("x", 2, 0, 1), r"x must be in \[0, 1\]"),
                        (lambda: checks.multiple_of("m", "batch", 8, "mb", 3), r"m: batch \(8\) must be a multiple"),
                        (lambda: checks.one_of("mode", "sun", ("sum", "mean")), "did you mean 'sum'")):
        with pytest.raises(BenchError, match=match):
            call()
