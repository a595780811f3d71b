"""Prompt sets: a named set gives a training split and a held-out split (unseen combinations of its words).

Users may pass their own files instead: one prompt per line, `--set prompts.train=FILE` and
`--set prompts.heldout=FILE`.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

from bench.errors import BenchError, unknown_name
from bench.testbed.world_prompts import HELDOUT_PROMPTS as _TESTBED_HELDOUT
from bench.testbed.world_prompts import TRAIN_PROMPTS as _TESTBED_TRAIN

_COLOURS = ["red", "green", "blue", "yellow"]
_ANIMALS = ["cat", "dog", "horse", "bird"]
TINY_WORDS = ["a", "photo", "of"] + _COLOURS + _ANIMALS

# Held-out prompts are colour x animal pairs never seen in training (one per colour and per animal).
_TINY_HELDOUT = [f"a photo of a {c} {a}" for c, a in zip(_COLOURS, _ANIMALS)]
_TINY_TRAIN = [p for p in (f"a photo of a {c} {a}" for c, a in product(_COLOURS, _ANIMALS)) if p not in _TINY_HELDOUT]

# Real models. "animals" follows DDPO/RLCM's simple-animal prompts (our own list): held-out animals never
# appear in training. "styles" is in the spirit of HPDv2's four categories (anime, concept art, painting,
# photo); held-out prompts are unseen subject x style combinations.
_ANIMALS_TRAIN = ["cat", "dog", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "hamster", "deer",
                  "fox", "wolf", "bear", "lion", "tiger", "leopard", "zebra", "giraffe", "elephant", "monkey",
                  "gorilla", "kangaroo", "koala", "panda", "camel", "donkey", "squirrel", "hedgehog", "otter",
                  "seal", "dolphin", "whale", "shark", "turtle", "frog", "snake", "lizard", "crocodile", "owl",
                  "eagle", "parrot", "penguin", "duck", "chicken", "swan", "flamingo", "butterfly"]
_ANIMALS_HELDOUT = ["raccoon", "lynx", "moose", "hippopotamus", "rhinoceros", "sloth", "beaver", "badger",
                    "peacock", "pelican", "octopus", "bee"]
_STYLE_SUBJECTS = ["a lighthouse on a cliff", "an old bookshop", "a mountain village", "a robot gardener",
                   "a sailing ship in a storm", "a street market at night", "a fox in the snow", "a glass teapot"]
_STYLES = ["anime style", "concept art", "an oil painting", "a photograph"]
_STYLE_PAIRS = [f"{subject}, {style}" for subject in _STYLE_SUBJECTS for style in _STYLES]
_STYLE_HELDOUT = [f"{s}, {st}" for s, st in zip(_STYLE_SUBJECTS, _STYLES * 2)]

PROMPT_SETS: dict[str, dict[str, list[str]]] = {
    "tiny": {"train": _TINY_TRAIN, "heldout": _TINY_HELDOUT},
    "animals": {"train": [f"a photo of a {a}" for a in _ANIMALS_TRAIN],
                "heldout": [f"a photo of a {a}" for a in _ANIMALS_HELDOUT]},
    "styles": {"train": [p for p in _STYLE_PAIRS if p not in _STYLE_HELDOUT], "heldout": _STYLE_HELDOUT},
    # Coloured digits: 90 training combinations; 20 held-out (digit, ink, background) combinations never seen
    # in the generator's training or RL training (bench/testbed/world_prompts.py).
    "testbed": {"train": _TESTBED_TRAIN, "heldout": _TESTBED_HELDOUT},
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
