"""The real rewards at their real size with random weights, built offline: for measuring cost, never for results.

`sd15-lcm-random` (bench/models/sd15.py) gives a GPU the real policy's size without a download; these give it the
real rewards' size, so that a training step pays what it pays with the real reward — for ROCM and every
first-order method a ViT forward and backward per image, for the policy-gradient methods a forward:

    bench perf --model sd15-lcm-random --reward pickscore-random --device cuda --set model.dtype=bfloat16
    bench run  --model sd15-lcm-random --rewards pickscore-random --methods rocm-kl --budget 10m --device cuda

| name | the real reward's network, built from | parameters |
|---|---|---|
| `pickscore-random` | CLIP ViT-H/14, laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config (PickScore_v1's) | 986,109,441 |
| `clip-random` | CLIP ViT-L/14, openai/clip-vit-large-patch14's config | 427,616,513 |
| `hpsv2-random` | open_clip's own "ViT-H-14" config, as HPS v2 (and v2.1: the same network) builds it | 986,109,441 |
| `imagereward-random` | BLIP ViT-L/16 + its med_config BERT (cross-attending to the image) + MLP(768) | 446,206,689 |
| `aesthetic-random` | CLIP ViT-L/14 + the 768-1024-128-64-16-1 head | 428,544,482 |

(tests/test_random_rewards.py counts them on the meta device against the original implementations and open_clip's
published model profile.) Each class is the real reward's class with only `load` — where the weights come from —
replaced: the preprocessing in torch, the text tower and its per-prompt cache, the tokenizer's padding, the score
and every meter charge run the same lines as the real reward's. Weights are drawn from `SEED` by each library's
own initialisation, on the reward's device (on a GPU without a CPU copy to move; `device="meta"` builds them
without memory), inside a forked RNG so that the run's random streams are untouched. Tokenizers are the
real ones where they ship with a dependency: CLIP's BPE from open_clip's copy (bench/core/clip_bpe.py; open_clip's
own tokenizer for HPSv2, as the real reward). BLIP's `bert-base-uncased` WordPiece vocabulary ships with nothing this
project installs, and no third-party data file is committed here: `imagereward-random` tokenizes with a WordPiece
vocabulary of bert-base-uncased's size and special-token ids, made from CLIP's BPE words (`bert_like_vocab`). The
cost is the same — ImageReward pads every prompt to 35 tokens and its embedding table has the same 30,524 rows —
only which id a word gets differs.

Their scores are noise: `bench ls` and every result row say "random" (name and version). The real HPS v2.1 has
v2.0's network, so `hpsv2-random` stands for both.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from transformers import CLIPConfig, CLIPModel

from bench.core.clip_bpe import clip_tokenizer
from rewards.aesthetic import Aesthetic
from rewards.clip_models import ClipProcessing, ClipScore, PickScore
from rewards.hpsv2 import HPSv2
from rewards.imagereward import ImageReward, ImageRewardNet, ScoreMLP, blip_tokenizer

SEED = 1234  # the same weights on every run (as a downloaded reward's are); sd15-lcm-random's seed
VERSION = f"random-seed{SEED}"  # every random reward's version starts with this

# CLIP ViT-H/14 as laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config.json describes it (PickScore_v1 is its fine-tune,
# with the same config). Keys left at the transformers default are omitted; the legacy pad/bos/eos ids only choose
# which token the text tower pools, not any shape.
CLIP_H14: dict[str, Any] = {
    "projection_dim": 1024,
    "text_config": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                    "layer_norm_eps": 1e-5, "projection_dim": 1024, "pad_token_id": 1, "bos_token_id": 0,
                    "eos_token_id": 2},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "hidden_act": "gelu",
                      "layer_norm_eps": 1e-5, "projection_dim": 1024},
}
# CLIP ViT-L/14 as openai/clip-vit-large-patch14's config.json describes it (the CLIP score's and the aesthetic
# predictor's CLIP; its text tower is Stable Diffusion 1.5's text encoder).
CLIP_L14: dict[str, Any] = {
    "projection_dim": 768,
    "text_config": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-5, "projection_dim": 768, "pad_token_id": 1, "bos_token_id": 0,
                    "eos_token_id": 2},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "hidden_act": "quick_gelu",
                      "layer_norm_eps": 1e-5, "projection_dim": 768},
}
# Both CLIP repos' preprocessor_config.json: shortest side to 224 (bicubic), centre crop 224, OpenAI's mean/std.
CLIP_PROCESSOR: dict[str, Any] = {"size": 224, "crop_size": 224, "resample": 3, "image_mean": list(OPENAI_DATASET_MEAN),
                                  "image_std": list(OPENAI_DATASET_STD)}

# ImageReward: BLIP's `create_vit("large", 224)` (ViT-L/16, 1024 wide, 24 blocks, MLP ratio 4) ...
BLIP_VIT_L: dict[str, Any] = {"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24, "mlp_ratio": 4.0}
# ... THUDM/ImageReward's med_config.json (BLIP's configs/med_config.json: bert-base with cross-attention; its
# `encoder_width` is replaced by the ViT's width when the text encoder is built) ...
MED_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 768,
    "add_cross_attention": True,
}
# ... and the MLP head on the 768-d [CLS] state; the LAION aesthetic head on CLIP-L's 768-d embedding has the same
# shapes. (out, in) per Linear at its nn.Sequential index (dropouts between).
HEAD_768: dict[str, tuple[int, int]] = {"0": (1024, 768), "2": (128, 1024), "4": (64, 128), "6": (16, 64),
                                        "7": (1, 16)}
BERT_SIZE = 30_522  # bert-base-uncased's WordPiece vocabulary; BLIP adds [DEC] and [ENC]: med_config's 30,524
BERT_SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}  # bert-base-uncased's ids


def bert_like_vocab(folder: Path) -> Path:
    """A WordPiece vocabulary of bert-base-uncased's size and special ids in `folder` (vocab.txt): the specials at
    their ids, [unusedK] fillers below 1000 as BERT has, then single characters, then CLIP's BPE words (whole words
    as they are, word pieces as ##pieces) until BERT_SIZE. Returns the folder (BertTokenizer reads it)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokens = [BERT_SPECIALS.get(i, f"[unused{i}]") for i in range(104)] + [f"[unused{i}]" for i in range(104, 999)]
    seen = set(tokens)
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    words = []
    for piece in SimpleTokenizer().encoder:
        word = piece[:-4] if piece.endswith("</w>") else "##" + piece
        if word.replace("##", "").isascii() and word.replace("##", "").isalnum():
            words.append(word.lower())
    for token in [*chars, *(f"##{c}" for c in chars), *words]:
        if token not in seen:
            seen.add(token)
            tokens.append(token)
        if len(tokens) == BERT_SIZE:
            break
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder


