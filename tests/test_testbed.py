"""Tests of the built-in testbed: its grammar and splits, the shipped generator's quality (a small sample at
4 LCM steps through the shared sampler), the rewards' gradients and prompt checks, the set metrics, and the
build pipeline in quick mode."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from bench.core.errors import BenchError
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig, sample
from bench.prompts.sets import load_prompts
from bench.prompts.testbed import (
    ALL_COMBOS,
    COLOUR_PAIRS,
    HELDOUT_COMBOS,
    HELDOUT_PROMPTS,
    TRAIN_PROMPTS,
    make_prompt,
    parse_prompt,
)
from bench.registry.catalog import MODEL_DEFAULTS
from bench.registry.lookup import metric_class, model_builder, reward_class
from bench.testbed.evaluators import attribute_accuracy
from bench.testbed.nets import PROXY_B_NAME, WEIGHTS_DIR, AttributeClassifier, ClassifierSpec, load_module
from bench.testbed.world import attributes, heldout_real

REWARDS = ["testbed-align", "testbed-pref", "testbed-pref-b", "testbed-gold"]
BAD_PROMPTS = ["a photo of a cat", "a white seven on a white background", "a red seven on a blue wall", ""]


def test_grammar_and_splits():
    assert len(ALL_COMBOS) == 110 and len(TRAIN_PROMPTS) == 90 and len(HELDOUT_PROMPTS) == 20
    assert not set(TRAIN_PROMPTS) & set(HELDOUT_PROMPTS)
    validation, test = load_prompts("testbed", "validation"), load_prompts("testbed", "test")
    assert sorted(validation + test) == sorted(HELDOUT_PROMPTS) and not set(validation) & set(test)
    for split in (validation, test):  # every digit in both halves
        assert sorted(parse_prompt(p)[0] for p in split) == list(range(10))
    for combo in HELDOUT_COMBOS:  # unseen combinations of seen words
        assert parse_prompt(make_prompt(*combo)) == combo
        d, ink, bg = combo
        assert any(p != make_prompt(*combo) and f" {ink} " in p for p in TRAIN_PROMPTS)
        assert any(p.endswith(f"{bg} background") and f" {make_prompt(d, ink, bg).split()[2]} " in p
                   for p in TRAIN_PROMPTS)
    for bad in BAD_PROMPTS:
        with pytest.raises(BenchError, match="testbed grammar"):
            parse_prompt(bad)


@pytest.mark.parametrize("name", REWARDS)
def test_reward_gradients_and_prompt_check(name):
    reward = reward_class(name)()
    assert reward.differentiable and reward.higher_is_better and reward.__doc__.strip()
    prompts = TRAIN_PROMPTS[:3] + HELDOUT_PROMPTS[:1]
    for side in (16, 32):  # the testbed size, and a larger image resized inside the reward
        images = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(side), requires_grad=True)
        out = reward(images, prompts)
        assert out.shape == (4,) and torch.isfinite(out).all()
        out.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0
    for bad in BAD_PROMPTS:
        with pytest.raises(BenchError, match="testbed grammar"):
            reward(torch.rand(1, 3, 16, 16), [bad])


def test_rewards_prefer_real_matching_images():
    """On real held-out digits, the prompt that describes the image scores higher than a wrong-digit prompt.
    Not asked of the proxy: its preference pairs compare two images of one prompt from the base model's
    neighbourhood (docs/testbed.md), so it never learned to tell a wrong digit from the right one (on these
    images it scores them alike, 7.86 against 7.96) — a blind spot of the kind a method can exploit, which the
    gold's digit term then exposes."""
    images, prompts = heldout_real(COLOUR_PAIRS[:1])
    images, prompts = images[:64], prompts[:64]
    attr = attributes(prompts)
    wrong = [make_prompt((int(d) + 1) % 10, *COLOUR_PAIRS[0]) for d in attr.digit]
    for name in ("testbed-align", "testbed-gold"):
        reward = reward_class(name)()
        with torch.no_grad():
            assert reward(images, prompts).mean() > reward(images, wrong).mean(), name


