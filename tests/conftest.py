"""Shared test set-up: never touch the network; tiny models built from config with fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As the bench command does (bench/cli/main.py): OpenMP threads that sleep when idle instead of spinning, read
# when torch loads, so before its import. With spinning threads, any other busy process on a 2-core machine (a
# second test run, a sweep) slowed this suite's training tests 10-25x (a d3po checkpoint test: 8.8 s alone,
# 224 s while another test process ran); its subprocesses inherit the setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def tiny_policy():
    from bench.core.policy import ModelConfig
    from bench.core.tiny import tiny

    torch.manual_seed(0)
    return tiny(ModelConfig())


@pytest.fixture
def train_prompts():
    from bench.prompts.sets import PROMPT_SETS

    return PROMPT_SETS["tiny"]["train"][:4]


@pytest.fixture
def bench_cli(monkeypatch, capsys):
    """`bench ARGS` in this process through the real entry point (bench.cli.main): (exit code, stdout, stderr)."""
    import sys

    from bench.cli.main import main

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["bench", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def assert_one_line_error(code: int, err: str, match: str) -> None:
    """A user's mistake: exit code 2 and one line `error: ...` containing `match`, no traceback."""
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith("error:") and match in err, err


def perturb_lora(policy, scale: float = 0.05) -> None:
    """Move the LoRA B matrices off zero (a fixed draw), so that the policy differs from the reference."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.unet.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


PG_SMALL = {"prompts_per_step": 2, "samples_per_prompt": 4, "train_batch_size": 4}
"""A small DDPO-family step (DDPO, ddpo-kl, GRPO): 2 prompts x 4 samples, minibatches of 4."""


def build_on_brightness(cls, policy, prompts, steps: int = 3, reduction: str = "mean", **fields):
    """Method class `cls` with `cls.Config(**fields)` on `policy`, trained on brightness with a `steps`-step sampler."""
    from bench.core.sampler import SamplerConfig
    from rewards.toy import Brightness

    sampler = SamplerConfig(steps=steps, logprob_reduction=reduction)
    return cls(cls.__name__.lower(), cls.Config(**fields), policy, sampler, Brightness(), prompts,
               torch.Generator().manual_seed(0))
