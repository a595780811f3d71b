"""The real rewards (PickScore, CLIP score, HPS v2/v2.1, ImageReward) and clean-fid FID/KID, tested offline.

Tiny random stand-ins of the real classes are written in the Hugging Face cache layout to a temporary folder
(`tests/tiny_hub.py`) and loaded through the rewards' real constructors. Scores are compared with the originals
on the same tiny weights: PickScore and CLIP score with the model-card recipe (`CLIPProcessor` on PIL images),
HPS v2 with the `hpsv2` package's own `score()`, ImageReward with the `image-reward` package's own
`ImageReward.score`. The two packages cannot be installed next to this project's pins, so those two tests look for
them in a side folder (`$BENCH_ORIGINALS`, default build/originals) and skip when it is absent:
  pip install --no-deps --no-build-isolation --target build/originals \
      hpsv2x==1.2.0 image-reward==1.5 fairscale==0.4.13 clint==0.5.1 args==0.1.0
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.errors import BenchError
from bench.registry.catalog import REWARDS, SET_METRICS
from bench.registry.lookup import metric_class, reward_class
from tests import tiny_hub

REAL = ["pickscore", "clip", "hpsv2", "hpsv21", "imagereward"]
PROMPTS = ["a photo of a cat", "a red house in the snow", "a photo of a cat"]  # repeated prompt: text cache
ORIGINALS = Path(os.environ.get("BENCH_ORIGINALS", Path(__file__).resolve().parents[1] / "build" / "originals"))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return cache


@pytest.fixture
def images():
    """(3, 3, 48, 64) non-square, smooth (upsampled 12x16 noise, as natural images are locally smooth) images on
    the uint8 grid, so a PIL copy holds exactly the same pixels."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(3, 3, 12, 16, generator=g), size=(48, 64), mode="bilinear")
    return (x * 255).round() / 255


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def build(name: str, hub: Path, tmp_path: Path):
    """Write the tiny stand-in of reward `name` into the cache, then construct it through the registry."""
    cls = reward_class(name)
    if name == "pickscore":
        tiny_hub.put_pickscore(hub)
    elif name == "clip":
        tiny_hub.put_clip(hub)
    elif name in ("hpsv2", "hpsv21"):
        tiny_hub.put_hps(hub, tmp_path, cls.checkpoint)
        return cls(arch="hps-tiny")
    elif name == "imagereward":
        tiny_hub.put_imagereward(hub)
    return cls()


def test_registered():
    for name in REAL:
        assert name in REWARDS
    assert {"fid", "kid"} <= set(SET_METRICS)


@pytest.mark.parametrize("name", REAL)
def test_missing_weights_name_the_fetch_command(name, hub):
    with pytest.raises(BenchError) as e:
        reward_class(name)() if not name.startswith("hps") else reward_class(name)(arch="hps-tiny")
    msg = str(e.value)
    assert f"run: bench fetch {name}" in msg and "\n" not in msg


@pytest.mark.parametrize("name", REAL)
def test_tiny_reward_loads_scores_and_passes_gradients(name, hub, tmp_path, images):
    reward = build(name, hub, tmp_path)
    assert reward.differentiable and reward.version and (type(reward).__doc__ or "").strip()
    x = images.clone().requires_grad_(True)
    scores = reward(x, PROMPTS)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert scores[0] != scores[1]
    scores.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all(), "every image must receive a gradient"


@pytest.mark.parametrize("name", ["pickscore", "clip"])
def test_clip_rewards_match_processor_recipe(name, hub, tmp_path, images):
    """Our torch preprocessing vs `CLIPProcessor` on PIL images + get_image/text_features (the model card).

    The processor resizes a uint8 PIL image with PIL's bicubic filter (8-bit fixed point, clipped and rounded
    between its two passes); ours resizes the float tensor with torch's antialiased bicubic (the same a=-0.5
    kernel). Measured on these images: normalised pixels differ by 0.005 on average, 0.016 at most (pure noise
    images, where PIL's intermediate clipping bites, reach 0.32 at single pixels but still 0.005 on average);
    scores by <= 0.4% (pickscore 0.868/1.248/1.301 vs 0.867/1.251/1.305; clip 4.15/26.68/4.90 vs 4.12/26.68/4.89)."""
    from transformers import CLIPModel, CLIPProcessor

    reward = build(name, hub, tmp_path)
    model_dir = tiny_hub.snapshot_dir(hub, reward.repo_id)
    proc_dir = tiny_hub.snapshot_dir(hub, reward.processor_repo or reward.repo_id)
    model, processor = CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(proc_dir)
    with torch.no_grad():
        image_inputs = processor(images=to_pil(images), return_tensors="pt")
        text_inputs = processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = torch.nn.functional.normalize(model.get_image_features(**image_inputs), dim=-1)
        txt = torch.nn.functional.normalize(model.get_text_features(**text_inputs), dim=-1)
        cos = (img * txt).sum(-1)
        expected = model.logit_scale.exp() * cos if name == "pickscore" else 100 * cos.clamp(min=0)
        ours = reward(images, PROMPTS)
        pixels_ours = reward.processing(images)
    diff = (pixels_ours - image_inputs.pixel_values).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05
    torch.testing.assert_close(ours, expected, rtol=0.02, atol=0.02 * float(expected.abs().max()))