def test_set_metrics():
    fid, diversity = metric_class("testbed-fid")(), metric_class("testbed-diversity")()
    assert not fid.higher_is_better and diversity.higher_is_better
    real, prompts = heldout_real(COLOUR_PAIRS)
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:300]
    fid.update(real[pick], [prompts[i] for i in pick])
    fid_real, se_real = fid.compute()
    fid.reset()
    fid.update(torch.rand(300, 3, 16, 16), [prompts[i] for i in pick])
    fid_noise, se_noise = fid.compute()
    assert 0 <= fid_real < 2 and fid_real + 10 * se_real < fid_noise and se_real > 0 and se_noise > 0
    # The reference is real images of the *same* prompts: right digits in the wrong colours are far from it.
    swap = {"black": "blue", "blue": "black", "white": "black"}
    wrong = [" ".join(w.split()[:5] + [swap[w.split()[5]], "background"]) for w in (prompts[i] for i in pick)]
    fid.reset()
    fid.update(real[pick], wrong)
    assert fid.compute()[0] > fid_real + 10 * se_real
    # Digits in the right colours but all of one digit: far from a reference of ten digits.
    ones = [i for i in pick.tolist() if "one" == prompts[i].split()[2]]
    fid.reset()
    fid.update(real[ones * 10][:300], [prompts[i] for i in pick][:len(real[ones * 10][:300])])
    assert fid.compute()[0] > fid_real + 10 * se_real
    diversity.update(torch.rand(4, 3, 16, 16), ["a", "a", "b", "c"])
    assert diversity.compute() > 0
    diversity.reset()
    diversity.update(torch.rand(2, 3, 16, 16), ["a", "b"])  # no prompt with two images
    assert diversity.compute() != diversity.compute()  # nan


def _shipped_samples(steps: int = 4, n: int = 64) -> tuple[torch.Tensor, list[str]]:
    """n samples of the shipped LCM through the shared sampler, prompts spread over the training split."""
    policy = model_builder("testbed")(ModelConfig(name="testbed"))
    prompts = [TRAIN_PROMPTS[i % len(TRAIN_PROMPTS)] for i in range(0, n * 7, 7)]
    with torch.no_grad():
        sampler = SamplerConfig(steps=steps, **MODEL_DEFAULTS["testbed"]["sampler"])
        return sample(policy, prompts, sampler, torch.Generator().manual_seed(1)).images, prompts


