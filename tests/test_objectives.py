"""Reward expressions: standardised rewards z(NAME) and weighted sums of rewards (bench/core/objective.py,
bench/core/combine.py, bench/run/standardise.py), and what the runner and the report do with them.

Pure parts are checked on known values; the charging and the gradient on the tiny model's images; the runner on a
suite written by the real `bench run` on the tiny model (a module fixture: rocm-kl and ddpo on
`z(brightness)+0.5*colorfulness`, and rocm-kl on the same sum without z, ~40 s), from which the report draws the
Pareto plot.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from bench.core.combine import Combined, Standardised, term_means
from bench.core.compute import ComputeMeter
from bench.core.errors import BenchError
from bench.core.objective import Objective, Term, folder_name, parse, trained_metrics
from bench.registry.lookup import find, metric_class, reward_class
from bench.results.io import read_json, read_jsonl, run_id
from tests.conftest import assert_one_line_error

SUM = "z(brightness)+0.5*colorfulness"
PLAIN_SUM = "brightness+0.5*colorfulness"
SMALL = ["--set", "eval.points=2", "--set", "eval.max_prompts=2", "--set", "eval.min_images=4",
         "--set", "ddpo.prompts_per_step=2", "--set", "ddpo.samples_per_prompt=2", "--set", "ddpo.train_batch_size=4",
         "--set", "rocm-kl.batch_size=4", "--model", "tiny", "--no-progress", "--budget", "200nfe", "--seeds", "0"]


# ------------------------------------------------------------------------------------------------ the grammar

def test_parse_known_expressions():
    assert parse("pickscore") is None and parse("http://127.0.0.1:8000/aesthetic") is None  # plain names
    assert parse("pkg.mod:MyReward") is None
    assert parse("z(hpsv2)") == Objective((Term("hpsv2", 1.0, True),))
    obj = parse(" pickscore + 0.50 * z( hpsv2 ) + 2e-1*http://127.0.0.1:8000/ocr ")
    assert obj.terms == (Term("pickscore"), Term("hpsv2", 0.5, True), Term("http://127.0.0.1:8000/ocr", 0.2))
    assert obj.text == "pickscore+0.5*z(hpsv2)+0.2*http://127.0.0.1:8000/ocr"
    assert obj.labels == ["pickscore", "z(hpsv2)", "http://127.0.0.1:8000/ocr"] and obj.standardised == ["hpsv2"]
    assert parse("2*pickscore").text == "2*pickscore" and parse("1.0*a+1*b").text == "a+b"
    assert trained_metrics(SUM) == [SUM, "z(brightness)", "colorfulness", "brightness"]
    assert trained_metrics("z(pickscore)") == ["z(pickscore)", "pickscore"] and trained_metrics("hpsv2") == ["hpsv2"]


def test_folder_names_are_one_safe_path_component():
    assert folder_name("z(pickscore)+0.5*hpsv2") == "z.pickscore+0.5xhpsv2"
    assert folder_name("2*z(a) + 0.25*z(b)") == "2xz.a+0.25xz.b"
    assert folder_name("brightness") == "brightness"
    assert folder_name("http://127.0.0.1:8000/aes") == "http-127.0.0.1-8000-aes"  # as before expressions existed
    assert run_id("rocm-kl", SUM, 3) == "rocm-kl__z.brightness+0.5xcolorfulness__seed3"


@pytest.mark.parametrize("text,match", [
    ("a+0*b", "the weight of b must be > 0, got 0"),
    ("a+-0.5*z(b)", "the weight of z(b) must be > 0, got -0.5"),
    ("a++b", "cannot read an empty term"),
    ("a+", "cannot read an empty term"),
    ("0.5*", "cannot read '0.5*'"),
    ("z(a+b)", "cannot read 'z(a'"),
    ("z(a)(b)", "cannot read"),
    ("a*0.5+b", "cannot read 'a*0.5'"),
    ("a+0.5*a", "a appears twice"),
])
def test_malformed_expressions_are_one_line_errors(text, match):
    with pytest.raises(BenchError) as e:
        parse(text)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("name,match", [
    ("brightnes+colorfulness", "unknown reward 'brightnes'; did you mean 'brightness'?"),
    ("brightness+z(colorfulnes)", "did you mean 'colorfulness'?"),
    ("brightness+z(diversity)", "only a per-image reward can be standardised; diversity is a set metric"),
    ("brightness+diversity", "diversity is a set metric"),
])
def test_bad_terms_are_one_line_errors(name, match):
    lookup = metric_class if "diversity" in name else reward_class
    with pytest.raises(BenchError) as e:
        lookup(name)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("args,match", [
    (["--methods", "rocm-kl", "--rewards", "brightness+0.5*jpeg-compressibility"],
     "reward 'brightness+0.5*jpeg-compressibility' is not differentiable (its term jpeg-compressibility is not)"),
    (["--methods", "ddpo", "--rewards", "brightness+0*colorfulness"], "the weight of colorfulness must be > 0"),
    (["--methods", "ddpo", "--rewards", "brightness+-1*colorfulness"], "must be > 0, got -1"),
    (["--methods", "ddpo", "--rewards", "brightness+colorfulnes"], "did you mean 'colorfulness'"),
    (["--methods", "ddpo", "--rewards", "brightness+*colorfulness"], "bad reward expression"),
    (["--methods", "ddpo", "--rewards", "z(brightness)+0.5*colorfulness,z(brightness) + 0.5*colorfulness"],
     "is given twice"),
    (["--methods", "ddpo", "--set", "eval.metrics=z(diversity)"], "diversity is a set metric"),
])
def test_bad_compositions_through_the_cli(bench_cli, tmp_path, args, match):
    code, _, err = bench_cli("run", "--model", "tiny", "--out", str(tmp_path / "s"), "--no-progress", *args)
    assert_one_line_error(code, err, match)
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_rewards_sharing_a_run_folder_are_refused():
    from bench.run.config import distinct_folders

    distinct_folders(["z(a)", "a", "0.5*a"])
    with pytest.raises(BenchError, match="would share the run folders"):
        distinct_folders(["z(a)", "z.a"])


def test_a_policy_gradient_method_takes_a_non_differentiable_term():
    cls = reward_class("brightness+0.5*jpeg-compressibility")
    assert not cls.differentiable and cls.not_differentiable == ("jpeg-compressibility",)
    assert reward_class(SUM).differentiable and reward_class("z(brightness)").differentiable
    assert find("reward", " z( brightness )+ 0.5 *colorfulness") == SUM  # canonical spelling names the runs


def test_terms_must_share_a_direction():
    from bench.api import Reward
    from bench.core.combine import combined_class

    class Lower(Reward):
        name, higher_is_better = "lower", False

        def score(self, images, prompts):
            return images.mean((1, 2, 3))

    with pytest.raises(BenchError, match="lower is lower-is-better and the other terms are higher-is-better"):
        combined_class(parse("brightness+lower"), [reward_class("brightness"), Lower])


# ---------------------------------------------------------------------------------------- the reward objects

def images_and_prompts(n=6):
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, 3, 8, 8), generator=g), [f"p{i}" for i in range(n)]


def test_weighted_sum_value_gradient_and_charge():
    images, prompts = images_and_prompts()
    meter = ComputeMeter()
    r = reward_class("2*brightness+0.5*colorfulness")("cpu", meter)
    b, c = reward_class("brightness")(), reward_class("colorfulness")()
    x = images.clone().requires_grad_(True)
    value = r(x, prompts)
    expected = 2 * b(images, prompts) + 0.5 * c(images, prompts)
    assert torch.allclose(value, expected, rtol=0, atol=1e-6)  # float32 sums of O(1) values: ~1e-7 apart
    value.sum().backward()
    ref = images.clone().requires_grad_(True)
    (2 * b(ref, prompts) + 0.5 * c(ref, prompts)).sum().backward()
    assert torch.allclose(x.grad, ref.grad, rtol=0, atol=1e-6)
    assert meter.reward_calls == 2 * len(prompts)  # each term's reward scored every image once


def test_recording_gives_each_terms_mean():
    images, prompts = images_and_prompts()
    r = reward_class("brightness+0.5*colorfulness")()
    with r.recording() as sums:
        r(images[:4], prompts[:4])
        r(images[4:], prompts[4:])
    r(images, prompts)  # outside: not recorded (the evaluation)
    means = term_means(sums)
    assert set(means) == {"reward/brightness", "reward/colorfulness"}
    assert means["reward/brightness"] == pytest.approx(float(reward_class("brightness")()(images, prompts).mean()))
    assert term_means({"reward/count": 0.0}) == {}


def test_standardised_needs_its_normaliser():
    images, prompts = images_and_prompts()
    z = reward_class("z(brightness)")()
    assert isinstance(z, Standardised) and z.name == "z(brightness)" and z.version == "1.z1"
    with pytest.raises(BenchError, match="has no normaliser yet"):
        z(images, prompts)
    with pytest.raises(BenchError, match="scores every base-model sample the same"):
        z.set_normaliser(0.5, 0.0)
    z.set_normaliser(0.25, 0.5)
    raw = reward_class("brightness")()(images, prompts)
    assert torch.equal(z(images, prompts), (raw - 0.25) / 0.5)


# ----------------------------------------------------------------------------------------- standardisation

def test_normaliser_uses_only_the_base_model_on_training_prompts(tiny_policy, train_prompts, tmp_path):
    """standardise() on a policy whose adapter has moved equals μ, σ of the *base* model's images of the training
    prompts, computed here independently; other prompts give another value."""
    from bench.core.sampler import SamplerConfig, sample
    from bench.run import standardise as st

    sampler = SamplerConfig(steps=2)
    with torch.no_grad():
        for p in tiny_policy.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))  # the policy is not the base
    per_prompt = -(-st.MIN_IMAGES // len(train_prompts))
    expanded = [p for p in train_prompts for _ in range(per_prompt)]
    gen = torch.Generator().manual_seed(7 + st.SEED_OFFSET)
    with torch.no_grad(), tiny_policy.reference():
        images = torch.cat([sample(tiny_policy, expanded[i:i + 32], sampler, gen).images
                            for i in range(0, len(expanded), 32)])
    scores = reward_class("brightness")()(images, expanded).double()

    def normaliser(prompts, suite_dir):
        z = reward_class("z(brightness)")("cpu", tiny_policy.meter)
        before = tiny_policy.meter.counters()
        used = st.standardise([z], tiny_policy, sampler, prompts, 7, "tiny", suite_dir / "runs" / "r")
        assert tiny_policy.meter.counters() == before  # uncharged
        return z, used["z(brightness)"]

    z, rec = normaliser(train_prompts, tmp_path / "a")
    assert (rec.mean, rec.std) == (float(scores.mean()), float(scores.std()))  # bit for bit: the same computation
    assert (z.mean, z.std) == (rec.mean, rec.std) and rec.n_images == len(expanded) >= st.MIN_IMAGES
    assert rec.n_prompts == len(train_prompts) and rec.seed == 9 and rec.model == "tiny"
    for path in (tmp_path / "a" / "standardisation.json", tmp_path / "a" / "runs" / "r" / "standardisation.json"):
        assert json.loads(path.read_text())["z(brightness)"]["mean"] == rec.mean
    _, other = normaliser(train_prompts[:2], tmp_path / "b")
    assert other.mean != rec.mean


def test_the_suite_record_wins_and_a_mismatch_is_refused(tmp_path):
    from bench.results import schema
    from bench.run.standardise import suite_record

    a = schema.Normaliser("brightness", "1", 0.5, 0.1, 256, 8, 12347, "tiny")
    assert suite_record(tmp_path, {"z(brightness)": a}) == {"z(brightness)": a}
    b = schema.Normaliser("brightness", "1", 0.5000001, 0.1, 256, 8, 12347, "tiny")  # another machine's last bits
    assert suite_record(tmp_path, {"z(brightness)": b}) == {"z(brightness)": a}
    c = schema.Normaliser("brightness", "2", 0.5, 0.1, 256, 8, 12347, "tiny")
    with pytest.raises(BenchError, match="version 1 .* version 2"):
        suite_record(tmp_path, {"z(brightness)": c})


# ----------------------------------------------------------------------------------- the real runner's suite

def bench_run(*args: str) -> None:
    from bench.cli.main import app

    argv = ["bench", "run", *args]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        app(argv[1:], standalone_mode=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """rocm-kl and ddpo on z(brightness)+0.5*colorfulness, and rocm-kl on brightness+0.5*colorfulness."""
    out = tmp_path_factory.mktemp("objectives") / "suite"
    bench_run("--methods", "rocm-kl,ddpo", "--rewards", SUM, "--out", str(out), *SMALL)
    bench_run("--methods", "rocm-kl", "--rewards", PLAIN_SUM, "--out", str(out), *SMALL)
    return out


def test_two_term_objective_trains_ddpo_and_rocm_and_logs_both_terms(suite):
    for method in ("rocm-kl", "ddpo"):
        d = suite / "runs" / run_id(method, SUM, 0)
        assert read_json(d / "summary.json")["status"] == "complete"
        rows = read_jsonl(d / "train.jsonl")
        assert rows and all(math.isfinite(r["reward/z(brightness)"]) and math.isfinite(r["reward/colorfulness"])
                            for r in rows)
        metrics = read_json(d / "config.json")["metrics"]
        assert metrics[:3] == [SUM, "z(brightness)", "colorfulness"]  # each term evaluated as its own metric
        ev = [r for r in read_jsonl(d / "eval.jsonl") if r["split"] == "test"]
        at = {(r["fraction"], r["metric"]): r["value"] for r in ev}
        for f in (0.0, 1.0):  # the objective's value is the weighted sum of its terms' (same images)
            assert at[f, SUM] == pytest.approx(at[f, "z(brightness)"] + 0.5 * at[f, "colorfulness"], abs=1e-5)


def test_every_method_of_a_suite_shares_one_normaliser(suite):
    record = json.loads((suite / "standardisation.json").read_text())
    assert set(record) == {"z(brightness)"} and record["z(brightness)"]["n_images"] >= 256
    for method in ("rocm-kl", "ddpo"):
        assert json.loads((suite / "runs" / run_id(method, SUM, 0) / "standardisation.json").read_text()) == record
    assert not (suite / "runs" / run_id("rocm-kl", PLAIN_SUM, 0) / "standardisation.json").exists()


def test_standardising_is_not_charged(suite):
    """rocm-kl on the sum with z(brightness) and without: the same compute on every step (z is affine, and the
    base model's samples it is measured on are not charged)."""
    keys = ("nfe", "flops", "reward_calls", "images")
    with_z = read_jsonl(suite / "runs" / run_id("rocm-kl", SUM, 0) / "train.jsonl")
    without = read_jsonl(suite / "runs" / run_id("rocm-kl", PLAIN_SUM, 0) / "train.jsonl")
    assert [{k: r[k] for k in keys} for r in with_z] == [{k: r[k] for k in keys} for r in without]


def test_report_draws_the_pareto_plot_and_a_column_per_term(suite, tmp_path):
    from PIL import Image

    from bench.analysis.report import build_report

    written = build_report(suite, tmp_path)
    pareto = tmp_path / "pareto_z_brightness_0.5_colorfulness.png"
    assert pareto in written
    with Image.open(pareto) as im:
        im.verify()
    header = (tmp_path / "table.md").read_text().splitlines()[0]
    assert f"| {SUM} ↑ | z(brightness) ↑ | colorfulness ↑ |" in header
    assert "## Two-term objectives" in (tmp_path / "index.md").read_text()
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the objective's terms are what it optimised: never the selection metric, never "hacked"
        assert r["select"] not in trained_metrics(r["reward"])
        assert not set(filter(None, r["hacked"].split(";"))) & set(trained_metrics(r["reward"]))


def test_pareto_front_known_answer():
    import numpy as np

    from bench.analysis.plots import pareto_front

    pts = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [0.9, 0.9], [2.0, 0.4]])
    assert pareto_front(pts, (True, True)).tolist() == [2, 0, 1]
    assert pareto_front(pts, (True, False)).tolist() == [4]  # lower second coordinate better: (2, 0.4) wins


