"""The registered "testbed" model: the shipped consistency-distilled digit LCM as a `bench.core.policy.Policy`.

Weights: `bench/testbed/weights/generator.safetensors` (keys `unet.*`, `text_encoder.*`; the
`GeneratorSpec` as JSON metadata; `teacher.safetensors` likewise for the diffusion teacher), rebuilt by
`python -m bench.testbed.build`. Pixel space: no VAE, images are x / 2 + 0.5. The scheduler is `LCMScheduler`
with its default config but for `prediction_type` (the spec's: "sample", the UNet predicts x̂_0).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch import nn

from bench.core.compute import ComputeMeter
from bench.core.policy import ModelConfig, Policy
from bench.testbed.generator import GeneratorSpec, TextEncoder, build_unet
from bench.testbed.nets import load_weights, save_weights

WEIGHTS_NAME = "generator"  # the distilled LCM student
TEACHER_NAME = "teacher"  # the diffusion teacher (no guidance embedding), kept for re-distillation


def policy_from(unet: nn.Module, text: TextEncoder, spec: GeneratorSpec, config: ModelConfig,
                meter: ComputeMeter | None = None) -> Policy:
    from diffusers import LCMScheduler

    return Policy(unet, text.model.eval(), text.tokenizer, LCMScheduler(prediction_type=spec.prediction_type), None,
                  config=config, meter=meter, image_size=16)


def save_generator(path: Path, unet: nn.Module, text: TextEncoder, spec: GeneratorSpec) -> None:
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"text_encoder.{k}": v for k, v in text.model.state_dict().items()}
    save_weights(path, tensors, asdict(spec))


def load_parts(weights_dir: Path | None = None,
               name: str = WEIGHTS_NAME) -> tuple[nn.Module, TextEncoder, GeneratorSpec]:
    """A shipped UNet and its text encoder (eval mode) and spec: the student ("generator") or the teacher."""
    tensors, config = load_weights(name, weights_dir)
    spec = GeneratorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    unet, text = build_unet(spec, guidance=name != TEACHER_NAME), TextEncoder(spec)
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    text.model.load_state_dict({k[13:]: v for k, v in tensors.items() if k.startswith("text_encoder.")})
    return unet.eval(), text.eval(), spec


def load(config: ModelConfig, meter: ComputeMeter | None = None, weights_dir: Path | None = None) -> Policy:
    """Consistency-distilled ~1 M-parameter digit LCM, 3x16x16 pixels, trained offline here (the testbed)."""
    unet, text, spec = load_parts(weights_dir)
    return policy_from(unet, text, spec, config, meter)
