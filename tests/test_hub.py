"""Real-model loading, offline: tiny random models of the real classes are saved in the Hugging Face cache
layout under a temporary HF_HUB_CACHE and loaded through bench.models.hub's own code path; missing weights name the
`bench fetch` command."""

import json
import subprocess
import sys

import pytest
import torch

from bench.core.errors import BenchError
from bench.core.policy import ModelConfig

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def clip_tokenizer_folder(folder):
    """A real CLIPTokenizer with a byte-level vocabulary and no merges (every character is a token)."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                        model_max_length=16)
    tok.save_pretrained(folder)
    return len(vocab)


def save_tiny_lcm(root, time_cond: int | None = 32):
    """A tiny LCM-Dreamshaper-shaped pipeline folder: unet, vae, text_encoder, tokenizer, scheduler."""
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vocab = clip_tokenizer_folder(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16)).save_pretrained(root / "text_encoder")
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(root / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), norm_num_groups=8,
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                         time_cond_proj_dim=time_cond).save_pretrained(root / "unet")
    LCMScheduler().save_pretrained(root / "scheduler")


def write_model_index(folder, pipeline_class: str):
    """model_index.json of a tiny pipeline folder (no safety checker), so `PIPELINE.from_pretrained` loads it."""
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline_class, "_diffusers_version": "0.39.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "LCMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None]}))


def save_tiny_sd15_with_lcm_lora(cache):
    """A tiny SD 1.5 (no guidance embedding) and a non-trivial tiny "LCM-LoRA" in the cache, where bench.models.hub looks;
    returns the UNet with that LoRA applied (the model lcm-lora-sd15 must equal once fused)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from bench.models.hub import LCM_LORA_SD15, SD15

    base = cache_repo(cache, SD15)
    save_tiny_lcm(base, time_cond=None)
    write_model_index(base, "StableDiffusionPipeline")
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a non-trivial "LCM-LoRA"
    StableDiffusionPipeline.save_lora_weights(cache_repo(cache, LCM_LORA_SD15),
                                              unet_lora_layers=get_peft_model_state_dict(unet))
    return unet


def cache_repo(cache, repo_id):
    """The snapshot folder of `repo_id` in a Hugging Face cache, with refs/main pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return repo / "snapshots" / SNAPSHOT


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_missing_weights_name_the_fetch_command(hf_cache):
    from bench.models.hub import lcm_dreamshaper_v7

    with pytest.raises(BenchError, match="run: bench fetch lcm-dreamshaper-v7"):
        lcm_dreamshaper_v7(ModelConfig(name="lcm-dreamshaper-v7"))


def test_cli_without_weights_fails_with_fetch_message(hf_cache):
    p = subprocess.run([sys.executable, "-m", "bench.cli.main", "run", "--model", "lcm-dreamshaper-v7", "--methods", "ddpo",
                        "--rewards", "brightness", "--out", str(hf_cache / "out"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "bench fetch lcm-dreamshaper-v7" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_dreamshaper_loads_from_cache_and_samples_with_gradients(hf_cache):
    from bench.core.sampler import SamplerConfig, sample
    from bench.models.hub import DREAMSHAPER, lcm_dreamshaper_v7

    save_tiny_lcm(cache_repo(hf_cache, DREAMSHAPER))
    policy = lcm_dreamshaper_v7(ModelConfig(name="lcm-dreamshaper-v7", lora_rank=4, resolution=16))
    assert policy.latent_shape == (4, 8, 8) and policy.image_size == 16
    traj = sample(policy, ["a photo of a cat", "a photo of a dog"], SamplerConfig(steps=2),
                  torch.Generator().manual_seed(0), grad=True)
    assert traj.images.shape == (2, 3, 16, 16)
    traj.images.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


def test_lcm_lora_sd15_fuses_the_adapter(hf_cache):
    """SD 1.5 + LCM-LoRA: the fused UNet equals base + LoRA delta, and sampling works without a guidance embedding."""
    from bench.core.sampler import SamplerConfig, sample
    from bench.models.hub import lcm_lora_sd15

    unet = save_tiny_sd15_with_lcm_lora(hf_cache)
    policy = lcm_lora_sd15(ModelConfig(name="lcm-lora-sd15", lora_rank=4, resolution=16))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    cond = policy.encode_prompts(["a cat", "a dog"])
    with torch.no_grad(), policy.reference():
        fused = policy.unet(x, t, encoder_hidden_states=cond).sample
        expected = unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)
    traj = sample(policy, ["a cat", "a dog"], SamplerConfig(steps=2), torch.Generator().manual_seed(0))
    assert torch.isfinite(traj.images).all()