def test_sweep_selection_never_picks_a_term():
    from bench.sweep.protocol import selection_metric

    assert selection_metric("tiny", "brightness+0.5*colorfulness") == "jpeg-compressibility"
    assert selection_metric("tiny", "z(colorfulness)") == "brightness"


def test_suite_files_take_expressions(tmp_path):
    from bench.run.suite_file import load

    path = tmp_path / "s.toml"
    path.write_text('rewards = ["pickscore+0.5*z(hpsv2)", "hpsv2"]\n')
    assert load(path).rewards == "pickscore+0.5*z(hpsv2),hpsv2"  # what --rewards splits back into two runs


def test_combined_is_a_reward_to_the_evaluation():
    r = reward_class(SUM)()
    assert isinstance(r, Combined) and list(r.parts) == ["z(brightness)", "colorfulness"]
    assert isinstance(r.parts["z(brightness)"], Standardised)


# ---------------------------------------------------------------- one β means the same on every standardised reward

# Regularised ROCM's loss is −r + β·D, so β is in the reward's units: on the testbed the gold's spread over base
# images is 1/244 of the proxy's (σ₀ 0.0632 against 15.43, measured by this very standardisation on the 90 training
# prompts). Measured with the settings below (β = 1, 3000 NFE = 15 steps, seeds 0 and 1, testbed v2), the final
# kl-to-base on the training prompts:
#   z(testbed-gold) 0.158, 0.181      z(testbed-pref) 0.113, 0.098      ratio gold/pref 1.40, 1.84
#   testbed-gold    0.023, 0.027      testbed-pref    2.13, 4.06        ratio gold/pref 0.011, 0.0066
# Standardised, one β moves the KL by amounts of the same order on both rewards; raw, ~100x apart. The bound
# (a factor of 10 either way: "the same order") is 5x beyond the measured ratios' spread over seeds (1.4-1.8) and
# 15x short of the raw ratios, so the test fails if standardisation is skipped.
SAME_ORDER = 10.0