def _accuracy(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    classifier, _ = load_module("classifier", AttributeClassifier, ClassifierSpec)
    with torch.no_grad():
        return attribute_accuracy(classifier(images), attributes(prompts))


def test_shipped_generator_colours_and_fid():
    """64 samples at 4 steps from the shipped weights: the prompted colours, and a sane FID."""
    metrics = json.loads((WEIGHTS_DIR / "metrics.json").read_text())
    assert not metrics["quick"], "the shipped weights must come from a full build"
    images, prompts = _shipped_samples()
    acc = _accuracy(images, prompts)
    assert acc["ink"] >= 0.85 and acc["background"] >= 0.85, acc
    fid = metric_class("testbed-fid")()
    fid.update(images, prompts)
    value, _ = fid.compute()
    teacher_fid = metrics["generator_quality"]["train"]["teacher-ddim-50"]["fid"]
    # 64 samples bias FID upwards; the margin covers that bias, not a regression of the shipped weights.
    assert value == value and value < 3 * teacher_fid + 2.0, (value, teacher_fid)


def test_shipped_quality_table_meets_the_testbed_targets():
    """The shipped build's quality table (bench/testbed/weights/metrics.json), at 4 LCM steps and the testbed's
    sampling guidance: within-prompt diversity at least 0.6x that of real images of the same prompts, at least
    95% of samples with the prompted digit and colours, FID within 1.5x of the 50-step teacher's."""
    metrics = json.loads((WEIGHTS_DIR / "metrics.json").read_text())
    quality = metrics["generator_quality"]
    assert quality["config"]["guidance_scale"] == MODEL_DEFAULTS["testbed"]["sampler"]["guidance_scale"]
    for split in ("train", "heldout"):
        rows = quality[split]
        lcm, real, teacher = rows["lcm-4"], rows["real"], rows["teacher-ddim-50"]
        assert lcm["diversity"] >= 0.6 * real["diversity"], (split, lcm, real)
        assert lcm["all"] >= 0.95, (split, lcm)
        assert lcm["fid"] <= 1.5 * teacher["fid"], (split, lcm, teacher)


def test_shipped_proxy_measurements():
    """metrics.json records the proxy's label budget, its agreement with gold near the base model and far from it,
    and the gradient cosines; the proxy is better near the base model than far from it (it is exploitable)."""
    proxy = json.loads((WEIGHTS_DIR / "metrics.json").read_text())["proxy"]
    assert proxy["train_pairs"] > 0 and proxy["test_pairs"] > 0 and proxy["far_pairs"] > 0
    near, far = proxy["proxy_heldout_agreement_with_gold"], proxy["proxy_far_agreement_with_gold"]
    assert 0.5 < near <= 1 and 0 <= far <= 1 and near > far, proxy
    assert set(proxy["gradient_cosine_at_base"]) == {"pixels", "lora_params"}


def test_shipped_second_proxy_measurements():
    """metrics.json records the second proxy's agreement with gold and with the first proxy on the first proxy's
    held-out near and far pairs (which neither trained on), from its own labelled pairs (none of the first's)."""
    metrics = json.loads((WEIGHTS_DIR / "metrics.json").read_text())
    b, first = metrics["proxy_b"], metrics["proxy"]
    assert b["train_pairs"] == first["train_pairs"] and b["seed"] != metrics["seed"]
    assert b["pairs_shared_with_first_proxy"] == 0 and b["generators"] == first["generators"]
    assert b["near"]["pairs"] == first["test_pairs"] and b["far"]["pairs"] == first["far_pairs"]
    # the first proxy measured on the same pairs by the proxy-b stage: its own recorded figures
    assert b["near"]["first_proxy_agreement_with_gold"] == first["proxy_heldout_agreement_with_gold"]
    assert b["far"]["first_proxy_agreement_with_gold"] == first["proxy_far_agreement_with_gold"]
    for where in ("near", "far"):
        m, n = b[where], b[where]["pairs"]
        wrong_a, wrong_b = 1 - m["first_proxy_agreement_with_gold"], 1 - m["agreement_with_gold"]
        # Each figure is a float32 mean of n 0/1 values (n <= 1000: exact counts, one rounding each, ~6e-8), so
        # the identities of the counts hold to 1e-6: disagreement = exactly one errs = wrong_a + wrong_b - 2 both.
        assert 1 - m["agreement_with_first_proxy"] == pytest.approx(wrong_a + wrong_b - 2 * m["both_wrong"], abs=1e-6)
        assert m["both_wrong_if_independent"] == pytest.approx(wrong_a * wrong_b, abs=1e-6)
        assert 0 < m["both_wrong"] <= min(wrong_a, wrong_b) and m["agreement_with_first_proxy"] < 1  # errs elsewhere
        # As good a judge as the first: the two agreements with gold differ by less than twice the sum of their
        # binomial standard errors over n pairs (a difference the pair sample alone would give ~5% of the time).
        se = sum((p * (1 - p) / n) ** 0.5 for p in (wrong_a, wrong_b))
        assert abs(wrong_a - wrong_b) < 2 * se, (where, m, se)
    assert b["near"]["agreement_with_gold"] > b["far"]["agreement_with_gold"]  # exploitable far away, as the first
    assert set(b["gradient_cosine_at_base"]) == {"pixels", "lora_params", "first_pixels", "first_lora_params"}
    assert (WEIGHTS_DIR / f"{PROXY_B_NAME}.safetensors").is_file()


def test_second_proxy_reward_loads_and_differs_from_the_first():
    from bench.testbed.rewards import TestbedPref, TestbedPrefB

    images, prompts = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)), TRAIN_PROMPTS[:6]
    a, b = TestbedPref()(images, prompts), TestbedPrefB()(images, prompts)
    assert TestbedPrefB.differentiable and b.shape == (6,) and not torch.allclose(a, b)
    defaults = MODEL_DEFAULTS["testbed"]
    assert defaults["select"] == "testbed-pref-b" in defaults["metrics"] and defaults["rater"] == "testbed-gold"


