"""`sd15-lcm-random`: Stable Diffusion 1.5's architecture at its real size, with random weights, built offline.

For the cost of a training step on a real model — step time, framework overhead, peak memory at 512 px — the
weights do not matter, only the modules and their shapes. This model is LCM-Dreamshaper-v7's exact module tree
(the Stable Diffusion 1.5 UNet with the LCM guidance embedding, SD's VAE, OpenAI CLIP ViT-L/14's text tower and
its BPE tokenizer (bench/core/clip_bpe.py), the LCM scheduler) built from the configs below, so that

    bench perf --model sd15-lcm-random --device cuda --set model.dtype=bfloat16

measures on any GPU what `--model lcm-dreamshaper-v7` would, without `bench fetch`. It becomes a Policy through
the same code as the hub models (bench/core/policy.py `sd_policy`: same classes, same LoRA adapters, same UNet
checkpointing switch). Parameters (tests/test_models_sd15.py counts them on the meta device): UNet 859.60 M
(SD 1.5's 859.52 M plus the 81,920 of the guidance embedding's projection), VAE 83.65 M, text encoder 123.06 M.

Its images are noise and its rewards meaningless: use it for cost, never for results. The configs are those of
the hub's `unet/config.json`, `vae/config.json`, `text_encoder/config.json` and `scheduler/scheduler_config.json`
of SimianLuo/LCM_Dreamshaper_v7 (= stable-diffusion-v1-5 plus `time_cond_proj_dim`), keys left at the diffusers
or transformers default omitted.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.core.clip_bpe import clip_tokenizer
from bench.core.compute import ComputeMeter
from bench.core.policy import ModelConfig, Policy, sd_policy

UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, center_input_sample=False,
    time_cond_proj_dim=256,  # LCM's guidance embedding w -> (B, 256), fed as `timestep_cond`
)
VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
TEXT: dict[str, Any] = dict(  # CLIP ViT-L/14's text transformer, as SD 1.5 ships it (its odd pad/bos/eos ids too)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    pad_token_id=1, bos_token_id=0, eos_token_id=2,
)
SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps_offset=1,
    original_inference_steps=50, timestep_spacing="leading",
)
SEED = 1234  # the base weights are the same for every run seed (as a downloaded model's are)


def sd15_modules() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(UNet, VAE, text encoder) of SD 1.5 + the LCM guidance embedding, randomly initialised from the current RNG
    on the current default device (`with torch.device("meta")` builds them without memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return UNet2DConditionModel(**UNET), AutoencoderKL(**VAE), CLIPTextModel(CLIPTextConfig(**TEXT))


def sd15_lcm_random(config: ModelConfig, meter: ComputeMeter | None = None) -> Policy:
    """Random weights, real size: SD 1.5 UNet with LCM guidance embedding, VAE, CLIP-L text (cost, never results)."""
    from diffusers import LCMScheduler

    with torch.random.fork_rng():  # the base weights depend on SEED only, not on the run's RNG
        torch.manual_seed(SEED)
        unet, vae, text_encoder = sd15_modules()
    return sd_policy(unet, text_encoder, clip_tokenizer(), LCMScheduler(**SCHEDULER), vae, config, meter)
