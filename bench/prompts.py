"""Prompt sets: a named set gives a training split and a held-out split (unseen combinations of its words).

Users may pass their own files instead: one prompt per line, `--set prompts.train=FILE` and
`--set prompts.heldout=FILE`.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

from bench.errors import BenchError, unknown_name

_COLOURS = ["red", "green", "blue", "yellow"]
_ANIMALS = ["cat", "dog", "horse", "bird"]
TINY_WORDS = ["a", "photo", "of"] + _COLOURS + _ANIMALS

# Held-out prompts are colour x animal pairs never seen in training (one per colour and per animal).
_TINY_HELDOUT = [f"a photo of a {c} {a}" for c, a in zip(_COLOURS, _ANIMALS)]
_TINY_TRAIN = [p for p in (f"a photo of a {c} {a}" for c, a in product(_COLOURS, _ANIMALS)) if p not in _TINY_HELDOUT]

PROMPT_SETS: dict[str, dict[str, list[str]]] = {
    "tiny": {"train": _TINY_TRAIN, "heldout": _TINY_HELDOUT},
}


def load_prompts(name_or_file: str, split: str) -> list[str]:
    """A registered set's split, or a text file with one prompt per line."""
    if name_or_file in PROMPT_SETS:
        return list(PROMPT_SETS[name_or_file][split])
    path = Path(name_or_file)
    if path.suffix or "/" in name_or_file:
        if not path.is_file():
            raise BenchError(f"prompt file not found: {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise BenchError(f"prompt file is empty: {path}")
        return prompts
    raise unknown_name("prompt set", name_or_file, list(PROMPT_SETS))