def test_shipped_generator_draws_prompted_digit():
    """Quality target of the testbed issue: at 4 steps >= 90% of samples show the prompted digit and colours
    (>= 0.85 here, allowing for the noise of 64 samples)."""
    acc = _accuracy(*_shipped_samples())
    assert acc["all"] >= 0.85, acc


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory) -> tuple[Path, dict]:
    """Every stage of `bench testbed build --quick` into a fresh folder (~20 s): (folder, metrics)."""
    from bench.testbed.build import build_all

    out = tmp_path_factory.mktemp("quick") / "full"
    return out, build_all(out, seed=0, quick=True, log=lambda *_: None)


def test_build_quick(quick_build):
    from bench.testbed.model import load

    out, metrics = quick_build
    assert metrics["quick"] and set(metrics["weights_bytes"]) == {
        f"{n}.safetensors" for n in ("generator", "teacher", "classifier", "features", "gold", "proxy", "proxy_b")}
    assert (out / "metrics.json").is_file()
    assert set(metrics["timings_s"]) == {"evaluators", "pretrain", "distill", "quality", "proxy", "proxy-b", "total"}
    policy = load(ModelConfig(name="testbed", lora_rank=0), weights_dir=out)
    images = sample(policy, TRAIN_PROMPTS[:2], SamplerConfig(steps=2), torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 16, 16)


def test_build_one_stage_alone(quick_build, tmp_path):
    """One stage alone, into a copy of the folder, from the weights it holds: the second proxy's stage redraws the
    first proxy's generators and pairs, and writes the very bytes the whole build wrote; no other file changes. The
    quality table of bit-identical weights is taken, not measured again; --remeasure measures the same numbers."""
    from bench.testbed.build import build_all

    full, metrics = quick_build
    shutil.copytree(full, tmp_path / "stage")
    (tmp_path / "stage" / "proxy_b.safetensors").unlink()
    again = build_all(tmp_path / "stage", seed=0, quick=True, log=lambda *_: None, only=("proxy-b",))
    digests = {d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.glob("*.safetensors")}
               for d in (full, tmp_path / "stage")}
    assert digests[tmp_path / "stage"] == digests[full]
    timeless = lambda d: {k: v for k, v in d.items() if k != "seconds"}
    assert timeless(again["proxy_b"]) == timeless(metrics["proxy_b"]) and again["stages_run"] == ["proxy-b"]
    kept = json.loads((full / "metrics.json").read_text())["generator_quality"]
    assert json.dumps(again["generator_quality"]) == json.dumps(kept)  # the folder's, kept (NaN != NaN: as text)

    logs = []
    taken = build_all(tmp_path / "stage", seed=0, quick=True, log=logs.append, only=("quality",))
    assert json.dumps(taken["generator_quality"]) == json.dumps(kept) and any("is taken" in x for x in logs)
    fresh = build_all(tmp_path / "stage", seed=0, quick=True, log=lambda *_: None, only=("quality",), remeasure=True)
    no_time = lambda t: json.dumps({s: ({r: {k: v for k, v in row.items() if k != "seconds"} for r, row in rows.items()}
                                        if s in ("train", "heldout") else rows) for s, rows in t.items()})
    assert no_time(fresh["generator_quality"]) == no_time(kept)


