"""What `bench perf` measures: the suite and the (method, policy, reward) of one configuration, built exactly as
the runner builds them.
"""

from __future__ import annotations

import torch

from bench.core.compute import Budget, ComputeMeter
from bench.core.policy import ModelConfig
from bench.registry.lookup import model_builder, reward_class
from bench.run.config import SuiteConfig, apply_sets, method_config, validate

REWARD = "brightness"  # differentiable and nearly free, so every method can train on it


def make_suite(model: str, methods: list[str], sets: list[str], device: str) -> SuiteConfig:
    suite = SuiteConfig(methods=methods, rewards=[REWARD], seeds=[0], budget=Budget.parse("1nfe"),
                        model=ModelConfig(name=model), device=device)
    apply_sets(suite, sets)
    validate(suite)
    return suite


def build(suite: SuiteConfig, name: str):
    """(method, policy, reward) exactly as the runner builds them, seed 0."""
    from bench.core.device import resolve_device
    from bench.run.config import split_prompts

    device = resolve_device(suite.device)
    cls, cfg = method_config(name, suite)
    torch.manual_seed(0)
    policy = model_builder(suite.model.name)(suite.model, ComputeMeter()).to(device)
    reward = reward_class(REWARD)(device, policy.meter)
    prompts = split_prompts(suite)["train"]
    algo = cls(name, cfg, policy, suite.sampler, reward, prompts, torch.Generator().manual_seed(0))
    return algo, policy, reward
