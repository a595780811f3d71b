"""Budgets, `--set` overrides and up-front validation: every mistake is a BenchError before anything runs."""

import pytest

from bench.core.compute import Budget, ComputeMeter
from bench.core.errors import BenchError
from bench.run.config import SuiteConfig, apply_sets, method_config, validate


@pytest.mark.parametrize("text,kind,amount", [("2000nfe", "nfe", 2000), ("30s", "seconds", 30), ("1.5h", "seconds", 5400),
                                              ("10m", "seconds", 600), (" 2e3NFE ", "nfe", 2000)])
def test_budget_parse(text, kind, amount):
    b = Budget.parse(text)
    assert (b.kind, b.amount) == (kind, amount)


@pytest.mark.parametrize("text", ["", "12", "nfe", "-5s", "0nfe", "3 parsecs", "1.5.2h"])
def test_bad_budget(text):
    with pytest.raises(BenchError, match="bad budget"):
        Budget.parse(text)


def test_meter_counts_backward_twice_and_pauses():
    m = ComputeMeter()
    m.charge_forward(8)
    m.charge_backward(8)
    with m.paused():
        m.charge_forward(100)
        m.charge_reward(100)
    m.charge_reward(8)
    assert m.nfe == 8 + 2 * 8 and m.reward_calls == 8
    assert m.fraction(Budget.parse("48nfe")) == 0.5


def suite(**kw):
    # 1000 NFE: more than one default step of each method at up to 8 sampling steps (validate refuses less)
    base = dict(methods=["rocm-kl", "ddpo"], rewards=["brightness"], seeds=[0], budget=Budget.parse("1000nfe"))
    return SuiteConfig(**(base | kw))


def test_set_overrides_reach_the_right_methods():
    s = suite(methods=["rocm-kl", "rocm-js", "ddpo"])
    apply_sets(s, ["rocm.beta=0.5", "rocm-js.beta=2", "method.lr=1e-4", "sampler.steps=8", "eval.points=3",
                   "model.lora_rank=4", "ddpo.clip_range=0.2"])
    assert (s.sampler.steps, s.eval.points, s.model.lora_rank) == (8, 3, 4)
    assert method_config("rocm-kl", s)[1].beta == 0.5
    assert method_config("rocm-js", s)[1].beta == 2.0  # the specific entry wins over the family
    assert method_config("ddpo", s)[1].clip_range == 0.2
    assert all(method_config(m, s)[1].lr == 1e-4 for m in s.methods)
    assert method_config("rocm-js", s)[1].divergence == "js"  # registry overrides kept
    validate(s)


@pytest.mark.parametrize("sets,match", [
    (["sampler.stepz=3"], "did you mean 'sampler.steps'"),
    (["rocm.betta=1"], "did you mean 'rocm.beta'"),
    (["rocmm.beta=1"], "did you mean 'rocm'"),
    (["sampler.steps=many"], "is not a int"),
    (["steps=3"], "expected section.field"),
    (["sampler.steps"], "expected key=value"),
    (["method.nonexistent=1"], "no method in this suite"),
])
def test_bad_sets(sets, match):
    s = suite()
    with pytest.raises(BenchError, match=match):
        apply_sets(s, sets)
        validate(s)


@pytest.mark.parametrize("kw,match", [
    (dict(methods=["rocm-kll"]), "did you mean 'rocm-kl'"),
    (dict(rewards=["brightnes"]), "did you mean 'brightness'"),
    (dict(methods=["rocm-none"], rewards=["jpeg-compressibility"]), "not differentiable"),
    (dict(methods=[]), "no methods"),
])
def test_validation_errors(kw, match):
    with pytest.raises(BenchError, match=match):
        validate(suite(**kw))


def test_policy_gradient_methods_accept_non_differentiable_reward():
    validate(suite(methods=["ddpo", "d3po"], rewards=["jpeg-compressibility"]))


def test_evaluation_schedule_is_dense_by_default():
    from bench.run.config import DENSE, EvalConfig, eval_schedule

    assert eval_schedule(EvalConfig()) == list(DENSE) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0]
    assert eval_schedule(EvalConfig(points=4)) == [0.25, 0.5, 0.75, 1.0]
    assert eval_schedule(EvalConfig(points=4, fractions=(0.5, 0.1))) == [0.1, 0.5, 1.0]  # fractions win; 1 added
