"""The policy: a latent consistency model (diffusers classes) with trainable LoRA adapters, and tiny test models.

`Policy` is the one model contract every method uses (docs/methods.md §0):
  - `encode_prompts(prompts) -> (B, L, D)` text embeddings (frozen text encoder, cached per prompt);
  - `consistency(x_t, t, cond) -> x̂_0`: the consistency function f_θ (UNet ε-prediction + LCM boundary
    condition c_skip·x_t + c_out·x̂_0);
  - `decode(x̂_0) -> images in [0, 1]` (VAE decoder, or identity for a pixel-space model);
  - `reference()`: a context in which the model *is* the frozen starting model (adapters disabled, or the
    frozen copy for full fine-tuning);
  - `trainable_parameters()`, `trainable_state_dict()` / `load_trainable_state_dict()` for checkpoints.

The tiny models are built from config with the real classes (UNet2DConditionModel with `time_cond_proj_dim`
for the guidance embedding, CLIPTextModel, LCMScheduler, AutoencoderKL) and fixed seeds, so tests and CI need
no network. Their base weights are random: they exercise every code path, they do not draw anything.

Every model call is charged to the compute meter (bench/core/compute.py) where it happens: the UNet in
`consistency` (NFE, and FLOPs per variant: policy, or reference with adapters off), the VAE decoder in
`decode`, the text encoder in `encode_prompts` (cache misses only); backwards through the UNet and the decoder
are charged when gradient reaches their outputs.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.compute import ComputeMeter


@dataclass
class ModelConfig:
    """Which base model, and what of it is trained."""

    name: str = "tiny"
    """Registered model name (`bench ls`)."""
    lora_rank: int = 8
    """LoRA rank on the UNet attention projections; 0 means full fine-tuning of the UNet."""
    lora_alpha: float = 8.0
    """LoRA scaling numerator (effective scale alpha / rank)."""
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Module names inside the UNet that get adapters."""
    dtype: str = "float32"
    """Autocast dtype on a GPU ("float32", "bfloat16", "float16"); the CPU always runs float32."""
    resolution: int = 0
    """Image side in pixels; 0 = the model's native size (512 for the Stable Diffusion 1.5 family)."""
    unet_checkpointing: bool = False
    """Gradient checkpointing inside the UNet too (real models at 512 px), on top of the sampler's per-step one."""
    frozen_in_dtype: bool = True
    """On a GPU with `dtype` other than float32: hold the frozen weights (the UNet's base weights, the VAE, the
    text encoder, a full fine-tune's frozen reference) in `dtype`, as autocast casts them on every call anyway;
    LoRA weights and the optimizer stay float32. Memory and casts saved, the arithmetic unchanged. No effect on
    a CPU."""
    compile: bool = False
    """torch.compile the UNet (its forward, in place). Compilation happens in the first step: a time
    budget takes that step as its uncharged warm-up (bench/run/budget.py); count budgets never count time."""
    channels_last: bool = False
    """Channels-last memory format for the UNet and the VAE (faster convolutions on some GPUs). Off by default:
    not measured to help here."""


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale, (B,) -> (B, dim), as LCM pipelines feed `timestep_cond`.
    Same formula as diffusers' `LatentConsistencyModelPipeline.get_guidance_scale_embedding` (VDM)."""
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :].to(w.device)
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))


