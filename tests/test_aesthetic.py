"""The LAION aesthetic reward against DDPO's recipe (ddpo_pytorch/aesthetic_scorer.py), rebuilt here from its
description on the same tiny random weights: `CLIPProcessor` of the CLIP repo on uint8 images, `CLIPModel.
get_image_features`, division by the L2 norm, then an `nn.Sequential` of Linear(768→1024), Dropout(0.2),
Linear(→128), Dropout(0.2), Linear(→64), Dropout(0.1), Linear(→16), Linear(→1) loading the head's state dict
strictly (here with a 16-d input: the tiny CLIP's projection)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.core.errors import BenchError
from bench.registry.catalog import REWARDS
from bench.registry.lookup import reward_class
from tests import tiny_hub
from tests.test_real_rewards import hub, images  # noqa: F401  (fixtures: a temporary HF cache, test images)


def ddpo_scorer(model_dir, head_file):
    from transformers import CLIPModel, CLIPProcessor

    mlp = nn.Sequential(nn.Linear(16, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in torch.load(head_file).items()})
    clip, processor = CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)

    @torch.no_grad()
    def score(x):  # (B, 3, H, W) in [0, 1], as DDPO's aesthetic_score() receives its images
        uint8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
        inputs = processor(images=uint8, return_tensors="pt")
        embed = clip.get_image_features(**inputs)
        embed = embed / torch.linalg.vector_norm(embed, dim=-1, keepdim=True)
        return mlp.eval()(embed).squeeze(1), inputs["pixel_values"]

    return score


def test_missing_weights_name_the_fetch_command(hub):  # noqa: F811
    assert "aesthetic" in REWARDS
    with pytest.raises(BenchError, match="run: bench fetch aesthetic"):
        reward_class("aesthetic")()
    tiny_hub.put_clip(hub)  # CLIP there, head not
    with pytest.raises(BenchError, match="run: bench fetch aesthetic") as e:
        reward_class("aesthetic")()
    assert "\n" not in str(e.value)


def test_aesthetic_matches_ddpo_recipe_and_is_differentiable(hub, images):  # noqa: F811
    head = tiny_hub.put_aesthetic(hub)
    ours = reward_class("aesthetic")()
    assert ours.differentiable and ours.version == "sac+logos+ava1-l14-linearMSE"
    expected, pixels = ddpo_scorer(tiny_hub.snapshot_dir(hub, "openai/clip-vit-large-patch14"), head)(images)
    with torch.no_grad():
        got = ours(images, ["unused"] * 3)
        net = ours.score_pixels(pixels)  # the same pixels: CLIP + normalisation + head are the original's
    torch.testing.assert_close(net, expected, rtol=0, atol=1e-5)
    # Whole score: PIL's 8-bit bicubic resize vs torch's on the float image (see test_real_rewards' CLIP test);
    # measured: -1.4298/-1.7157/-1.6712 (ours) vs -1.4238/-1.7143/-1.6663 (DDPO's), 2% of the spread at most.
    diff = (ours.processing(images) - pixels).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05
    spread = float(expected.max() - expected.min())
    assert spread > 0.05 and (got - expected).abs().max() < 0.05 * spread, (got, expected)
    x = images.clone().requires_grad_(True)
    ours(x, ["p"] * 3).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().flatten(1).sum(1) > 0).all()


@pytest.mark.slow
def test_full_size_clip_l14_and_head_load_and_backprop(hub, images):  # noqa: F811
    """CLIP ViT-L/14's real configuration (random weights, ~1.7 GB) with a 768-d head of the original's shapes,
    saved in the cache layouts `bench fetch aesthetic` produces, loaded through the real constructor."""
    from transformers import CLIPConfig, CLIPModel

    from rewards import weights

    folder = tiny_hub.snapshot_dir(hub, weights.CLIP_L14)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  patch_size=14, image_size=224)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).save_pretrained(folder)
    tiny_hub.write_clip_processor(folder)
    dims = [768, 1024, 128, 64, 16, 1]
    state = {}
    for i, d_in, d_out in zip(("0", "2", "4", "6", "7"), dims, dims[1:]):
        state |= {f"layers.{i}.{k}": v for k, v in torch.nn.Linear(d_in, d_out).state_dict().items()}
    path = weights.url_cache_dir() / weights.AESTHETIC_HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    reward = reward_class("aesthetic")()
    x = images[:1].clone().requires_grad_(True)
    reward(x, ["p"]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