def test_second_proxy_figures_are_what_its_weights_give(quick_build):
    """The quick build's `proxy_b` agreement figures, recomputed from the two proxies' weights files it wrote and
    the first proxy's held-out near and far pairs drawn again (bench/testbed/build.py draws them the same way):
    equal. Each figure is a count over at most 32 pairs divided by their number, so two ways of computing it agree
    to float64 rounding (1e-15), far below the 1/32 between two possible values."""
    from bench.testbed.build import BuildConfig
    from bench.testbed.model import WEIGHTS_NAME, load_parts, policy_from
    from bench.testbed.nets import PreferenceNet, PreferenceSpec, load_weights
    from bench.testbed.preference import gold_of, proxy_data

    out, metrics = quick_build
    cfg = BuildConfig.quick()
    student, text, spec = load_parts(out, WEIGHTS_NAME)
    policy = policy_from(student, text, spec, ModelConfig(name="testbed", lora_rank=0))
    torch.manual_seed(0)
    data = proxy_data(policy, gold_of(load_weights("gold", out)[0]["templates"]), cfg.preference,
                      torch.Generator().manual_seed(2), log=lambda *_: None)
    first, second = (load_module(n, PreferenceNet, PreferenceSpec, out)[0] for n in ("proxy", PROXY_B_NAME))

    def prefers_a(net, pairs) -> list[bool]:
        onehot = attributes(pairs.prompts).one_hot()
        with torch.no_grad():
            return (net(pairs.a, onehot) > net(pairs.b, onehot)).tolist()

    share = lambda flags: sum(flags) / len(flags)
    for where, pairs in (("near", data.heldout), ("far", data.far)):
        truth, a, b = (pairs.margin > 0).tolist(), prefers_a(first, pairs), prefers_a(second, pairs)
        got = metrics["proxy_b"][where]
        assert got["pairs"] == len(truth)
        assert got["agreement_with_gold"] == pytest.approx(share([x == t for x, t in zip(b, truth)]), abs=1e-12)
        assert got["first_proxy_agreement_with_gold"] == pytest.approx(
            share([x == t for x, t in zip(a, truth)]), abs=1e-12)
        assert got["agreement_with_first_proxy"] == pytest.approx(share([x == y for x, y in zip(a, b)]), abs=1e-12)
        assert got["both_wrong"] == pytest.approx(
            share([x != t and y != t for x, y, t in zip(a, b, truth)]), abs=1e-12)
    assert metrics["proxy_b"]["pairs_shared_with_first_proxy"] == 0  # its own labelled pairs


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert total < 20 * 2**20, total
    assert not list(WEIGHTS_DIR.glob("*.bin")) and not list(WEIGHTS_DIR.glob("*.pt"))


def test_x0_from_output_inverts_the_forward_process():
    from bench.core.policy import x0_from_output
    from bench.testbed.generator import alphas_cumprod

    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen)
    a = alphas_cumprod()[torch.tensor([0, 300, 700, 999])].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(x0_from_output(eps, x_t, a, "epsilon"), x0, atol=1e-3)
    assert torch.equal(x0_from_output(x0, x_t, a, "sample"), x0)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # the v-parameterisation's target
    assert torch.allclose(x0_from_output(v, x_t, a, "v_prediction"), x0, atol=1e-4)


def test_unreadable_or_missing_weights_are_bench_errors(tmp_path):
    from bench.core.errors import BenchError
    from bench.testbed.nets import load_weights

    with pytest.raises(BenchError, match="not found"):
        load_weights("generator", tmp_path)
    (tmp_path / "generator.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BenchError, match="unreadable"):
        load_weights("generator", tmp_path)


def test_reuse_teacher_without_a_teacher_fails_before_writing(tmp_path):
    from bench.testbed.build import build_all

    with pytest.raises(BenchError, match="no teacher.safetensors"):
        build_all(tmp_path / "w", quick=True, reuse_teacher=True, log=lambda *_: None)
    assert not (tmp_path / "w").exists()


def test_an_unknown_stage_or_a_stage_without_its_inputs_fails_in_one_line(tmp_path, bench_cli):
    from tests.conftest import assert_one_line_error

    code, _, err = bench_cli("testbed", "build", "--out", str(tmp_path / "w"), "--only", "proxy-c")
    assert_one_line_error(code, err, "unknown testbed build stage 'proxy-c'; the stages are evaluators, pretrain")
    assert not (tmp_path / "w").exists()
    code, _, err = bench_cli("testbed", "build", "--out", str(tmp_path / "w"), "--only", "proxy-b")
    assert_one_line_error(code, err, "testbed weights not found")  # it reads the generator from --out


def test_teacher_samples_do_not_depend_on_the_batch():
    """The quality table's teacher rows are drawn in batches of QualityConfig.teacher_batch: its only noise is drawn
    per batch in order (CPU randn chunks concatenate), and a UNet forward's rows do not depend on the batch, so the
    batch changes the cost, never the images (bit for bit)."""
    from bench.testbed.generator import teacher_sample
    from bench.testbed.model import TEACHER_NAME, load_parts

    unet, text, spec = load_parts(None, TEACHER_NAME)
    prompts = [TRAIN_PROMPTS[i % len(TRAIN_PROMPTS)] for i in range(40)]
    draw = lambda batch: teacher_sample(unet, text, prompts, 3, 2.0, torch.Generator().manual_seed(0),
                                        spec.prediction_type, batch)
    assert torch.equal(draw(40), draw(16))
