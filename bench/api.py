"""What a method, reward or model is written against — built-in or plugin: the contracts of a method, a reward
and a model, their configs, the shared sampler, the divergences and the helpers a method reuses. Everything here
lives in bench/core/ (which imports nothing else of the package); this module only names it, once. methods/ and
rewards/ import from here (rewards also from the reward-server codec and the weight cache of bench/core/), and
docs/extending.md shows the use:

    from bench.api import Method, TrainConfig, Knob, Reward, sample

A plugin given as `package.module:Name`, or through an entry point, is checked against these contracts when
it is first used (bench/registry/plugins.py).
"""

from bench.core.checks import at_least, in_range, multiple_of, one_of, positive, require_differentiable, stat_counts
from bench.core.compute import ComputeMeter
from bench.core.distributed import Dist
from bench.core.divergences import (
                               DIVERGENCES,
                               STEP_WEIGHT_MODES,
                               gaussian_divergence,
                               per_dim_default,
                               step_weights,
                               whole_vector_delta,
)
from bench.core.errors import BenchError, unknown_name
from bench.core.method import Knob, Method, TrainConfig, check_pair_batch
from bench.core.policy import ModelConfig, Policy
from bench.core.reward import Reward, SetMetric
from bench.core.sampler import (
                               SamplerConfig,
                               Trajectory,
                               final_step_gaussian,
                               gaussian_log_prob,
                               make_schedule,
                               mean_at,
                               sample,
                               step_log_prob,
                               step_mean,
)
from bench.core.tiny import TinySpec, build_tiny

__all__ = [
    # contracts
    "Method", "Reward", "SetMetric", "Policy",
    # configs
    "TrainConfig", "Knob", "SamplerConfig", "ModelConfig", "TinySpec",
    # the shared sampler, read as a Gaussian policy
    "sample", "Trajectory", "step_log_prob", "step_mean", "gaussian_log_prob", "make_schedule", "mean_at",
    "final_step_gaussian",
    # divergences between the trained and the frozen per-step Gaussian policies (docs/methods.md §2)
    "gaussian_divergence", "DIVERGENCES", "per_dim_default", "whole_vector_delta", "step_weights", "STEP_WEIGHT_MODES",
    # helpers: compute meter, data parallelism, a model of the real diffusers classes, errors and checks
    "ComputeMeter", "Dist", "build_tiny", "BenchError", "unknown_name",
    "at_least", "positive", "in_range", "multiple_of", "one_of", "require_differentiable", "check_pair_batch",
    "stat_counts",
]
