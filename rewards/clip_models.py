"""PickScore and CLIP score: both a plain `transformers.CLIPModel`, scored through one differentiable path.

- `pickscore`: `yuvalkirstain/PickScore_v1` with the `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` processor, scored as
  on its model card: logit_scale.exp() * cos(image embedding, text embedding).
- `clip`: CLIP score (Hessel et al. 2021, as torchmetrics computes it) with `openai/clip-vit-large-patch14`:
  100 * max(cos, 0).

`CLIPImageProcessor` works on PIL/numpy images; `clip_preprocess` does the same steps in torch so gradients reach
the pixels: resize the shortest side to `shortest_edge` (bicubic, antialiased like PIL's filter), centre crop,
normalise with the processor's mean/std read from its preprocessor_config.json. `ImageReward` reuses it (its
torchvision transform is the same recipe). Prompts go through the real `CLIPTokenizer`; text embeddings are
computed without gradient and cached per prompt.

Where the weights come from (`load`: the hub cache) is kept apart from how the reward scores (everything else),
so that `pickscore-random` and `clip-random` (rewards/random_weights.py: the same architectures with random
weights, for cost measurement) differ from these only in `load`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer, PreTrainedTokenizerBase

from bench.api import ComputeMeter, Reward
from rewards import weights


def resized_shortest(h: int, w: int, size: int) -> tuple[int, int]:
    """Output (h, w) when the shortest side becomes `size`; the long side is truncated as both
    transformers' `get_resize_output_image_size` and torchvision's `Resize(int)` do."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def clip_preprocess(images: torch.Tensor, shortest_edge: int, crop: tuple[int, int], mean, std,
                    crop_rounding: str = "floor") -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, crop_h, crop_w) normalised, differentiable.

    crop_rounding: where an odd margin puts the extra pixel — "floor" as transformers' `center_crop`,
    "round" as torchvision's `CenterCrop`. The clamp mirrors the uint8 PIL image the originals resize.
    """
    h, w = images.shape[-2:]
    size = resized_shortest(h, w, shortest_edge)
    if size != (h, w):
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    (h, w), (ch, cw) = images.shape[-2:], crop
    if (h, w) != (ch, cw):
        if h < ch or w < cw:
            raise ValueError(f"cannot centre-crop {h}x{w} to {ch}x{cw}")
        off = (lambda m: m // 2) if crop_rounding == "floor" else (lambda m: int(round(m / 2.0)))
        top, left = off(h - ch), off(w - cw)
        images = images[..., top:top + ch, left:left + cw]
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


class ClipProcessing:
    """A processor's preprocessing settings: the fields of its preprocessor_config.json (no PIL involved)."""

    def __init__(self, cfg: dict, source: str = "preprocessor config"):
        size = cfg.get("size", 224)
        self.shortest_edge = size["shortest_edge"] if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", self.shortest_edge)
        self.crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        self.mean, self.std = cfg["image_mean"], cfg["image_std"]
        if cfg.get("resample", 3) != 3:  # 3 = PIL.Image.BICUBIC, what every CLIP processor here uses
            raise ValueError(f"{source}: resample={cfg['resample']} is not bicubic")

    @classmethod
    def from_file(cls, config_file: Path) -> "ClipProcessing":
        return cls(json.loads(Path(config_file).read_text()), str(config_file))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.shortest_edge, self.crop, self.mean, self.std)


class _CLIPReward(Reward):
    """A `CLIPModel` reward: score = `_from_cosine(cos(image, text), logit_scale)`."""

    repo_id: str = ""
    processor_repo: str | None = None  # None: the processor files sit in the model's own repo

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        model, self.tokenizer, self.processing = self.load()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._text_cache: dict[str, torch.Tensor] = {}

    def load(self) -> tuple[CLIPModel, PreTrainedTokenizerBase, ClipProcessing]:
        """Where the model comes from — here the local hub cache (`bench fetch NAME`): (model, tokenizer,
        preprocessing). Everything else, scoring included, is shared with the random-weight variants
        (rewards/random_weights.py), which override only this."""
        model_dir = weights.hub_folder(self.name, self.repo_id)
        proc_dir = (weights.hub_files(self.name, self.processor_repo, weights.CLIP_PROCESSOR_FILES)
                    if self.processor_repo else model_dir)
        return (CLIPModel.from_pretrained(model_dir), CLIPTokenizer.from_pretrained(proc_dir),
                ClipProcessing.from_file(proc_dir / "preprocessor_config.json"))

    def clear_prompt_cache(self) -> None:
        self._text_cache.clear()

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> (B, D) unit text embeddings, computed once per distinct prompt."""
        new = sorted({p for p in prompts if p not in self._text_cache})
        if new:
            # Same call as the model card's processor(text=..., padding=True, truncation=True, max_length=77).
            tok = self.tokenizer(new, padding=True, truncation=True, max_length=77, return_tensors="pt")
            with self.prompt_forward(tuple(tok.input_ids.shape[1:]), len(new)):  # charged per cache miss
                emb = self.model.get_text_features(**tok.to(self.device))
            for p, e in zip(new, F.normalize(emb, dim=-1)):
                self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts])

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) unit image embeddings (differentiable)."""
        pixels = self.processing(images.to(self.device, torch.float32))
        return F.normalize(self.model.get_image_features(pixel_values=pixels), dim=-1)

    def _from_cosine(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, images, prompts):
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)  # (B,)
        return self._from_cosine(cos)


class PickScore(_CLIPReward):
    """PickScore v1 (CLIP-H fine-tuned on Pick-a-Pic preferences): logit_scale * cos(image, prompt)."""

    name, version, higher_is_better, differentiable = "pickscore", "PickScore_v1", True, True
    repo_id, processor_repo = weights.PICKSCORE, weights.LAION_CLIP_H

    def _from_cosine(self, cos):
        return self.model.logit_scale.exp() * cos


class ClipScore(_CLIPReward):
    """CLIP score with openai/clip-vit-large-patch14: 100 * max(cos(image, prompt), 0), as torchmetrics."""

    name, version, higher_is_better, differentiable = "clip", "clip-vit-large-patch14", True, True
    repo_id = weights.CLIP_L14

    def _from_cosine(self, cos):
        return 100.0 * cos.clamp(min=0)
