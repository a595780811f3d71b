"""Shared test set-up: never touch the network; tiny models built from config with fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def tiny_policy():
    from bench.models import ModelConfig, tiny

    torch.manual_seed(0)
    return tiny(ModelConfig())


@pytest.fixture
def train_prompts():
    from bench.prompts import PROMPT_SETS

    return PROMPT_SETS["tiny"]["train"][:4]
