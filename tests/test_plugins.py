"""Plugins: a method and a reward defined here, outside the package, run end to end through `bench run` by import
path; an installed package's entry points (a dist-info folder on sys.path) appear in `bench ls` and resolve
like built-in names; what is not a Method / Reward / model builder, or cannot be imported, is one line."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bench.api import Knob, Method, Reward, TrainConfig, positive, sample
from bench.registry import lookup
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]


# ---- a plugin method and reward, as a user would write them with bench.api only --------------------------------
class RednessReward(Reward):
    """Red minus the mean of green and blue (differentiable)."""

    name, version, differentiable = "redness", "1", True

    def score(self, images, prompts):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))  # (B,)


@dataclass
class LastStepConfig(TrainConfig):
    KNOBS = TrainConfig.KNOBS | {"reward_scale": Knob(0.1, 10.0, log=True)}

    batch_size: int = 4
    reward_scale: float = 1.0
    """Multiplier of the reward in the loss."""

    def resolve(self, name):
        super().resolve(name)
        positive(f"{name}: reward_scale", self.reward_scale)


class LastStep(Method):
    """Reward gradient through the last sampling step only (a DRaFT-1 written as a plugin)."""

    name = "last-step"
    Config = LastStepConfig
    first_order = True

    def step(self):
        rows = self.dist.rows(self.cfg.batch_size)
        traj = sample(self.policy, self.draw_prompts(self.cfg.batch_size), self.sampler, self.generator, grad=True,
                      grad_steps=1, rows=rows)
        reward = self.reward(traj.images, traj.prompts)  # (b,)
        loss = -self.cfg.reward_scale * reward.mean()
        self.backward(loss, self.dist.share(len(rows), self.cfg.batch_size))
        grad_norm = self.update()
        self.steps_done += 1
        return {"reward_mean": reward.mean().item(), "loss": loss.item(), "grad_norm": grad_norm}


class Nameless(Reward):
    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def not_a_builder():  # takes no (config, meter)
    return None


def tiny_red(config, meter=None):
    """The tiny model, with its own defaults."""
    from bench.api import TinySpec, build_tiny

    return build_tiny(TinySpec(image_size=8), config, meter)


tiny_red.defaults = {"reward": "colorfulness", "prompts": "tiny", "metrics": ["brightness"]}


def not_a_policy(config, meter=None):
    return object()


HERE = "tests.test_plugins"
TINY = ["--model", "tiny", "--seeds", "0", "--no-progress", "--set", "eval.points=1", "--set", "eval.max_prompts=2",
        "--set", "eval.samples_per_prompt=1", "--set", "eval.min_images=0"]


@pytest.fixture
def registries(monkeypatch):
    """Fresh copies of every registry and of the plugin state, so that what a test registers does not leak."""
    from bench.registry import catalog as registry
    from bench.registry import plugins

    for name in ("METHODS", "REWARDS", "SET_METRICS", "MODELS", "MODEL_DEFAULTS"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    monkeypatch.setattr(plugins, "PLUGIN_TARGETS", set())
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    return registry


def test_plugin_method_and_reward_run_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "suite"
    args = [sys.executable, "-m", "bench.cli.main", "run", "--methods", f"{HERE}:LastStep", "--rewards",
            f"{HERE}:RednessReward", "--budget", "24nfe", "--out", str(out), *TINY,
            "--set", "last-step.reward_scale=2", "--set", f"eval.metrics={HERE}:RednessReward,brightness"]
    p = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    run = out / "runs" / "last-step__redness__seed0"  # named by the declared names, not the import paths
    assert [d.name for d in (out / "runs").iterdir()] == [run.name]
    config = json.loads((run / "config.json").read_text())
    assert config["method_class"] == f"{HERE}:LastStep" and config["method_config"]["reward_scale"] == 2.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and 0 < summary["nfe"] <= 24 * 1.005
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in rows} == {"redness", "brightness", "kl-to-base"}
    steps = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert steps and all(s["grad_norm"] > 0 for s in steps)  # the plugin's gradient reached the LoRA


@pytest.mark.parametrize("args, match", [
    (["--methods", f"{HERE}:RednessReward"], "is not a Method: expected a subclass of bench.api.Method"),
    (["--methods", "tests.no_such_module:LastStep"], "cannot import method plugin 'tests.no_such_module:LastStep': "
                                                     "ModuleNotFoundError"),
    (["--methods", f"{HERE}:Missing"], "has no attribute 'Missing'"),
    (["--methods", f"{HERE}:LastStep", "--rewards", f"{HERE}:LastStep"], "is not a Reward"),
    (["--methods", "ddpo", "--rewards", f"{HERE}:Nameless"], "declares no name"),
    (["--model", f"{HERE}:LastStep"], "is not a model builder"),
    (["--model", f"{HERE}:not_a_builder"], "must accept (config, meter)"),
    (["--methods", f"{HERE}:LastStep", "--set", "last-step.reward_scale=0"], "last-step: reward_scale must be > 0"),
    (["--methods", f"{HERE}:LastStep", "--rewards", "jpeg-compressibility"], "not differentiable"),
])
def test_a_bad_plugin_is_one_line(registries, bench_cli, tmp_path, args, match):
    out = tmp_path / "suite"
    code, _, err = bench_cli("run", *TINY, "--budget", "24nfe", "--out", str(out), *args)
    assert_one_line_error(code, err, match)
    assert not out.exists()


def test_a_plugin_model_and_its_defaults(registries):
    from bench.cli.run import suite_from_options
    from bench.core.errors import BenchError
    from bench.core.policy import ModelConfig
    from bench.run.config import metrics_for, validate
    from bench.run.suite_file import RunOptions

    suite, _ = suite_from_options(RunOptions(model=f"{HERE}:tiny_red", methods="ddpo", budget="1000nfe"))  # > 1 step
    validate(suite)
    assert suite.model.name == "tiny-red" and suite.rewards == ["colorfulness"]  # the builder's declared defaults
    assert metrics_for(suite, "colorfulness") == ["colorfulness", "brightness", "kl-to-base"]
    assert lookup.model_builder("tiny-red")(ModelConfig()).image_size == 8
    with pytest.raises(BenchError, match="returned object instead of a bench.api.Policy"):
        lookup.model_builder(f"{HERE}:not_a_policy")(ModelConfig())


def test_a_declared_name_taken_by_a_builtin_is_refused(registries, monkeypatch):
    from bench.core.errors import BenchError

    monkeypatch.setattr(LastStep, "name", "ddpo")
    with pytest.raises(BenchError, match="declares the name 'ddpo', already registered to 'methods.ddpo:DDPO'"):
        lookup.find("method", f"{HERE}:LastStep")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A package installed as pip would leave it: a dist-info folder with entry_points.txt on sys.path."""
    info = tmp_path / "site" / "my_bench_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-bench-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[cm_rlhf_bench.methods]\nmy-last-step = {HERE}:LastStep\nbroken = {HERE}:RednessReward\n\n"
        f"[cm_rlhf_bench.rewards]\nmy-redness = {HERE}:RednessReward\n\n"
        f"[cm_rlhf_bench.models]\nmy-tiny = bench.core.tiny:tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_entry_points_appear_in_bench_ls_and_resolve(registries, installed, bench_cli):
    code, out, _ = bench_cli("ls")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "Reward gradient through the last sampling step only" in lines["my-last-step"]
    assert "Red minus the mean of green and blue" in lines["my-redness"]
    assert "Random ~0.8 M-parameter" in lines["my-tiny"]
    assert "not usable" in lines["broken"] and "is not a Method" in lines["broken"]
    # Installed names work like built-in ones (entry-point names name the runs); the contract is checked on use.
    from bench.core.compute import Budget
    from bench.core.errors import BenchError
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, validate

    suite = SuiteConfig(methods=["my-last-step"], rewards=["my-redness"], seeds=[0], budget=Budget.parse("24nfe"),
                        model=ModelConfig(name="my-tiny"))
    validate(suite)
    assert (suite.methods, suite.rewards) == (["my-last-step"], ["my-redness"])
    cls, _ = lookup.method_class("my-last-step")
    assert cls is LastStep and lookup.model_builder("my-tiny")(ModelConfig()).latent_shape == (3, 16, 16)
    with pytest.raises(BenchError, match="method plugin 'tests.test_plugins:RednessReward' is not a Method"):
        lookup.method_class("broken")


def test_api_exports_only_what_it_imports():
    import bench.api as api

    assert set(api.__all__) == {n for n in vars(api) if not n.startswith("_")}
    assert torch.is_tensor(RednessReward()(torch.rand(2, 3, 4, 4), ["a", "b"]))


def test_a_plugin_as_a_term_of_an_objective(registries):
    """A plugin's import path inside an expression is registered under its declared name, which names the runs."""
    name = lookup.find("reward", "z(tests.test_plugins:RednessReward)+0.5*brightness")
    assert name == "z(redness)+0.5*brightness" and registries.REWARDS["redness"] == "tests.test_plugins:RednessReward"
    cls = lookup.reward_class(name)
    assert cls.differentiable and list(cls.objective.labels) == ["z(redness)", "brightness"]