@contextmanager
def random_init(device: torch.device) -> Iterator[None]:
    """Modules built inside draw their weights from SEED, on `device`; the caller's RNG states are restored after
    (the CPU's always, the device's own where it is a CUDA GPU)."""
    gpu = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpu), torch.device(device):
        torch.default_generator.manual_seed(SEED)
        for index in gpu:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(SEED)
        yield


def random_clip(config: dict[str, Any], device: torch.device) -> CLIPModel:
    """A `CLIPModel` of `config` with random weights, drawn on `device`."""
    with random_init(device):
        return CLIPModel(CLIPConfig(**config))


class PickScoreRandom(PickScore):
    """PickScore's CLIP ViT-H/14, random weights, no download: cost measurement only, never results."""

    name, version = "pickscore-random", f"{VERSION}:{PickScore.version}-architecture"

    def load(self):
        return random_clip(CLIP_H14, self.device), clip_tokenizer(), ClipProcessing(CLIP_PROCESSOR, "CLIP_PROCESSOR")


class ClipScoreRandom(ClipScore):
    """The CLIP score's CLIP ViT-L/14, random weights, no download: cost measurement only, never results."""

    name, version = "clip-random", f"{VERSION}:{ClipScore.version}-architecture"

    def load(self):
        return random_clip(CLIP_L14, self.device), clip_tokenizer(), ClipProcessing(CLIP_PROCESSOR, "CLIP_PROCESSOR")


class HPSv2Random(HPSv2):
    """HPSv2's open_clip ViT-H-14, random weights, no download: cost measurement only, never results."""

    name, version = "hpsv2-random", f"{VERSION}:{HPSv2.version}-architecture"

    def load(self):
        import open_clip

        with random_init(self.device):
            return open_clip.create_model(self.arch, pretrained=None, precision="fp32", device=self.device)


class ImageRewardRandom(ImageReward):
    """ImageReward's BLIP ViT-L + BERT + MLP, random weights, no download: cost measurement only, never results."""

    name, version = "imagereward-random", f"{VERSION}:{ImageReward.version}-architecture"

    def load(self):
        import tempfile

        with random_init(self.device):
            model = ImageRewardNet(MED_CONFIG, BLIP_VIT_L, HEAD_768)
        with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads its vocabulary once, at construction
            return model, blip_tokenizer(bert_like_vocab(Path(tmp)))


class AestheticRandom(Aesthetic):
    """LAION aesthetic predictor (CLIP-L + head), random weights, no download: cost measurement only, never results."""

    name, version = "aesthetic-random", f"{VERSION}:{Aesthetic.version}-architecture"

    def load(self):
        with random_init(self.device):
            head = ScoreMLP(HEAD_768)
        return random_clip(CLIP_L14, self.device), ClipProcessing(CLIP_PROCESSOR, "CLIP_PROCESSOR"), head
