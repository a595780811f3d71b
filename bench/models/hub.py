"""Real models from the Hugging Face cache, and `bench fetch`, the only code that touches the network.

Everything else runs offline: weights are looked up in the local cache (`HF_HUB_CACHE`, else
`HF_HOME/hub`, else ~/.cache/huggingface/hub, read at call time) and a missing one is a one-line
`BenchError` naming the `bench fetch` command that downloads it. Tests save tiny random models of the same
classes in the same folder layout and load them through these same functions.

Models:
  lcm-dreamshaper-v7  SimianLuo/LCM_Dreamshaper_v7: a distilled LCM with a guidance embedding (w through
                      `timestep_cond`), 512 px, VAE latents 4x64x64.
  lcm-lora-sd15       Stable Diffusion 1.5 with latent-consistency/lcm-lora-sdv1-5 fused into its UNet. SD 1.5
                      has no guidance embedding: it is sampled without guidance (w is ignored), as LCM-LoRA is
                      usually run at guidance 1.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.compute import ComputeMeter
from bench.core.hub_cache import local_snapshot
from bench.core.policy import ModelConfig, Policy, sd_policy

DREAMSHAPER = "SimianLuo/LCM_Dreamshaper_v7"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LCM_LORA_SD15 = "latent-consistency/lcm-lora-sdv1-5"

# What `bench fetch NAME` downloads for each model: (repo id, file patterns or None for the whole repo).
MODEL_FETCH: dict[str, list[tuple[str, list[str] | None]]] = {
    "lcm-dreamshaper-v7": [(DREAMSHAPER, ["unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*",
                                          "model_index.json"])],
    "lcm-lora-sd15": [(SD15, ["unet/*.json", "unet/diffusion_pytorch_model.safetensors", "vae/*.json",
                              "vae/diffusion_pytorch_model.safetensors", "text_encoder/*.json",
                              "text_encoder/model.safetensors", "tokenizer/*", "scheduler/*", "model_index.json"]),
                      (LCM_LORA_SD15, ["pytorch_lora_weights.safetensors"])],
}


def require_cached(name: str) -> None:
    """Fail fast, before a suite starts, when a model's weights are not in the cache."""
    for repo_id, _ in MODEL_FETCH.get(name, []):
        local_snapshot(repo_id, name)


def _components(folder: Path):
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    scheduler = LCMScheduler.from_pretrained(folder / "scheduler")
    return unet, text_encoder, tokenizer, scheduler, vae


def lcm_dreamshaper_v7(config: ModelConfig, meter: ComputeMeter | None = None) -> Policy:
    """LCM-Dreamshaper-v7 (SimianLuo/LCM_Dreamshaper_v7), 512 px; weights from the HF cache (bench fetch)."""
    folder = local_snapshot(DREAMSHAPER, "lcm-dreamshaper-v7")
    unet, text_encoder, tokenizer, scheduler, vae = _components(folder)
    return sd_policy(unet, text_encoder, tokenizer, scheduler, vae, config, meter)


def lcm_lora_sd15(config: ModelConfig, meter: ComputeMeter | None = None) -> Policy:
    """Stable Diffusion 1.5 with LCM-LoRA fused (no guidance embedding), 512 px; weights from the HF cache."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    folder = local_snapshot(SD15, "lcm-lora-sd15")
    lora = local_snapshot(LCM_LORA_SD15, "lcm-lora-sd15")
    # diffusers' documented LCM-LoRA route: load the adapter into the pipeline, fuse it, drop the adapter.
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="lcm")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return sd_policy(pipe.unet, pipe.text_encoder, pipe.tokenizer, scheduler, pipe.vae, config, meter)
