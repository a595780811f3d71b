"""Where the real rewards' weights come from: the local Hugging Face cache only, never the network.

`FETCH` lists, for every name `bench fetch NAME` accepts, the (hub repo id, file) pairs it downloads; a file of
`None` means the repo's model snapshot (configs, tokenizer files and one copy of the weights). `URL_FETCH` holds
the weight files that are not on the hub (clean-fid's Inception, the LAION aesthetic head), stored in the torch
hub cache.
Constructors call `hub_folder` / `hub_file` / `url_file`, which look in the cache only and raise a one-line
`BenchError` naming the `bench fetch` command when something is missing. `fetch(names)` is the downloader.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from bench.api import BenchError
from bench.core.hub_cache import cache_dir, local_snapshot, missing_weights

CLIP_L14 = "openai/clip-vit-large-patch14"
PICKSCORE = "yuvalkirstain/PickScore_v1"
# PickScore's processor (image preprocessing + tokenizer) comes from the CLIP-H it was fine-tuned from; only its
# small configuration files are needed, not its 4 GB of weights.
LAION_CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                        "merges.txt")  # what the slow CLIPTokenizer and CLIPImageProcessor read
HPS = "xswu/HPSv2"
IMAGEREWARD = "THUDM/ImageReward"
BERT = "bert-base-uncased"  # the name ImageReward's BLIP loads its tokenizer by (same cache entry as the package)
BERT_TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "config.json")

FETCH: dict[str, list[tuple[str, str | None]]] = {
    "pickscore": [(PICKSCORE, None)] + [(LAION_CLIP_H, f) for f in CLIP_PROCESSOR_FILES],
    "clip": [(CLIP_L14, None)],
    "hpsv2": [(HPS, "HPS_v2_compressed.pt")],
    "hpsv21": [(HPS, "HPS_v2.1_compressed.pt")],
    "imagereward": [(IMAGEREWARD, "ImageReward.pt"), (IMAGEREWARD, "med_config.json")]
    + [(BERT, f) for f in BERT_TOKENIZER_FILES],
    "aesthetic": [(CLIP_L14, None)],  # + its head below (URL_FETCH)
}

# clean-fid's TorchScript Inception (the one its "clean" mode uses); the URL is clean-fid's own constant.
INCEPTION_FILE = "inception-2015-12-05.pt"
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
URL_FETCH: dict[str, list[tuple[str, str]]] = {
    "inception": [("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
                   INCEPTION_FILE)],
    # The LAION aesthetic head exactly as DDPO ships it (the improved-aesthetic-predictor repository's file).
    "aesthetic": [("https://github.com/kvablack/ddpo-pytorch/raw/main/ddpo_pytorch/assets/"
                   "sac%2Blogos%2Bava1-l14-linearMSE.pth", AESTHETIC_HEAD_FILE)],
}


def hub_folder(reward: str, repo_id: str) -> Path:
    """The cached snapshot folder of `repo_id` (config.json, weights, tokenizer files), or a BenchError."""
    return local_snapshot(repo_id, reward)


def hub_file(reward: str, repo_id: str, filename: str) -> Path:
    """One cached file of `repo_id`, or a BenchError."""
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        raise missing_weights(reward, f"{repo_id}/{filename}") from e


def hub_files(reward: str, repo_id: str, filenames: tuple[str, ...]) -> Path:
    """Several cached files of one repo; returns the snapshot folder holding them all."""
    paths = [hub_file(reward, repo_id, f) for f in filenames]
    return paths[0].parent


def url_cache_dir() -> Path:
    """Non-hub weights live with torch's own downloads: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_file(name: str) -> Path:
    (_, filename), = URL_FETCH[name]
    path = url_cache_dir() / filename
    if not path.is_file():
        raise BenchError(f"weights for '{name}' ({path}) are not in the torch hub cache; run: bench fetch {name}")
    return path


def _model_patterns(repo_id: str) -> list[str]:
    """Configs and tokenizer files, plus one copy of the weights: safetensors if the repo has them, else the
    PyTorch pickle (hub repos often also hold TensorFlow and Flax copies nobody here needs)."""
    from huggingface_hub import list_repo_files

    files = list_repo_files(repo_id)
    weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
    return ["*.json", "*.txt", weights]


def fetch(names: list[str]) -> list[Path]:
    """Download what each name needs into the caches the constructors read (needs the network)."""
    unknown = [n for n in names if n not in FETCH and n not in URL_FETCH]
    if unknown:
        raise BenchError(f"nothing to fetch for {', '.join(unknown)}; known: {', '.join(sorted({*FETCH, *URL_FETCH}))}")
    got: list[Path] = []
    for name in names:
        for repo_id, filename in FETCH.get(name, []):
            if filename is None:
                got.append(Path(snapshot_download(repo_id, cache_dir=cache_dir(),
                                                    allow_patterns=_model_patterns(repo_id))))
            else:
                got.append(Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir())))
        for url, filename in URL_FETCH.get(name, []):
            dest = url_cache_dir() / filename
            if not dest.is_file():
                os.makedirs(dest.parent, exist_ok=True)
                torch.hub.download_url_to_file(url, str(dest))
            got.append(dest)
    return got
