"""The real rewards at full size with random weights (rewards/random_weights.py): cost measurement without a download.

Fast (the default run, ~30 s): each is built through the registry on the meta device (no memory), its parameters are
counted against the real models' — open_clip's own ViT-H-14 / ViT-L-14 built on the meta device and its published
model profile (docs/model_profile.csv of mlfoundations/open_clip), and, where the original packages are installed
(tests/test_real_rewards.py's docstring: $BENCH_ORIGINALS), hpsv2's bundled open_clip and the image-reward
package's own `ImageReward` — and one scored batch with a backward runs on the meta device, so the compute meter's
FLOPs per image are checked against the published ones. Also: each differs from its real reward only in `load`,
the tokenizers are the real ones, the weights are the same on every build and leave the caller's RNG alone, and
`bench run` accepts them on `sd15-lcm-random`.

Slow (`-m slow`: 8 minutes and under 8 GB on a shared 2-core machine): a real forward and backward of each on the CPU
at batch 2, and one ROCM and one DDPO step of `sd15-lcm-random` trained against `pickscore-random`:

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow tests/test_random_rewards.py
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from bench.core.compute import BACKWARD_FACTOR, ComputeMeter
from bench.registry.catalog import REWARDS
from bench.registry.lookup import describe, reward_class
from tests.test_real_rewards import ORIGINALS

RANDOM = ["pickscore-random", "clip-random", "hpsv2-random", "imagereward-random", "aesthetic-random"]
REAL_OF = {"pickscore-random": "pickscore", "clip-random": "clip", "hpsv2-random": "hpsv2",
           "imagereward-random": "imagereward", "aesthetic-random": "aesthetic"}
PROMPTS = ["a photo of a cat", "a red house in the snow"]

# ---- the real models' sizes, and where each number comes from ------------------------------------------------
# open_clip's published model profile (docs/model_profile.csv): ViT-H-14 986.11 M parameters, image tower
# 334.59 GFLOPs (torch's FlopCounterMode at 224 px); ViT-L-14(-quickgelu) 427.62 M, 162.03 GFLOPs; ViT-L-16
# 123.11 GFLOPs. The exact counts below are those of open_clip's ViT-H-14 / ViT-L-14-quickgelu built on the meta
# device (test_exact_counts_are_open_clips), which the published rounding confirms.
VIT_H14 = 986_109_441  # LAION CLIP-H = PickScore_v1 (its fine-tune) = HPS v2 / v2.1 (open_clip ViT-H-14)
CLIP_L14 = 427_616_513  # OpenAI CLIP ViT-L/14 (the CLIP score's and the aesthetic predictor's CLIP)
# The LAION aesthetic head (sac+logos+ava1-l14-linearMSE.pth, five Linear layers, a ~3.7 MB float32 file):
# 768*1024+1024 + 1024*128+128 + 128*64+64 + 64*16+16 + 16*1+1.
AESTHETIC_HEAD = 927_969
# ImageReward: the image-reward 1.5 package's `ImageReward` built on the meta device (ViT-L/16 303,301,632 + BERT
# 141,977,088 + MLP 927,969 + BLIP's contrastive projections vision_proj 262,400 and text_proj 196,864 =
# 446,665,953, i.e. THUDM/ImageReward's 1.79 GB ImageReward.pt in float32), less the two projections, which
# scoring never uses and our network (like the real `imagereward` reward) leaves out.
IMAGEREWARD_PROJECTIONS = 262_400 + 196_864
IMAGEREWARD = 446_665_953 - IMAGEREWARD_PROJECTIONS
EXPECTED = {"pickscore-random": VIT_H14, "hpsv2-random": VIT_H14, "clip-random": CLIP_L14,
            "aesthetic-random": CLIP_L14 + AESTHETIC_HEAD, "imagereward-random": IMAGEREWARD}


def count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def networks(reward) -> list[torch.nn.Module]:
    """The reward's networks (CLIP rewards, HPSv2 and ImageReward hold `model`; the aesthetic predictor `clip` +
    `mlp`)."""
    return [getattr(reward, a) for a in ("model", "clip", "mlp") if hasattr(reward, a)]


def on_meta(name: str, meter: ComputeMeter | None = None):
    with torch.device("meta"):
        return reward_class(name)(device="meta", meter=meter)


# ---- registry ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RANDOM)
def test_registered_as_cost_only_and_differentiable_like_the_real_one(name):
    cls, real = reward_class(name), reward_class(REAL_OF[name])
    assert cls.name == name and issubclass(cls, real)
    assert cls.differentiable == real.differentiable is True and cls.higher_is_better == real.higher_is_better
    assert cls.version.startswith("random-seed") and real.version in cls.version
    line = describe(REWARDS[name], "reward")  # what `bench ls` prints
    assert "random weights" in line and "cost measurement only, never results" in line, line


def test_bench_ls_lists_them():
    from typer.testing import CliRunner

    from bench.cli.main import app

    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0, result.output
    for name in RANDOM:
        assert any(line.split()[:1] == [name] and "never results" in line for line in result.output.splitlines())


@pytest.mark.parametrize("name", RANDOM)
def test_only_where_the_weights_come_from_differs(name):
    """The class adds nothing but `load` (and its name and version) to the real reward's: preprocessing, text
    tower and cache, tokenizer calls, the score and the meter charges are the real reward's own lines."""
    cls = reward_class(name)
    own = {k for k in vars(cls) if not k.startswith("__")}
    assert own == {"name", "version", "load"}, own


