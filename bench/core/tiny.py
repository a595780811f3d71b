"""Tiny LCMs of the real diffusers classes with random weights, built from config (tests, CI, smoke runs).

UNet2DConditionModel with `time_cond_proj_dim` for the guidance embedding, CLIPTextModel, LCMScheduler and an
optional AutoencoderKL, from fixed seeds, with a word-level tokenizer that needs no download. They exercise
every code path; they do not draw anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.compute import ComputeMeter
from bench.core.policy import ModelConfig, Policy

TINY_COLOURS = ["red", "green", "blue", "yellow"]
TINY_ANIMALS = ["cat", "dog", "horse", "bird"]
TINY_WORDS = ["a", "photo", "of"] + TINY_COLOURS + TINY_ANIMALS
"""The tiny models' word-level vocabulary: the `tiny` prompt set (bench/prompts/sets.py) is built from it."""


@dataclass
class TinySpec:
    """A tiny LCM of the real classes, random weights."""

    image_size: int = 16  # pixels per side of the decoded image
    block_out_channels: tuple[int, ...] = (32, 64)
    cross_attention_dim: int = 32  # text embedding width
    latent_channels: int = 3  # 3 = pixel space (identity decoder); 4 = latent space with a tiny VAE
    vae: bool = False  # decode with a 2x-upsampling AutoencoderKL
    vocab: list[str] = field(default_factory=list)  # extra words for the word-level tokenizer
    seed: int = 1234  # the base model is the same for every run seed


def word_tokenizer(words: list[str], max_length: int = 16):
    """A word-level tokenizer that needs no download (a `PreTrainedTokenizerFast`, same call API as CLIP's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(w.lower() for w in words) - set(specials)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>", model_max_length=max_length)


def build_tiny(spec: TinySpec, config: ModelConfig, meter: ComputeMeter | None = None) -> Policy:
    from diffusers import LCMScheduler

    tokenizer = word_tokenizer(TINY_WORDS + spec.vocab)
    with torch.random.fork_rng():  # the base weights depend on spec.seed only, not on the run's RNG
        torch.manual_seed(spec.seed)
        text_encoder, unet, vae = _tiny_modules(spec, len(tokenizer), tokenizer.model_max_length)
    scheduler = LCMScheduler(prediction_type="sample")
    return Policy(unet, text_encoder, tokenizer, scheduler, vae, config=config, meter=meter, image_size=spec.image_size)


def _tiny_modules(spec: TinySpec, vocab_size: int, max_length: int):
    """Text encoder, UNet and optional VAE of a tiny LCM (random weights from the current RNG)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=spec.cross_attention_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_length, pad_token_id=0, bos_token_id=2,
        eos_token_id=3)).eval()
    vae = None
    side = spec.image_size
    if spec.vae:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=spec.latent_channels,
                            block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8).eval()
        side //= 2
    unet = UNet2DConditionModel(
        sample_size=side, in_channels=spec.latent_channels, out_channels=spec.latent_channels,
        block_out_channels=spec.block_out_channels, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=spec.cross_attention_dim, attention_head_dim=8, time_cond_proj_dim=32)
    # A random ε-predictor puts x̂_0 = (x - σ ε)/sqrt(ᾱ) far outside the image range, so every pixel would be
    # clamped and rewards would have no gradient. The random tiny models therefore predict x̂_0 directly
    # (LCMScheduler's prediction_type="sample"), with a small output layer: images vary around grey.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)
        unet.conv_out.bias.zero_()
    return text_encoder, unet, vae


def tiny(config: ModelConfig, meter: ComputeMeter | None = None) -> Policy:
    """Random ~0.8 M-parameter pixel-space LCM, 16x16 images (CI and smoke tests)."""
    return build_tiny(TinySpec(), config, meter)


def tiny_vae(config: ModelConfig, meter: ComputeMeter | None = None) -> Policy:
    """Random latent-space LCM at TRL's benchmark shapes: UNet (32, 64), 4x32x32 latents, tiny VAE to 64x64."""
    return build_tiny(TinySpec(image_size=64, latent_channels=4, vae=True), config, meter)
