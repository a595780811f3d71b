"""The speed settings of issue 21 part 4 change no result on a CPU beyond float noise. Frozen weights in the
autocast dtype, the reward under autocast and fused AdamW only act on a GPU, so on the CPU a run with them asked for
is identical to one without (the same computation: equal). Channels-last changes the memory layout of the
convolutions' tensors, so the kernels sum in another order: a 3-step tiny run's evaluation agrees within 1e-4
relative (float32 rounding of sums over ~10^3 terms, grown over three optimizer steps), except the JPEG size,
which is discrete: a pixel that rounds to another uint8 value changes a file by a few bytes, so it agrees within
0.01 kB a file (seen: 0.25 bytes on average). The casting itself is
checked directly: frozen parameters take the dtype, trained ones stay float32. torch.compile is slow-marked."""

from __future__ import annotations

import json

import pytest
import torch

from bench.core.compute import Budget
from bench.core.policy import ModelConfig, cast_frozen
from bench.core.tiny import tiny
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite

EVAL = ["eval.points=1", "eval.max_prompts=2", "eval.min_images=0", "eval.samples_per_prompt=2",
        "method.batch_size=4"]


def evaluation(tmp_path, name: str, sets: list[str]) -> dict:
    suite = SuiteConfig(methods=["rocm-kl"], rewards=["brightness"], seeds=[0], budget=Budget.parse("300nfe"),
                        model=ModelConfig(name="tiny"))
    apply_sets(suite, [*EVAL, *sets])
    (run,) = run_suite(suite, tmp_path / name, show_progress=False)
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    return {(r["fraction"], r["split"], r["metric"]): r["value"] for r in rows}


def test_gpu_only_settings_change_nothing_on_a_cpu(tmp_path):
    plain = evaluation(tmp_path, "plain", [])
    assert evaluation(tmp_path, "bf16", ["model.dtype=bfloat16", "model.frozen_in_dtype=true"]) == plain


def test_channels_last_agrees_within_float_noise(tmp_path):
    plain = evaluation(tmp_path, "plain", [])
    other = evaluation(tmp_path, "cl", ["model.channels_last=true"])
    assert other.keys() == plain.keys()
    for key, value in plain.items():
        tolerance = {"abs": 0.01} if key[2].startswith("jpeg") else {"rel": 1e-4, "abs": 1e-6}
        assert other[key] == pytest.approx(value, **tolerance), key


def test_cast_frozen_leaves_the_trained_weights_in_float32():
    torch.manual_seed(0)
    policy = tiny(ModelConfig())
    trained = {id(p) for p in policy.trainable_parameters()}
    cast_frozen(policy, torch.bfloat16)
    for p in policy.parameters():
        assert p.dtype == (torch.float32 if id(p) in trained else torch.bfloat16)
    assert trained and any(p.dtype == torch.bfloat16 for p in policy.unet.parameters())