# ---- parameter counts and FLOPs on the meta device -----------------------------------------------------------------

def bert_flops_per_sample(text: int, image: int, hidden: int, width: int, inner: int, layers: int) -> int:
    """FLOPs of BLIP's image-grounded BERT on `text` tokens cross-attending to `image` tokens of `width`, as torch
    counts them (2 per multiply-add; bias adds, softmax and LayerNorm count 0): per layer, self-attention's four
    projections and its two products, cross-attention's query/output projections, its key/value projections of the
    image tokens and its two products, and the feed-forward pair."""
    per_layer = (4 * 2 * text * hidden * hidden + 2 * 2 * text * text * hidden
                 + 2 * 2 * text * hidden * hidden + 2 * 2 * image * width * hidden + 2 * 2 * text * image * hidden
                 + 2 * 2 * text * hidden * inner)
    return layers * per_layer


HEAD_FLOPS = 2 * (768 * 1024 + 1024 * 128 + 128 * 64 + 64 * 16 + 16 * 1)  # the 768-d MLP head, per sample
# Forward FLOPs per image the meter should charge: open_clip's published image-tower GFLOPs (rounded to 0.01
# GFLOP) plus what our network has beyond that tower. ImageReward: BLIP's ViT-L/16 is open_clip's ViT-L-16 image
# tower without its 1024->768 projection, then the BERT (35 prompt tokens on 1 + 14*14 image tokens) and the head.
PUBLISHED_IMAGE_FLOPS = {
    "pickscore-random": 334.59e9, "hpsv2-random": 334.59e9, "clip-random": 162.03e9,
    "aesthetic-random": 162.03e9 + HEAD_FLOPS,
    "imagereward-random": 123.11e9 - 2 * 1024 * 768 + bert_flops_per_sample(35, 197, 768, 1024, 3072, 12)
    + HEAD_FLOPS,
}


@pytest.mark.parametrize("name", RANDOM)
def test_full_size_on_meta_has_the_real_parameter_count_and_charges_real_flops(name):
    meter = ComputeMeter()
    reward = on_meta(name, meter)
    nets = networks(reward)
    assert all(p.is_meta for m in nets for p in m.parameters())  # nothing was allocated
    assert count(*nets) == EXPECTED[name]
    assert not any(p.requires_grad for m in nets for p in m.parameters())  # frozen, as the real reward

    # One batch through the whole scoring path (preprocessing from 512 px, tokenizer, text tower, score), then a
    # backward to the pixels, all on the meta device: the meter counts what a GPU would be charged.
    images = torch.zeros(2, 3, 512, 512, device="meta", requires_grad=True)
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and meter.reward_calls == 2
    per_image = {k: v for k, v in meter.flops_per_sample.items() if k[1][0] != "prompts"}
    (image_flops,) = per_image.values()
    # Published GFLOPs are rounded to 0.01 GFLOP: 0.005e9 either way; everything else is exact integer arithmetic.
    assert abs(image_flops - PUBLISHED_IMAGE_FLOPS[name]) <= 0.005e9, (image_flops, PUBLISHED_IMAGE_FLOPS[name])
    forward = meter.flops["reward"]
    scores.sum().backward()
    assert images.grad is not None and images.grad.shape == images.shape
    assert meter.flops["reward"] - forward == BACKWARD_FACTOR * 2 * image_flops  # the text tower has no gradient


