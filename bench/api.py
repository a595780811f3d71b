"""What a plugin author imports: the contracts of a method, a reward and a model, their configs, the shared
sampler and the helpers a method reuses. Nothing else is defined here; docs/extending.md shows their use.

    from bench.api import Method, TrainConfig, Knob, Reward, sample

A plugin given as `package.module:Name`, or through an entry point, is checked against these contracts when
it is first used (bench/plugins.py).
"""

from bench.checks import at_least, in_range, multiple_of, one_of, positive, require_differentiable
from bench.compute import ComputeMeter
from bench.distributed import Dist
from bench.errors import BenchError, unknown_name
from bench.method import Knob, Method, TrainConfig, check_pair_batch
from bench.models import ModelConfig, Policy, TinySpec, build_tiny
from bench.reward import Reward, SetMetric
from bench.sampler import SamplerConfig, Trajectory, gaussian_log_prob, sample, step_log_prob, step_mean

__all__ = [
    # contracts
    "Method", "Reward", "SetMetric", "Policy",
    # configs
    "TrainConfig", "Knob", "SamplerConfig", "ModelConfig", "TinySpec",
    # the shared sampler, read as a Gaussian policy
    "sample", "Trajectory", "step_log_prob", "step_mean", "gaussian_log_prob",
    # helpers: compute meter, data parallelism, a model of the real diffusers classes, errors and checks
    "ComputeMeter", "Dist", "build_tiny", "BenchError", "unknown_name",
    "at_least", "positive", "in_range", "multiple_of", "one_of", "require_differentiable", "check_pair_batch",
]
