"""What `bench perf` measures: the suite of one configuration, and the (method, policy, reward) built exactly as the
runner builds them — the model and the reward once, shared by every method timed on it (building a real-size model
takes longer than timing a method), each method with its own optimizer, generator and a fresh compute meter.
"""

from __future__ import annotations

import json

import torch

from bench.core.compute import Budget, ComputeMeter
from bench.core.device import resolve_device
from bench.core.policy import ModelConfig
from bench.registry.lookup import model_builder, reward_class
from bench.run.config import SuiteConfig, apply_sets, method_config, split_prompts, to_dict, validate

REWARD = "brightness"  # differentiable and nearly free, so every method can train on it


def make_suite(model: str, methods: list[str], sets: list[str], device: str, reward: str = REWARD) -> SuiteConfig:
    # the budget is never spent (perf times single steps); a time budget, so no step is refused as too large for it
    suite = SuiteConfig(methods=methods, rewards=[reward], seeds=[0], budget=Budget.parse("3600s"),
                        model=ModelConfig(name=model), device=device)
    apply_sets(suite, sets)
    validate(suite)
    return suite


def model_key(suite: SuiteConfig) -> str:
    """What the built model depends on: suites with the same key can share one build."""
    return json.dumps([to_dict(suite.model), suite.device, suite.rewards[0]])


def build_shared(suite: SuiteConfig):
    """(policy, reward) on the suite's device, seed 0, as the runner builds them."""
    device = resolve_device(suite.device)
    torch.manual_seed(0)
    policy = model_builder(suite.model.name)(suite.model, ComputeMeter()).to(device)
    reward = reward_class(suite.rewards[0])(device, policy.meter)
    reward.autocast_dtype = suite.model.dtype
    return policy, reward


def build_method(suite: SuiteConfig, name: str, policy, reward):
    """The method `name` of `suite` on a shared (policy, reward): a fresh meter (so counts start at zero), an
    empty prompt cache (so the text encoder is charged as in a new run), its own optimizer and generator."""
    meter = ComputeMeter()
    policy.meter = reward.meter = meter
    policy.clear_prompt_cache()
    cls, cfg = method_config(name, suite)
    torch.manual_seed(0)
    return cls(name, cfg, policy, suite.sampler, reward, split_prompts(suite)["train"],
               torch.Generator().manual_seed(0))


def build(suite: SuiteConfig, name: str):
    """(method, policy, reward) of one configuration, each built afresh (a peak-memory child process)."""
    policy, reward = build_shared(suite)
    return build_method(suite, name, policy, reward), policy, reward
