"""The LAION aesthetic predictor v2 (Schuhmann, "improved-aesthetic-predictor"), DDPO's and RLCM's headline reward.

score = MLP(e / |e|), e = CLIP ViT-L/14's projected image embedding (`openai/clip-vit-large-patch14`,
`CLIPModel.get_image_features`), the MLP the "sac+logos+ava1-l14-linearMSE" head: Linear(768, 1024), Linear(1024,
128), Linear(128, 64), Linear(64, 16), Linear(16, 1) with dropouts between and no activations (so, in eval mode,
one affine map of the unit embedding), trained with MSE on 1-10 ratings of SAC, LAION-Logos and AVA. This is how
DDPO's `aesthetic_scorer.py` and RLCM's `rewards/aesthetic.py` score: the `CLIPProcessor` of the same CLIP repo on
uint8 images (resize the shortest side to 224, bicubic; centre crop 224; OpenAI mean/std), then the above.
Here the processor's steps run in torch (`clip_preprocess`, the float image resized with the same antialiased
bicubic kernel), so the reward is differentiable and first-order methods can train on it.

Weights: the CLIP snapshot from the hub (the same cache entry as the `clip` reward) and the head file DDPO ships
(ddpo_pytorch/assets, identical to the improved-aesthetic-predictor repository's), both fetched by
`bench fetch aesthetic`. `tests/test_aesthetic.py` checks the score against DDPO's recipe on tiny random weights.
Where the weights come from (`load`) is kept apart from how the reward scores, so that `aesthetic-random`
(rewards/random_weights.py) differs only in `load`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from bench.api import BenchError, ComputeMeter, Reward
from rewards import weights
from rewards.clip_models import ClipProcessing
from rewards.imagereward import ScoreMLP  # the same Sequential-indexed Linear stack, dropouts being no-ops

HEAD_LAYERS = ("0", "2", "4", "6", "7")  # nn.Sequential indices of the five Linear layers in the head file


class Aesthetic(Reward):
    """LAION aesthetic predictor v2 (sac+logos+ava1-l14-linearMSE on unit CLIP ViT-L/14 embeddings), as DDPO/RLCM."""

    name, version, higher_is_better, differentiable = "aesthetic", "sac+logos+ava1-l14-linearMSE", True, True

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        clip, self.processing, mlp = self.load()
        self.clip = clip.to(self.device).eval().requires_grad_(False)
        self.mlp = mlp.to(self.device).eval().requires_grad_(False)

    def load(self) -> tuple[CLIPModel, ClipProcessing, ScoreMLP]:
        """Where the model comes from — here the CLIP snapshot in the local hub cache and the head file in the
        torch hub cache (`bench fetch aesthetic`): (CLIP, preprocessing, head). Everything else, scoring included,
        is shared with `aesthetic-random` (rewards/random_weights.py), which overrides only this."""
        model_dir = weights.hub_folder(self.name, weights.CLIP_L14)
        head_file = weights.url_file(self.name)
        clip = CLIPModel.from_pretrained(model_dir)
        state = torch.load(head_file, map_location="cpu", weights_only=True)
        names = sorted({k.rsplit(".", 1)[0] for k in state})
        if names != [f"layers.{i}" for i in HEAD_LAYERS]:
            raise BenchError(f"{head_file}: not an aesthetic-predictor head (layers {names}); "
                             f"run: bench fetch aesthetic")
        mlp = ScoreMLP({i: tuple(state[f"layers.{i}.weight"].shape) for i in HEAD_LAYERS})
        mlp.load_state_dict(state)  # strict, as DDPO's MLP loads it
        if mlp.layers["0"].in_features != clip.config.projection_dim:
            raise BenchError(f"{head_file}: head takes {mlp.layers['0'].in_features}-d embeddings, the CLIP "
                             f"in the cache gives {clip.config.projection_dim}-d")
        return clip, ClipProcessing.from_file(model_dir / "preprocessor_config.json"), mlp

    def score_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) CLIP-normalised pixels -> (B,) scores (the original's path after its processor)."""
        embed = F.normalize(self.clip.get_image_features(pixel_values=pixel_values), dim=-1)  # (B, 768) unit
        return self.mlp(embed)[:, 0]

    def score(self, images, prompts):
        return self.score_pixels(self.processing(images.to(self.device, torch.float32)))