@pytest.mark.slow  # 4 testbed runs, ~3 min on a quiet 2-core machine: pytest -m slow tests/test_objectives.py
def test_one_beta_moves_the_kl_alike_on_standardised_gold_and_proxy(tmp_path):
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, apply_sets
    from bench.run.runner import run_suite

    suite = SuiteConfig(methods=["rocm-kl"], rewards=["z(testbed-gold)", "z(testbed-pref)"], seeds=[0, 1],
                        budget=Budget.parse("3000nfe"), model=ModelConfig(name="testbed"))
    apply_sets(suite, ["rocm-kl.beta=1", "eval.points=2", "eval.max_prompts=16", "eval.samples_per_prompt=2",
                       "eval.min_images=0", "eval.splits=train", "eval.metrics=testbed-gold"])
    run_suite(suite, tmp_path, show_progress=False)

    def final_kl(reward: str, seed: int) -> float:
        rows = read_jsonl(tmp_path / "runs" / run_id("rocm-kl", reward, seed) / "eval.jsonl")
        return next(r["value"] for r in rows if r["metric"] == "kl-to-base" and r["fraction"] == 1.0)

    for seed in (0, 1):
        gold, pref = final_kl("z(testbed-gold)", seed), final_kl("z(testbed-pref)", seed)
        assert gold > 0 and pref > 0 and 1 / SAME_ORDER < gold / pref < SAME_ORDER, (seed, gold, pref)
