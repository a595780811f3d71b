"""The testbed generator: a text-conditioned pixel-space diffusion model of the real diffusers classes,
and its pre-training as a diffusion model (the teacher that `distill.py` turns into an LCM).

Architecture (~1 M parameters, `GeneratorSpec`): `UNet2DConditionModel` on 3x16x16 pixels (the "latent" is
the image itself, x = 2 * image - 1; the decoder is the identity), cross-attention at 8x8 only (attention
over 256 tokens at 16x16 would triple the cost on a CPU), a 2-layer `CLIPTextModel` over the word-level
tokenizer of `bench.core.policy`. The student LCM adds `time_cond_proj_dim` (the guidance embedding); the teacher
has none, as a real Stable Diffusion teacher.

Pre-training (`PretrainConfig`): the DDPM loss (MSE of the UNet's x̂_0, or ε̂ with `prediction_type="epsilon"`)
on the 1000-step scaled-linear schedule of `LCMScheduler`'s default config, text encoder trained jointly, 10% of
prompts dropped to "" so that classifier-free guidance works; the teacher is the EMA of the weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.tiny import word_tokenizer
from bench.prompts.testbed import PRETRAIN_IMAGES, TRAIN_COMBOS, WORDS
from bench.testbed.world import DigitSampler


@dataclass
class GeneratorSpec:
    block_out_channels: tuple[int, ...] = (32, 64)  # UNet widths at 16x16 and 8x8
    cross_attention_dim: int = 32  # text embedding width
    text_layers: int = 2  # CLIPTextModel transformer layers
    max_tokens: int = 8  # tokenizer length: prompts have 7 words
    guidance_dim: int = 32  # time_cond_proj_dim of the student (guidance embedding width)
    # What the UNet outputs (LCMScheduler's prediction_type): "sample" = x̂_0, or "epsilon" = ε̂. x̂_0, because
    # the digit is decided at high noise, where an ε loss hardly rewards conditioning:
    # ε̂ = (x_t - √ᾱ x̂_0) / √(1-ᾱ) carries an x̂_0 error scaled by √SNR, 0.07 at t = 999.
    # Measured: see PretrainConfig.steps.
    prediction_type: str = "sample"


def make_tokenizer(spec: GeneratorSpec):
    return word_tokenizer(WORDS, max_length=spec.max_tokens)


def build_text_encoder(spec: GeneratorSpec, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=spec.cross_attention_dim, intermediate_size=2 * spec.cross_attention_dim,
        num_hidden_layers=spec.text_layers, num_attention_heads=2, max_position_embeddings=spec.max_tokens,
        pad_token_id=0, bos_token_id=2, eos_token_id=3))


def build_unet(spec: GeneratorSpec, guidance: bool):
    """guidance=True: the LCM student (with the guidance embedding `time_cond_proj_dim`)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=spec.block_out_channels,
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=spec.cross_attention_dim,
        attention_head_dim=8, time_cond_proj_dim=spec.guidance_dim if guidance else None)


def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t (1000,) of LCMScheduler's default config (scaled_linear, β from 0.00085 to 0.012)."""
    from diffusers import LCMScheduler

    return LCMScheduler().alphas_cumprod.float()


class TextEncoder(nn.Module):
    """Tokenizer + CLIPTextModel: prompts -> (B, L, D) last hidden states."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.tokenizer = make_tokenizer(spec)
        self.model = build_text_encoder(spec, len(self.tokenizer))
        self._ids: dict[str, torch.Tensor] = {}  # token ids (L,) per prompt: padded to max_length, so per prompt

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """(B, L) token ids, each prompt tokenised once (the pre-training draws 128 prompts of 110 every step)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._ids]
        if new:
            ids = self.tokenizer(new, padding="max_length", truncation=True, return_tensors="pt").input_ids
            self._ids.update(zip(new, ids))
        return torch.stack([self._ids[p] for p in prompts])

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.model(self.token_ids(prompts))[0]


@dataclass
class PretrainConfig:
    # Optimiser steps. Measured, teacher's share of samples with the prompted digit (CFG 8): ε-prediction
    # 1500 x 128 -> 45% (DDIM 50), 800 x 64 with min-SNR-5 or (1 + 1/SNR) weighting -> 15-16% (DDIM 20);
    # x̂_0-prediction 800 x 64 -> 67% (DDIM 20), 1500 x 128 -> 100% (DDIM 50; see GeneratorSpec.prediction_type).
    steps: int = 1500
    batch: int = 128  # images per step
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    warmup: int = 50  # warm-up steps
    ema_decay: float = 0.995  # EMA of the weights; the EMA is the teacher
    p_uncond: float = 0.1  # probability of replacing a prompt by "" (for classifier-free guidance)


def lr_lambda(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + 0.05


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target ← lerp(target, source, 1 − decay), every parameter in one call (the same lerp as per tensor)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), 1 - decay)


def pretrain(spec: GeneratorSpec, cfg: PretrainConfig, seed: int, log=print) -> tuple[nn.Module, TextEncoder]:
    """Train the teacher; returns the EMA (UNet without guidance embedding, text encoder)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet, text = build_unet(spec, guidance=False), TextEncoder(spec)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    params = list(unet.parameters()) + list(text.parameters())
    # foreach: one call for every tensor, the same arithmetic as the per-tensor loop (bit-identical), less overhead
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg.warmup, cfg.steps))
    data = DigitSampler(PRETRAIN_IMAGES, TRAIN_COMBOS)
    abar = alphas_cumprod()
    t0 = time.time()
    for step in range(cfg.steps):
        images, prompts = data.sample(cfg.batch, gen)
        drop = torch.rand(cfg.batch, generator=gen) < cfg.p_uncond
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        x0 = images * 2 - 1  # (B, 3, 16, 16) in [-1, 1]
        t = torch.randint(0, len(abar), (cfg.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = x0 if spec.prediction_type == "sample" else noise
        loss = (unet(x_t, t, encoder_hidden_states=text(prompts)).sample - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short EMA early, so a short run is usable
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text, decay)
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"pretrain step {step}/{cfg.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    return ema_unet.eval(), ema_text.eval()


@torch.no_grad()
def teacher_sample(unet: nn.Module, text: TextEncoder, prompts: list[str], steps: int, guidance_scale: float,
                   generator: torch.Generator, prediction_type: str, batch: int = 256) -> torch.Tensor:
    """DDIM (diffusers `DDIMScheduler`, η = 0) with classifier-free guidance -> images (B, 3, 16, 16) in [0, 1].
    Guidance combines the two outputs linearly, which is the same for x̂_0 and ε̂ (affine in each other)."""
    from diffusers import DDIMScheduler, LCMScheduler

    cfg = LCMScheduler().config
    ddim = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    ddim.set_timesteps(steps)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        cond = torch.cat([text(chunk), text([""] * len(chunk))])  # (2B, L, D)
        x = torch.randn((len(chunk), 3, 16, 16), generator=generator)
        for t in ddim.timesteps:
            out_c, out_u = unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
            x = ddim.step(out_u + guidance_scale * (out_c - out_u), t, x).prev_sample
        out.append((x / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)