def _import_originals(monkeypatch, module: str):
    if not (ORIGINALS / module).is_dir():
        pytest.skip(f"original package '{module}' not installed in {ORIGINALS} (see this file's docstring)")
    monkeypatch.syspath_prepend(str(ORIGINALS))


def test_hpsv2_equals_hpsv2_package(hub, tmp_path, images, monkeypatch):
    """Same tiny weights through `hpsv2.img_score.score(pil, prompt, cp=...)` (its model built by its own
    `create_model_and_transforms`, exactly as `initialize_model` does, with a tiny config instead of ViT-H-14)."""
    _import_originals(monkeypatch, "hpsv2")
    from hpsv2 import img_score
    from hpsv2.src import open_clip as hps_open_clip

    ours = build("hpsv2", hub, tmp_path)
    arch = tiny_hub.register_hps_tiny(tmp_path, hps_open_clip.add_model_config)
    model, _, preprocess_val = hps_open_clip.create_model_and_transforms(
        arch, None, precision="amp", device="cpu", jit=False, force_quick_gelu=False, force_custom_text=False,
        force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
        light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False,
        with_region_predictor=False)
    monkeypatch.setitem(img_score.model_dict, "model", model)
    monkeypatch.setitem(img_score.model_dict, "preprocess_val", preprocess_val)
    cp = tiny_hub.snapshot_dir(hub, "xswu/HPSv2") / ours.checkpoint
    expected = [img_score.score(pil, p, cp=str(cp))[0] for pil, p in zip(to_pil(images), PROMPTS)]
    with torch.no_grad():
        got = ours(images, PROMPTS)
    np.testing.assert_allclose(got.numpy(), np.array(expected), rtol=0, atol=1e-5)


def _original_imagereward(monkeypatch):
    """The package's modules without its `__init__` (which imports OpenAI clip and the ReFL training script)."""
    _import_originals(monkeypatch, "ImageReward")
    pytest.importorskip("fairscale")
    root = ORIGINALS / "ImageReward"
    for name, path in [("ImageReward", root), ("ImageReward.models", root / "models")]:
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, stub)
    import importlib

    mods = [importlib.import_module(f"ImageReward.{m}") for m in
            ("ImageReward", "models.BLIP.vit", "models.BLIP.med", "models.BLIP.blip")]
    for name in [n for n in sys.modules if n.startswith("ImageReward.")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # removed again at teardown
    return mods


def test_imagereward_equals_imagereward_package(hub, tmp_path, images, monkeypatch):
    """Same tiny weights through the package's `ImageReward(...)` constructor (its BLIP sized down, everything
    else its own: preprocessing, BERT tokenizer, med.py BERT, ViT, MLP, mean/std) and `ImageReward.score`.

    The networks agree to 1e-5 on the same pixels. The whole scores differ by up to ~1.2% of their size
    (measured: -1.279/-0.934/-1.559 vs -1.295/-0.943/-1.543), because the package resizes the uint8 PIL image
    (PIL bicubic, 8-bit between passes) and ours the float tensor, and this tiny random MLP amplifies that."""
    import transformers.utils.hub

    import rewards.imagereward as ours_module

    IR, vit, med, blip = _original_imagereward(monkeypatch)
    ours = build("imagereward", hub, tmp_path)
    folder = tiny_hub.snapshot_dir(hub, "THUDM/ImageReward")
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(hub))  # init_tokenizer's cache
    width = ours.model.blip.visual_encoder.embed_dim

    def tiny_blip(image_size, vit_name, med_config):  # BLIP_Pretrain's scoring parts, sized down
        m = torch.nn.Module()
        m.visual_encoder = vit.VisionTransformer(img_size=image_size, patch_size=32, embed_dim=width, depth=1,
                                                 num_heads=1)
        m.tokenizer = blip.init_tokenizer()
        cfg = med.BertConfig.from_json_file(med_config)
        cfg.encoder_width = width
        m.text_encoder = med.BertModel(config=cfg, add_pooling_layer=False)
        return m

    orig_mlp = IR.MLP
    monkeypatch.setattr(IR, "BLIP_Pretrain", lambda image_size, vit, med_config: tiny_blip(image_size, vit,
                                                                                           med_config))
    monkeypatch.setattr(IR, "MLP", lambda input_size: orig_mlp(ours.model.blip.text_encoder.embeddings
                                                               .word_embeddings.embedding_dim))
    original = IR.ImageReward(med_config=str(folder / "med_config.json"), device="cpu")
    missing, _ = original.load_state_dict(torch.load(folder / "ImageReward.pt"), strict=False)
    assert not missing, missing  # the package loads with strict=False: make sure every weight arrived
    original.eval()

    assert original.blip.tokenizer(PROMPTS[1], padding="max_length", truncation=True,
                                   max_length=35).input_ids == ours.tokens(PROMPTS[1:2])[0][0].tolist()
    with torch.no_grad():
        expected = np.array([original.score(p, pil) for pil, p in zip(to_pil(images), PROMPTS)])
        got = ours(images, PROMPTS).numpy()
        # The networks alone, on the same preprocessed pixels: the package's `score_gard` (its ReFL path).
        pixels = original.preprocess(to_pil(images)[0])[None]
        ids, mask = ours.tokens(PROMPTS[:1])
        net_original = original.score_gard(ids, mask, pixels)[:, 0]
        net_ours = (ours.model(pixels, ids, mask) - ours_module.SCORE_MEAN) / ours_module.SCORE_STD
    torch.testing.assert_close(net_ours, net_original, rtol=0, atol=1e-5)
    assert (original.mean, original.std) == (ours_module.SCORE_MEAN, ours_module.SCORE_STD)
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.02 * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------- FID / KID

