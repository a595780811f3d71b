"""`sd15-lcm-random` (bench/models/sd15.py): Stable Diffusion 1.5's architecture and size with random weights.

Fast: the modules built on the meta device (no memory) have SD 1.5's parameter counts exactly, the tokenizer is
CLIP's, and the registry knows the model's latent. Slow: one training step of every method family on the
full-size model at 64 px on the CPU (about 2-3 minutes, 6 GB):

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m slow tests/test_models_sd15.py
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.clip_bpe import clip_tokenizer
from bench.models.sd15 import UNET, VAE, sd15_modules

# Published sizes: stable-diffusion-v1-5's unet 859,520,964, vae 83,653,863, text_encoder 123,060,480; the LCM
# guidance embedding adds time_embedding.cond_proj, a bias-free Linear(256 -> 320).
SD15_UNET, GUIDANCE_PROJ, SD15_VAE, CLIP_L_TEXT = 859_520_964, 256 * 320, 83_653_863, 123_060_480


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_random_model_has_sd15s_parameter_counts():
    with torch.device("meta"):
        unet, vae, text = sd15_modules()
    assert next(unet.parameters()).is_meta  # nothing was allocated
    assert _count(unet) == SD15_UNET + GUIDANCE_PROJ
    assert _count(unet.time_embedding.cond_proj) == GUIDANCE_PROJ
    assert _count(vae) == SD15_VAE and _count(text) == CLIP_L_TEXT
    assert UNET["sample_size"] * 2 ** (len(VAE["block_out_channels"]) - 1) == 512  # 4x64x64 latents, 512 px


def test_its_tokenizer_is_clips_bpe():
    tok = clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # OpenAI CLIP's ids
    ids = tok(["a photo of a cat"], padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, -1] == tok.eos_token_id


def test_the_registry_knows_it():
    from bench.registry.catalog import MODEL_DEFAULTS, latent_dims
    from bench.registry.lookup import model_builder, reward_class

    assert model_builder("sd15-lcm-random").__module__ == "bench.models.sd15"
    assert latent_dims("sd15-lcm-random") == 4 * 64 * 64 and latent_dims("sd15-lcm-random", 64) == 4 * 8 * 8
    assert reward_class(MODEL_DEFAULTS["sd15-lcm-random"]["reward"]).differentiable  # every method can train on it


FAMILIES = ["rocm-kl", "draft-k", "refl", "ddpo", "grpo", "dpok", "rebel", "d3po"]  # one entry per method module
SMALL = ["model.resolution=64", "sampler.steps=2", "method.batch_size=2", "method.train_batch_size=2",
         "method.prompts_per_step=1", "method.samples_per_prompt=2", "d3po.train_batch_size=1",
         "rebel.train_batch_size=1", "refl.step_min=0", "dpok.updates_per_step=1", "dpok.accumulation=1"]


@pytest.mark.slow
def test_one_step_of_every_method_family_on_the_full_size_model():
    """The real architecture through every family's training step (2 images at 64 px, 2 sampling steps): the
    LoRA adapters train, the meter charges the UNet's forwards and backwards. Command: the module docstring."""
    from bench.core.compute import ComputeMeter
    from bench.perf.setup import make_suite
    from bench.registry.lookup import model_builder, reward_class
    from bench.run.config import method_config, split_prompts

    suite = make_suite("sd15-lcm-random", FAMILIES, SMALL, "cpu")
    torch.manual_seed(0)
    policy = model_builder(suite.model.name)(suite.model, ComputeMeter())
    assert policy.latent_shape == (4, 8, 8) and policy.image_size == 64
    lora = policy.trainable_parameters()
    assert 0 < sum(p.numel() for p in lora) < 0.01 * _count(policy.unet)  # adapters only, the base stays frozen
    reward = reward_class("brightness")(policy.device, policy.meter)
    prompts = split_prompts(suite)["train"]
    fresh = {k: v.clone() for k, v in policy.trainable_state_dict().items()}  # on the CPU it shares storage
    for name in FAMILIES:  # one policy for all (building it takes longer than a step), fresh adapters for each
        policy.load_trainable_state_dict(fresh)  # (D3PO's clamped ratio passes no gradient far from the base)
        cls, cfg = method_config(name, suite)
        algo = cls(name, cfg, policy, suite.sampler, reward, prompts, torch.Generator().manual_seed(0))
        before = [p.detach().clone() for p in lora]
        counts = policy.meter.counters()
        logs = algo.step()
        after = policy.meter.counters()
        assert math.isfinite(logs["loss"]) and 0 <= logs["reward_mean"] <= 1, (name, logs)
        assert after["nfe_forward"] > counts["nfe_forward"] and after["nfe_backward"] > counts["nfe_backward"], name
        assert any(not torch.equal(a, b) for a, b in zip(before, lora)), f"{name}: no adapter weight changed"
