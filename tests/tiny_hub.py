"""Tiny random stand-ins of the real reward models, written in the Hugging Face cache layout for offline tests.

Each `put_*` builds the same classes the real weights use (transformers `CLIPModel`, an open_clip CLIP from a
tiny registered config, ImageReward's module tree) at a toy size, and writes them where the real constructors
look: `<cache>/models--org--name/snapshots/<commit>/<file>` with `refs/main` naming the commit, so
`huggingface_hub`'s `local_files_only` lookups resolve them exactly as they would resolve downloaded weights.
Tokenizers are the real classes with real vocabularies where one ships in a package (CLIP's BPE is inside
open_clip), and a tiny WordPiece vocabulary for BERT.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMMIT = "0" * 40
CLIP_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77)
CLIP_VISION = dict(image_size=224, patch_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2)
HPS_TINY = {"embed_dim": 16,
            "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
BERT_WORDS = ["a", "an", "the", "of", "on", "in", "with", "photo", "painting", "cat", "dog", "red", "blue", "sky",
              "sitting", "mat", "house", "tree", "##s", "##ing"]


def snapshot_dir(cache: Path, repo_id: str, repo_type: str = "model") -> Path:
    """Create (if needed) and return the snapshot folder of `repo_id` (a "model" or "dataset" repo) in the hub
    cache at `cache`."""
    repo = Path(cache) / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of CLIP's BPE (from open_clip's copy), loaded by `CLIPTokenizer.from_pretrained`."""
    from bench.core.clip_bpe import write_clip_bpe

    write_clip_bpe(folder)
    end = "<|endoftext|>"
    special = {"bos_token": "<|startoftext|>", "eos_token": end, "unk_token": end, "pad_token": end}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                              "model_max_length": 77, **special}))


def write_clip_processor(folder: Path) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    write_clip_tokenizer(folder)


def tiny_clip_model(seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16)).eval()


def put_pickscore(cache: Path) -> Path:
    """Tiny PickScore_v1 (model only) + the LAION CLIP-H processor files; returns the model folder."""
    from rewards import weights

    model_dir = snapshot_dir(cache, weights.PICKSCORE)
    tiny_clip_model(1).save_pretrained(model_dir)
    write_clip_processor(snapshot_dir(cache, weights.LAION_CLIP_H))
    return model_dir


def put_clip(cache: Path) -> Path:
    from rewards import weights

    folder = snapshot_dir(cache, weights.CLIP_L14)
    tiny_clip_model(2).save_pretrained(folder)
    write_clip_processor(folder)
    return folder


def register_hps_tiny(tmp: Path, add_model_config=None) -> str:
    """Register the tiny open_clip config (name 'hps-tiny') with open_clip or another copy of it."""
    if add_model_config is None:
        from open_clip import add_model_config
    path = Path(tmp) / "hps-tiny.json"
    path.write_text(json.dumps(HPS_TINY))
    add_model_config(path)
    return "hps-tiny"


def put_hps(cache: Path, tmp: Path, filename: str = "HPS_v2_compressed.pt", seed: int = 3) -> Path:
    """A tiny random open_clip CLIP saved as hpsv2's checkpoint ({'state_dict': ...})."""
    import open_clip

    from rewards import weights

    arch = register_hps_tiny(tmp)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    path = snapshot_dir(cache, weights.HPS) / filename
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def med_config(vocab_size: int, encoder_width: int) -> dict:
    """A tiny BLIP med_config.json (BertConfig fields as THUDM/ImageReward's)."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 2,
            "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size,
            "encoder_width": encoder_width, "add_cross_attention": True}


def put_bert_tokenizer(cache: Path) -> Path:
    """A `BertTokenizer` folder with a tiny lower-case WordPiece vocabulary, as `bert-base-uncased`."""
    from rewards import weights

    folder = snapshot_dir(cache, weights.BERT)
    special = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + BERT_WORDS + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(vocab)}))
    return folder


def tiny_imagereward_state(vocab_size: int, seed: int = 4) -> tuple[dict, dict]:
    """(med_config, state_dict) of a tiny ImageReward: ViT 64 wide (one 64-d head), BERT 32 wide, original MLP."""
    from timm.models.vision_transformer import VisionTransformer

    from rewards.imagereward import BlipTextEncoder, ScoreMLP

    torch.manual_seed(seed)
    cfg = med_config(vocab_size + 2, 64)  # + [DEC] and [ENC], as BLIP's tokenizer adds
    vit = VisionTransformer(img_size=224, patch_size=32, embed_dim=64, depth=1, num_heads=1, num_classes=0,
                            global_pool="")
    text = BlipTextEncoder(cfg, image_width=64)
    # ImageReward's MLP(input_size): Linear(in, 1024), Linear(1024, 128), Linear(128, 64), Linear(64, 16),
    # Linear(16, 1) at Sequential indices 0, 2, 4, 6, 7.
    mlp = ScoreMLP({"0": (1024, 32), "2": (128, 1024), "4": (64, 128), "6": (16, 64), "7": (1, 16)})
    for p in mlp.parameters():  # ImageReward's own init (std 1/(in+1)) makes outputs ~0; make them visible
        torch.nn.init.normal_(p, std=0.2)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"mlp.layers.{k}": v for k, v in mlp.layers.state_dict().items()}
    # Also in the real checkpoint, unused for scoring: BLIP's contrastive projections and med.py's position ids.
    state |= {"blip.vision_proj.weight": torch.randn(16, 64), "blip.text_proj.weight": torch.randn(16, 32),
              "blip.text_encoder.embeddings.position_ids": torch.arange(cfg["max_position_embeddings"])[None]}
    return cfg, state


def put_imagereward(cache: Path) -> Path:
    from rewards import weights

    bert = put_bert_tokenizer(cache)
    n_vocab = len((bert / "vocab.txt").read_text().split())
    cfg, state = tiny_imagereward_state(n_vocab)
    folder = snapshot_dir(cache, weights.IMAGEREWARD)
    (folder / "med_config.json").write_text(json.dumps(cfg))
    torch.save(state, folder / "ImageReward.pt")
    return folder


def put_aesthetic(cache: Path) -> Path:
    """Tiny CLIP ViT-L/14 stand-in (projection 16) in the hub cache + an aesthetic head of the original's layer
    shapes with a 16-d input, saved as DDPO's state dict in the torch hub cache; returns the head file."""
    from rewards import weights

    put_clip(cache)
    torch.manual_seed(6)
    dims = [16, 1024, 128, 64, 16, 1]
    layers = {i: torch.nn.Linear(d_in, d_out) for i, d_in, d_out in zip(("0", "2", "4", "6", "7"), dims, dims[1:])}
    state = {f"layers.{i}.{k}": torch.randn_like(v) * 0.2 for i, layer in layers.items()  # visible, not ~0, scores
             for k, v in layer.state_dict().items()}
    path = weights.url_cache_dir() / weights.AESTHETIC_HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
