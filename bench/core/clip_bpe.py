"""CLIP's real BPE tokenizer without a download, for every model here that has random weights at a real size.

OpenAI CLIP's byte-pair vocabulary (49,408 tokens) ships inside the `open_clip_torch` wheel (a dependency), as
`bpe_simple_vocab_16e6.txt.gz`. `write_clip_bpe` writes it in the hub's layout (`vocab.json`, `merges.txt`, the
files `CLIPTokenizer` reads) and `clip_tokenizer` builds `CLIPTokenizerFast` from them: the tokenizer Stable
Diffusion 1.5's text encoder (`sd15-lcm-random`, bench/models/sd15.py) and the CLIP rewards (PickScore, CLIP score;
the random-weight variants in rewards/random_weights.py) use. It lives in core/ because both the models layer and
rewards/ (which import only bench.api and bench/core/) need it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77  # CLIP's text context: max_position_embeddings of every CLIP text tower here


def write_clip_bpe(folder: Path) -> tuple[Path, Path]:
    """CLIP's BPE vocabulary and merges, from the copy inside open_clip, as the hub's `tokenizer/vocab.json` and
    `tokenizer/merges.txt` (the files `CLIPTokenizer` reads); returns their paths."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    rename = {"<start_of_text>": START, "<end_of_text>": END}  # open_clip's names of the specials -> OpenAI's
    vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
    vocab.write_text(json.dumps({rename.get(k, k): v for k, v in bpe.encoder.items()}))
    ranked = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    merges.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in ranked) + "\n")
    return vocab, merges


def clip_tokenizer(max_length: int = CONTEXT_LENGTH):
    """CLIP's real BPE tokenizer (`CLIPTokenizerFast`, 49,408 tokens, as `AutoTokenizer` loads SD's), no download.
    Ids are OpenAI CLIP's ("a photo of a cat" -> 49406 320 1125 539 320 2368 49407)."""
    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads its files once, at construction
        vocab, merges = write_clip_bpe(Path(tmp))
        return CLIPTokenizerFast(vocab_file=str(vocab), merges_file=str(merges), bos_token=START, eos_token=END,
                                 unk_token=END, pad_token=END, model_max_length=max_length)
