"""ImageReward v1.0 (Xu et al. 2023, `THUDM/ImageReward`): BLIP's ViT-L and its image-grounded BERT, then an MLP.

score = (mlp(text_encoder(prompt | ViT(image))[:, 0]) - mean) / std, exactly as `ImageReward.score`.

The `image-reward` 1.5 package is not imported: its `__init__` imports OpenAI `clip` (needs setuptools<81) and its
ReFL training script (needs `datasets`), its ViT needs `fairscale`, and its `ImageReward` class hard-codes the
ViT-L size. So the same network is built here with the same parameter names, and sizes read from the checkpoint
and `med_config.json`: the ViT is timm's `VisionTransformer` (BLIP's ViT is timm's, with identical parameter
names), the text encoder is BLIP's `med.py` BERT in its "multimodal" mode (self-attention, cross-attention to the
image tokens, feed-forward; written out below, ~60 lines, because transformers' `BertModel` has no cross-attention
from a different width). Preprocessing is ImageReward's torchvision transform done in torch (`clip_preprocess`),
the tokenizer is BLIP's `bert-base-uncased` with its two added tokens, padded to 35. `tests/test_real_rewards.py`
checks equality with the package's own `ImageReward.score` on the same tiny random weights. Where the weights
come from (`load`) is kept apart from how the reward scores, so that `imagereward-random`
(rewards/random_weights.py: BLIP ViT-L + its BERT + the MLP with random weights) differs only in `load`.
"""

from __future__ import annotations

import json
import math
import re

import torch
import torch.nn as nn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # = ImageReward's _transform Normalize
from transformers import BertTokenizer
from transformers.activations import ACT2FN

from bench.api import BenchError, ComputeMeter, Reward
from rewards import weights
from rewards.clip_models import clip_preprocess

# ImageReward.py sets these on the model (`self.mean`, `self.std`): the reward's mean and std on its training
# set, not stored in the checkpoint.
SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
MAX_PROMPT_TOKENS = 35  # ImageReward.score: tokenizer(..., padding='max_length', truncation=True, max_length=35)
VIT_HEAD_DIM = 64  # BLIP's ViT-B (768 wide, 12 heads) and ViT-L (1024 wide, 16 heads) both use 64 per head


class _DenseNorm(nn.Module):
    """med.py's BertSelfOutput / BertOutput: LayerNorm(dense(x) + residual)."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, d_out), nn.LayerNorm(d_out, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _QKV(nn.Module):
    def __init__(self, hidden: int, kv_width: int, heads: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key, self.value = nn.Linear(kv_width, hidden), nn.Linear(kv_width, hidden)
        self.heads = heads

    def forward(self, x, kv, mask):
        """x (B, L, H) attends to kv (B, S, W); mask (B, 1, 1, S) additive -> (B, L, H)."""
        b, n, h = x.shape
        split = lambda t: t.view(b, -1, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731 (B, heads, ., d)
        q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(h // self.heads) + mask
        return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h)


class _Attention(nn.Module):
    def __init__(self, hidden: int, kv_width: int, heads: int, eps: float):
        super().__init__()
        self.self, self.output = _QKV(hidden, kv_width, heads), _DenseNorm(hidden, hidden, eps)

    def forward(self, x, kv, mask):
        return self.output(self.self(x, kv, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.dense, self.act = nn.Linear(hidden, inner), ACT2FN[act]

    def forward(self, x):
        return self.act(self.dense(x))


class _Layer(nn.Module):
    """med.py BertLayer in mode='multimodal': self-attention, cross-attention to the image, feed-forward."""

    def __init__(self, cfg: dict, image_width: int):
        super().__init__()
        h, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
        self.attention = _Attention(h, h, heads, eps)
        self.crossattention = _Attention(h, image_width, heads, eps)
        self.intermediate = _Intermediate(h, cfg["intermediate_size"], cfg["hidden_act"])
        self.output = _DenseNorm(cfg["intermediate_size"], h, eps)

    def forward(self, x, text_mask, image, image_mask):
        x = self.crossattention(self.attention(x, x, text_mask), image, image_mask)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (BLIP's BERT has no token-type embeddings)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], padding_idx=cfg.get("pad_token_id"))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])


class BlipTextEncoder(nn.Module):
    """BLIP's image-grounded text encoder; returns the (B, L, hidden) last hidden state."""

    def __init__(self, cfg: dict, image_width: int):
        super().__init__()
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise BenchError(f"ImageReward med_config: unsupported position_embedding_type "
                             f"{cfg['position_embedding_type']!r}")
        self.embeddings = _Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(cfg, image_width) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, ids, attention_mask, image_embeds):
        # med.py's extended masks: (1 - mask) * -10000 added to the scores; every image token is attended to.
        text_mask = (1.0 - attention_mask[:, None, None, :].to(image_embeds.dtype)) * -10000.0  # (B, 1, 1, L)
        image_mask = torch.zeros(image_embeds.shape[0], 1, 1, image_embeds.shape[1], dtype=image_embeds.dtype,
                                 device=image_embeds.device)
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, text_mask, image_embeds, image_mask)
        return x