def test_hpsv2_charges_its_text_tower_per_prompt_at_open_clips_published_flops():
    """HPSv2 pads every prompt to 77 tokens, so its text tower costs exactly the published text GFLOPs (47.09),
    charged once per distinct prompt (the cache), never per image."""
    meter = ComputeMeter()
    reward = on_meta("hpsv2-random", meter)
    reward(torch.zeros(3, 3, 64, 64, device="meta"), PROMPTS + PROMPTS[:1])
    text = meter.flops["reward"] - 3 * meter.flops_per_sample[("reward", ("HPSv2Random", "hpsv2-random",
                                                                          (3, 64, 64)))]
    assert abs(text / 2 - 47.09e9) <= 0.005e9  # 2 distinct prompts; published value rounded to 0.01 GFLOP


def test_exact_counts_are_open_clips():
    """The exact counts above are open_clip's own models' (built on the meta device), and round to its
    published model profile."""
    import open_clip

    with torch.device("meta"):
        vit_h = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
        vit_l = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None, device="meta")
    assert count(vit_h) == VIT_H14 and round(VIT_H14 / 1e6, 2) == 986.11
    assert count(vit_h.visual) == 632_076_800 and round(632_076_800 / 1e6, 2) == 632.08  # published image_mparams
    assert count(vit_l) == CLIP_L14 and round(CLIP_L14 / 1e6, 2) == 427.62
    assert count(vit_l.visual) == 303_966_208 and round(303_966_208 / 1e6, 2) == 303.97


def _originals(monkeypatch, module: str):
    if not (ORIGINALS / module).is_dir():
        pytest.skip(f"original package '{module}' not installed in {ORIGINALS} (see tests/test_real_rewards.py)")
    monkeypatch.syspath_prepend(str(ORIGINALS))


def test_hpsv2_count_is_the_hpsv2_packages_own_vit_h14(monkeypatch):
    _originals(monkeypatch, "hpsv2")
    from hpsv2.src import open_clip as hps_open_clip

    with torch.device("meta"):
        model = hps_open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    assert count(model) == EXPECTED["hpsv2-random"]


def test_imagereward_count_is_the_image_reward_packages_own(monkeypatch, tmp_path):
    """The package's `ImageReward(med_config, device)` itself (BLIP_Pretrain 'large' + MLP(768)), with our
    MED_CONFIG as its med_config.json; its tokenizer (a bert-base-uncased download) is left out."""
    import importlib

    from rewards.random_weights import MED_CONFIG

    _originals(monkeypatch, "ImageReward")
    pytest.importorskip("fairscale")
    root = ORIGINALS / "ImageReward"
    for name, path in [("ImageReward", root), ("ImageReward.models", root / "models")]:  # skip its __init__
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, stub)
    IR = importlib.import_module("ImageReward.ImageReward")
    pretrain = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    for name in [n for n in sys.modules if n.startswith("ImageReward.")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # removed again at teardown
    monkeypatch.setattr(pretrain, "init_tokenizer", lambda: None)
    # Its ViT reads its drop-path rates with .item() from a torch.linspace, which the meta device cannot do.
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    med = tmp_path / "med_config.json"
    med.write_text(json.dumps(MED_CONFIG))
    with torch.device("meta"):
        original = IR.ImageReward(med_config=str(med), device="meta")
    assert count(original) == EXPECTED["imagereward-random"] + IMAGEREWARD_PROJECTIONS
    assert count(original.blip.vision_proj, original.blip.text_proj) == IMAGEREWARD_PROJECTIONS
    ours = on_meta("imagereward-random")
    shapes = {k: v.shape for k, v in original.named_parameters() if not k.startswith(("blip.vision_proj",
                                                                                        "blip.text_proj"))}
    assert shapes == {k: v.shape for k, v in ours.model.named_parameters()}  # the same names and shapes


# ---- tokenizers, seeds -------------------------------------------------------------------------------------------

def test_imagereward_random_tokenizes_like_bert_base_uncased(tmp_path):
    """A vocabulary of bert-base-uncased's size and special ids ([CLS] 101, [SEP] 102, [PAD] 0): a prompt is
    [CLS] words [SEP], its words known (no [UNK]); BLIP adds [DEC] and [ENC]: med_config's 30,524 embeddings."""
    from rewards.random_weights import BERT_SIZE, MED_CONFIG, bert_like_vocab

    assert len((bert_like_vocab(tmp_path) / "vocab.txt").read_text().splitlines()) == BERT_SIZE == 30_522
    reward = on_meta("imagereward-random")
    tok = reward.tokenizer
    ids = tok("a photo of a red cat").input_ids
    assert ids[0] == 101 and ids[-1] == 102 and tok.unk_token_id not in ids and len(ids) == 8
    assert len(tok) == MED_CONFIG["vocab_size"] == 30_524 and tok.bos_token == "[DEC]" and tok.pad_token_id == 0
    ids, mask = reward.tokens(PROMPTS)
    assert ids.shape == mask.shape == (2, 35)  # padded to ImageReward's 35 tokens, as the real reward


@pytest.mark.parametrize("name", ["pickscore-random", "clip-random"])
def test_clip_rewards_tokenize_with_clips_bpe(name):
    reward = on_meta(name)
    assert len(reward.tokenizer) == 49_408
    assert reward.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_random_init_is_seeded_and_leaves_the_callers_rng_alone():
    from rewards.random_weights import random_init

    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    with random_init(torch.device("cpu")):
        a = torch.nn.Linear(8, 8)
    with random_init(torch.device("cpu")):
        b = torch.nn.Linear(8, 8)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(torch.rand(3), expected_next)


# ---- the suite accepts them ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("methods", [["rocm-kl", "draft-k", "refl"], ["ddpo", "d3po"]])
def test_bench_run_on_sd15_lcm_random_accepts_them(methods):
    """First-order methods need a differentiable reward; every random reward is one."""
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, metrics_for, validate

    suite = SuiteConfig(methods=methods, rewards=list(RANDOM), seeds=[0], budget=Budget.parse("3600s"),
                        model=ModelConfig(name="sd15-lcm-random"))
    validate(suite)
    assert suite.rewards == RANDOM
    assert metrics_for(suite, "pickscore-random")[0] == "pickscore-random"


# ---- slow: real forward and backward on the CPU ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", RANDOM)
def test_real_forward_and_backward_on_the_cpu_are_charged(name):
    """Full size, random weights, 2 images: finite scores, a gradient at every image, and the meter charged the
    reward's forward and then 2x that for its backward (bench/core/compute.py)."""
    import gc

    meter = ComputeMeter()
    reward = reward_class(name)("cpu", meter)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 256, 256, generator=g).requires_grad_(True)
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    forward = meter.flops["reward"]
    assert forward >= 2 * 100e9  # a ViT-L/H forward per image: over 100 GFLOPs each (see PUBLISHED_IMAGE_FLOPS)
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad.abs().flatten(1).sum(1) > 0).all()
    per_image = [v for k, v in meter.flops_per_sample.items() if k[1][0] != "prompts"]
    assert meter.flops["reward"] - forward == BACKWARD_FACTOR * 2 * per_image[0] > 0
    del reward, scores
    gc.collect()