def x0_from_output(out: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """A UNet's output at x_t as x̂_0, for the scheduler's `prediction_type` ("epsilon", "sample" or
    "v_prediction"); abar_t is ᾱ_t, a scalar or broadcastable to x_t (e.g. (B, 1, 1, 1))."""
    if prediction_type == "epsilon":
        return (x_t - (1 - abar_t).sqrt() * out) / abar_t.sqrt()
    if prediction_type == "sample":
        return out
    return abar_t.sqrt() * x_t - (1 - abar_t).sqrt() * out  # "v_prediction"


class Policy(nn.Module):
    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, *, config: ModelConfig,
                 meter: ComputeMeter | None = None, image_size: int | None = None):
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.tokenizer, self.scheduler, self.config = tokenizer, scheduler, config
        self.meter = meter or ComputeMeter()
        self.text_encoder.requires_grad_(False)
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self._reference_unet = None
        if config.lora_rank > 0:
            from peft import LoraConfig

            self.unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                             init_lora_weights="gaussian", target_modules=list(config.lora_targets)))
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._lora_layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        else:  # full fine-tuning: the reference is a frozen copy
            self._reference_unet = copy.deepcopy(self.unet).eval()
            self.unet.requires_grad_(True)
        self._in_reference = False
        self._prompt_cache: dict[str, torch.Tensor] = {}
        c = unet.config
        scale = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
        side = image_size // scale if image_size else c.sample_size
        self.latent_shape = (c.in_channels, side, side)
        self.image_size = side * scale

    # ---- text ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B,) prompts -> (B, L, D) last hidden states of the frozen text encoder (cached per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", truncation=True, return_tensors="pt",
                                 max_length=self.tokenizer.model_max_length)
            ids = tok.input_ids.to(self.device)  # (M, L): the M prompts not cached yet
            with self.meter.forward("text", tuple(ids.shape[1:]), len(missing)):
                hidden = self.text_encoder(ids)[0]
            self._prompt_cache.update(zip(missing, hidden))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    # ---- the consistency function ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def consistency(self, x_t: torch.Tensor, t: int, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """f_θ(x_t, t, c, w): (B, C, H, W) -> x̂_0 (B, C, H, W), exactly as `LCMScheduler.step` forms it."""
        b = x_t.shape[0]
        self.meter.charge_forward(b)
        unet = self._reference_unet if (self._in_reference and self._reference_unet is not None) else self.unet
        dim = self.unet.config.time_cond_proj_dim  # None: no guidance embedding (LCM-LoRA), w is not used
        w_emb = guidance_embedding(torch.full((b,), guidance_scale - 1.0), dim).to(x_t) if dim else None
        ts = torch.full((b,), t, device=x_t.device, dtype=torch.long)
        # FLOPs per sample depend on the per-sample shapes and on the variant (the reference skips the adapters).
        key = ("reference" if self._in_reference else "policy", tuple(x_t.shape[1:]), tuple(cond.shape[1:]),
               None if w_emb is None else tuple(w_emb.shape[1:]))
        with self.autocast(), self.meter.forward("denoiser", key, b, nfe_unit=not self._in_reference) as call:
            eps = unet(x_t, ts, encoder_hidden_states=cond, timestep_cond=w_emb).sample.float()
        a = self.scheduler.alphas_cumprod[t].to(x_t)
        x0_pred = x0_from_output(eps, x_t, a, self.scheduler.config.prediction_type)
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition_discrete(t)
        out = c_skip * x_t + c_out * x0_pred
        return self.meter.watch_backward(out, call)

    def autocast(self):
        """The autocast context every model call runs in: config.dtype on a GPU, float32 on the CPU."""
        if self.device.type == "cuda" and self.config.dtype != "float32":
            return torch.autocast("cuda", dtype=getattr(torch, self.config.dtype))
        return torch.autocast("cpu", enabled=False)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x̂_0 latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1], differentiable (clamped as pipelines do)."""
        if self.vae is not None:  # the identity of a pixel-space model costs nothing
            z = x0 / self.vae.config.scaling_factor
            with self.autocast(), self.meter.forward("decoder", tuple(z.shape[1:]), z.shape[0]) as call:
                x0 = self.vae.decode(z).sample.float()
            x0 = self.meter.watch(x0, call)  # (B, 3, H, W): a backward is charged when gradient reaches it
        return (x0 / 2 + 0.5).clamp(0, 1)

    def to(self, *args, **kwargs) -> "Policy":
        """nn.Module.to, then the settings of `config` that depend on the device: frozen weights in the autocast
        dtype (a GPU), the memory format, compilation."""
        super().to(*args, **kwargs)
        cfg = self.config
        if self.device.type == "cuda" and cfg.frozen_in_dtype and cfg.dtype != "float32":
            cast_frozen(self, getattr(torch, cfg.dtype))
        if cfg.channels_last:
            for m in (self.unet, self._reference_unet, self.vae):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        if cfg.compile and not getattr(self.unet, "_compiled_by_bench", False):
            self.unet.compile()
            self.unet._compiled_by_bench = True
        return self

    @property
    def in_reference(self) -> bool:
        """True inside `reference()`: the model is the frozen starting model."""
        return self._in_reference

    @property
    def reference_unet(self) -> nn.Module | None:
        """The frozen copy of the UNet under full fine-tuning (lora_rank 0); None with LoRA, whose reference is
        the same UNet with its adapters switched off."""
        return self._reference_unet

    @property
    def cached_prompts(self) -> int:
        """How many distinct prompts' text embeddings are cached (each was encoded, and charged, once)."""
        return len(self._prompt_cache)

    def clear_prompt_cache(self) -> None:
        """Forget the cached text embeddings: the next use of each prompt encodes (and charges) it again."""
        self._prompt_cache.clear()

    @contextmanager
    def reference(self):
        """Inside this context the policy is the frozen starting model."""
        if self._in_reference:
            yield
            return
        self._in_reference = True
        # Flip the LoRA layers' switch directly. diffusers' disable_adapters() walks every module and peft also
        # toggles requires_grad on the adapters (~3 ms a switch, and a flag change inside checkpoint recomputes).
        self._set_adapters(False)
        try:
            yield
        finally:
            self._set_adapters(True)
            self._in_reference = False

    def _set_adapters(self, enabled: bool) -> None:
        if self._reference_unet is None:
            for layer in self._lora_layers:
                layer._disable_adapters = not enabled

    # ---- training state ----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.unet.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)


def cast_frozen(policy: "Policy", dtype: torch.dtype) -> None:
    """Every parameter of the policy that is not trained (requires_grad False) to `dtype`; trained ones (LoRA, or
    a full fine-tune's UNet) stay float32 for the optimizer."""
    with torch.no_grad():
        for p in policy.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(dtype)


def sd_policy(unet, text_encoder, tokenizer, scheduler, vae, config: ModelConfig,
              meter: ComputeMeter | None = None) -> Policy:
    """A Stable Diffusion-family LCM (hub weights, or bench/models/sd15.py's random ones) as the Policy: UNet-
    internal gradient checkpointing if `config.unet_checkpointing`, the native size unless `config.resolution`."""
    if config.unet_checkpointing:
        unet.enable_gradient_checkpointing()
    return Policy(unet, text_encoder.eval(), tokenizer, scheduler, vae.eval(), config=config, meter=meter,
                  image_size=config.resolution or None)