class ScoreMLP(nn.Module):
    """ImageReward's MLP head: Linear layers at their Sequential indices (dropouts between; no activations)."""

    def __init__(self, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        self.layers = nn.ModuleDict({i: nn.Linear(d_in, d_out) for i, (d_out, d_in) in shapes.items()})

    def forward(self, x):
        for i in sorted(self.layers, key=int):
            x = self.layers[i](x)
        return x


def vit_config_from_state(state: dict[str, torch.Tensor]) -> dict:
    """BLIP ViT sizes read from its weights: image size, patch, width, depth, MLP ratio (`blip_vit`'s arguments)."""
    width = state["pos_embed"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    side = math.isqrt(state["pos_embed"].shape[1] - 1)  # pos_embed: (1, 1 + (img/patch)^2, width)
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    return {"img_size": side * patch, "patch_size": patch, "embed_dim": width, "depth": depth,
            "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / width}


def blip_vit(img_size: int, patch_size: int, embed_dim: int, depth: int, mlp_ratio: float) -> nn.Module:
    """BLIP's ViT as timm's `VisionTransformer` (the same parameter names), 64-wide heads, CLS token, no head."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=embed_dim // VIT_HEAD_DIM, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0,
                             global_pool="", class_token=True)


class ImageRewardNet(nn.Module):
    """The module tree of `ImageReward.ImageReward` that scoring uses (parameter names identical)."""

    def __init__(self, med_config: dict, vit: dict, mlp: dict[str, tuple[int, int]]):
        """`vit`: `blip_vit`'s arguments; `mlp`: ScoreMLP's (out, in) shape per Sequential index."""
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = blip_vit(**vit)
        self.blip.text_encoder = BlipTextEncoder(med_config, image_width=vit["embed_dim"])
        self.mlp = ScoreMLP(mlp)

    @classmethod
    def sized_from(cls, med_config: dict, state: dict[str, torch.Tensor]) -> "ImageRewardNet":
        """The network at the sizes a checkpoint's weights have (the weights themselves still to be loaded)."""
        sub = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        mlp = {k.split(".")[0]: tuple(v.shape) for k, v in sub("mlp.layers.").items() if k.endswith(".weight")}
        return cls(med_config, vit_config_from_state(sub("blip.visual_encoder.")), mlp)

    def forward(self, pixels, ids, attention_mask):
        """(B, 3, S, S) normalised, (B, L) tokens -> (B,) raw MLP output."""
        image_embeds = self.blip.visual_encoder.forward_features(pixels)  # (B, 1 + patches, width)
        hidden = self.blip.text_encoder(ids, attention_mask, image_embeds)
        return self.mlp(hidden[:, 0].float())[:, 0]


def blip_tokenizer(folder) -> BertTokenizer:
    """BLIP's `init_tokenizer`, from a local bert-base-uncased folder."""
    tok = BertTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageReward(Reward):
    """ImageReward v1.0 (THUDM): BLIP ViT-L + image-grounded BERT + MLP, standardised human preference score."""

    name, version, higher_is_better, differentiable = "imagereward", "ImageReward-v1.0", True, True

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        model, self.tokenizer = self.load()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.image_size = self.model.blip.visual_encoder.patch_embed.img_size[0]
        self._tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load(self) -> tuple[ImageRewardNet, BertTokenizer]:
        """Where the model comes from — here `THUDM/ImageReward` and `bert-base-uncased`'s tokenizer in the local
        hub cache (`bench fetch imagereward`). Everything else, scoring included, is shared with
        `imagereward-random` (rewards/random_weights.py), which overrides only this."""
        ckpt = weights.hub_file(self.name, weights.IMAGEREWARD, "ImageReward.pt")
        med_config = json.loads(weights.hub_file(self.name, weights.IMAGEREWARD, "med_config.json").read_text())
        bert_dir = weights.hub_files(self.name, weights.BERT, weights.BERT_TOKENIZER_FILES)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model = ImageRewardNet.sized_from(med_config, state)
        # The package loads with strict=False; here only keys scoring never uses may be left over
        # (BLIP's contrastive projections, the position-id buffer), and nothing may be missing.
        missing, unexpected = model.load_state_dict(state, strict=False)
        unused = [k for k in unexpected if not re.match(r"blip\.(vision_proj|text_proj)\.|.*position_ids$", k)]
        if missing or unused:
            raise BenchError(f"{ckpt} does not match ImageReward: missing {missing[:5]}, unexpected {unused[:5]}")
        return model, blip_tokenizer(bert_dir)

    def tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (B, 35) ids and attention mask, tokenised once per distinct prompt."""
        for p in {p for p in prompts if p not in self._tokens}:
            t = self.tokenizer(p, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS,
                               return_tensors="pt")
            self._tokens[p] = (t.input_ids[0], t.attention_mask[0])
        ids, mask = zip(*(self._tokens[p] for p in prompts))
        return torch.stack(ids).to(self.device), torch.stack(mask).to(self.device)

    def score(self, images, prompts):
        pixels = clip_preprocess(images.to(self.device, torch.float32), self.image_size,
                                 (self.image_size, self.image_size), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD,
                                 crop_rounding="round")
        raw = self.model(pixels, *self.tokens(prompts))
        return (raw - SCORE_MEAN) / SCORE_STD
