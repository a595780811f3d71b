"""HPS v2 and v2.1 (Human Preference Score; Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on HPD v2.

The `hpsv2` package cannot be used as is (its wheel lacks its BPE vocabulary, it pins pytest 7.2 and protobuf<4,
and its `score()` first downloads the LAION CLIP-H it then overwrites), so this builds the same architecture
with the maintained `open_clip_torch` and loads the official checkpoint `xswu/HPSv2` `HPS_v2_compressed.pt` /
`HPS_v2.1_compressed.pt` into it. The score is what `hpsv2.img_score.score` returns: the cosine of the unit
image and text features (no logit scale), with the package's validation transform (`light_augmentation=True`):
resize the longest side to 224 (bicubic, antialiased, on the float tensor, as torchvision does after `ToTensor`),
pad the short side with black, normalise with OpenAI's mean/std. `tests/test_real_rewards.py` checks equality
with the package's own `score()` on the same tiny random weights. Where the weights come from (`load`) is kept
apart from how the reward scores, so that `hpsv2-random` (rewards/random_weights.py) differs only in `load`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.api import ComputeMeter, Reward
from rewards import weights


def resize_max_pad(images: torch.Tensor, max_size: int, mean, std) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, max_size, max_size) normalised: hpsv2's `ResizeMaxSize` + `Normalize`.

    As the original, a longest side already equal to `max_size` is left untouched (and unpadded)."""
    h, w = images.shape[-2:]
    scale = max_size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        ph, pw = max_size - nh, max_size - nw
        # torchvision's pad order is (left, top, right, bottom) = (pw//2, ph//2, pw - pw//2, ph - ph//2).
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


class HPSv2(Reward):
    """HPS v2.0: open_clip ViT-H-14 fine-tuned on human preferences (xswu/HPSv2), cosine(image, prompt)."""

    name, version, higher_is_better, differentiable = "hpsv2", "HPS_v2_compressed", True, True
    checkpoint = "HPS_v2_compressed.pt"

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None, *,
                 arch: str = "ViT-H-14"):
        """`arch` is an open_clip model config name; only tests change it (to a tiny registered config)."""
        super().__init__(device, meter)
        import open_clip
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.arch = arch
        self.model = self.load().to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.image_size = self.model.visual.image_size
        self.image_size = self.image_size[0] if isinstance(self.image_size, (tuple, list)) else self.image_size
        self.mean, self.std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        self._text_cache: dict[str, torch.Tensor] = {}

    def load(self) -> torch.nn.Module:
        """Where the model comes from — here the official checkpoint in the local hub cache (`bench fetch NAME`),
        loaded into open_clip's `arch`. Everything else, scoring included, is shared with `hpsv2-random`
        (rewards/random_weights.py), which overrides only this."""
        import open_clip

        path = weights.hub_file(self.name, weights.HPS, self.checkpoint)
        model = open_clip.create_model(self.arch, pretrained=None, precision="fp32", device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])  # strict, as hpsv2's score() loads it
        return model

    def clear_prompt_cache(self) -> None:
        self._text_cache.clear()

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> (B, D) unit text features, once per distinct prompt."""
        new = sorted({p for p in prompts if p not in self._text_cache})
        if new:
            tokens = self.tokenizer(new).to(self.device)
            with self.prompt_forward(tuple(tokens.shape[1:]), len(new)):  # charged per cache miss
                feats = self.model.encode_text(tokens, normalize=True)
            self._text_cache.update(zip(new, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def score(self, images, prompts):
        pixels = resize_max_pad(images.to(self.device, torch.float32), self.image_size, self.mean, self.std)
        image_features = self.model.encode_image(pixels, normalize=True)  # (B, D)
        return (image_features * self.text_features(prompts)).sum(-1)


class HPSv21(HPSv2):
    """HPS v2.1: the same ViT-H-14 with the v2.1 checkpoint (xswu/HPSv2), cosine(image, prompt)."""

    name, version = "hpsv21", "HPS_v2.1_compressed"
    checkpoint = "HPS_v2.1_compressed.pt"