@pytest.mark.slow
def test_sd15_lcm_random_trains_against_pickscore_random():
    """One ROCM step (reward backpropagated: forward and backward charged) and one DDPO step (reward under
    no_grad: forward only) on the full-size random model at 64 px, 2 images, 2 sampling steps."""
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.registry.lookup import model_builder
    from bench.run.config import SuiteConfig, apply_sets, method_config, split_prompts, validate

    suite = SuiteConfig(methods=["rocm-kl", "ddpo"], rewards=["pickscore-random"], seeds=[0],
                        budget=Budget.parse("1nfe"), model=ModelConfig(name="sd15-lcm-random"))
    apply_sets(suite, ["model.resolution=64", "sampler.steps=2", "method.batch_size=2", "method.train_batch_size=2",
                       "method.prompts_per_step=1", "method.samples_per_prompt=2"])
    validate(suite)
    torch.manual_seed(0)
    policy = model_builder(suite.model.name)(suite.model, ComputeMeter())
    reward = reward_class("pickscore-random")(policy.device, policy.meter)
    prompts = split_prompts(suite)["train"]
    per_image = None
    for name, passes in (("rocm-kl", 1 + BACKWARD_FACTOR), ("ddpo", 1)):
        cls, cfg = method_config(name, suite)
        algo = cls(name, cfg, policy, suite.sampler, reward, prompts, torch.Generator().manual_seed(0))
        before = policy.meter.counters()
        logs = algo.step()
        after = policy.meter.counters()
        assert math.isfinite(logs["loss"]), (name, logs)
        per_image = per_image or next(v for k, v in policy.meter.flops_per_sample.items()
                                      if k[0] == "reward" and k[1][0] == "PickScoreRandom")
        images = after["reward_calls"] - before["reward_calls"]
        assert images == 2, name
        image_flops = after["flops_reward"] - before["flops_reward"]
        text = image_flops - passes * images * per_image  # the prompt's text tower, on a cache miss only
        assert 0 <= text < 0.05 * image_flops, (name, image_flops, per_image)