def tiny_features(dim: int = 8):
    """A stand-in for Inception: (B, 3, 299, 299) in [0, 255] -> (B, dim), fixed random weights."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, dim)).eval()
    return lambda x: net(x.float() / 255)


def test_fid_without_inception_names_the_fetch_command(hub):
    with pytest.raises(BenchError, match="run: bench fetch inception"):
        metric_class("fid")()


def test_fid_folder_and_tensor_references_agree(tmp_path):
    g = torch.Generator().manual_seed(1)
    ref = (torch.rand(40, 3, 32, 32, generator=g) * 255).round() / 255
    folder = tmp_path / "real"
    folder.mkdir()
    for i, im in enumerate(to_pil(ref)):
        im.save(folder / f"{i:03d}.png")
    feats = tiny_features()
    from rewards.fid import CleanFID

    by_folder, by_tensor = CleanFID(reference_dir=folder, feature_fn=feats), CleanFID(feature_fn=feats)
    prompts = [f"p{i % 4}" for i in range(40)]
    by_tensor.set_reference(ref, prompts)
    assert by_tensor.needs_base_reference and not by_folder.needs_base_reference
    for m in (by_folder, by_tensor):
        m.update(ref, prompts)
    assert abs(by_folder.compute()) < 1e-6 and abs(by_tensor.compute()) < 1e-6  # a set against itself
    shifted = (ref * 0.5).clamp(0, 1)
    for m in (by_folder, by_tensor):
        m.reset()
        m.update(shifted, prompts)
    a, b = by_folder.compute(), by_tensor.compute()
    assert a > 0.01 and abs(a - b) < 1e-9 * max(1.0, a)
    assert "kid" not in by_folder.version


def test_fid_with_too_few_images_warns_and_reports_kid():
    from rewards.fid import CleanFID, CleanKID

    g = torch.Generator().manual_seed(2)
    ref, gen = torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g)
    prompts = ["a cat"] * 6
    fid, kid = CleanFID(feature_fn=tiny_features()), CleanKID(feature_fn=tiny_features())
    for m in (fid, kid):
        m.set_reference(ref, prompts)
        m.update(gen, prompts)
    with pytest.warns(UserWarning, match="reporting KID instead of FID"):
        value = fid.compute()
    assert "kid" in fid.version and value == kid.compute()


def test_fid_needs_a_reference_for_its_prompts():
    from rewards.fid import CleanFID

    m = CleanFID(feature_fn=tiny_features())
    m.set_reference(torch.rand(4, 3, 16, 16), ["a"] * 4)
    m.update(torch.rand(4, 3, 16, 16), ["b"] * 4)
    with pytest.raises(BenchError, match="no reference images"):
        m.compute()


# ---------------------------------------------------------------------------------------------- full size

@pytest.mark.slow
@pytest.mark.parametrize("name", ["hpsv2", "hpsv21"])
def test_full_size_hps_checkpoint_layout_loads_and_backprops(name, hub, tmp_path, images):
    """The real ViT-H-14 (random weights, ~4 GB RAM) saved as HPS's checkpoint and loaded by the real path."""
    import open_clip

    cls = reward_class(name)
    model = open_clip.create_model("ViT-H-14", pretrained=None)
    torch.save({"state_dict": model.state_dict()}, tiny_hub.snapshot_dir(hub, "xswu/HPSv2") / cls.checkpoint)
    del model
    reward = cls()
    x = images[:1].clone().requires_grad_(True)
    reward(x, PROMPTS[:1]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
