"""Prompt sets: a named set gives three disjoint splits (docs/protocol.md):

- `train`: the prompts RL training draws from;
- `validation`: held-out prompts for tuning and selection only (`bench sweep` evaluates here);
- `test`: held-out prompts that are reported, seen by no training and by no tuning.

Validation and test are unseen combinations of seen words (or unseen subjects), built the same way so that
selecting on validation predicts test. The benchmarks `drawbench`, `parti` and `hpdv2` come from the hub cache
(`bench fetch NAME`; splits in bench/prompts/hub.py). Users may pass their own files instead, one prompt per line:
`--set prompts.train=FILE`, `--set prompts.validation=FILE`, `--set prompts.test=FILE`.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

from bench.core.errors import BenchError, unknown_name
from bench.core.tiny import TINY_ANIMALS, TINY_COLOURS
from bench.prompts.animal_activities import build_splits as _animal_activity_splits
from bench.prompts.hub import HUB_PROMPT_SETS, load_hub_split
from bench.prompts.testbed import TEST_PROMPTS as _TESTBED_TEST
from bench.prompts.testbed import TRAIN_PROMPTS as _TESTBED_TRAIN
from bench.prompts.testbed import VALIDATION_PROMPTS as _TESTBED_VALIDATION

SPLITS = ("train", "validation", "test")

_COLOURS, _ANIMALS = TINY_COLOURS, TINY_ANIMALS  # the tiny models' vocabulary (bench/core/tiny.py)

# Validation and test prompts are colour x animal pairs never seen in training (two diagonals of the 4 x 4 grid:
# one per colour and per animal each).
_TINY_TEST = [f"a photo of a {c} {a}" for c, a in zip(_COLOURS, _ANIMALS)]
_TINY_VALIDATION = [f"a photo of a {c} {a}" for c, a in zip(_COLOURS, _ANIMALS[1:] + _ANIMALS[:1])]
_TINY_TRAIN = [p for p in (f"a photo of a {c} {a}" for c, a in product(_COLOURS, _ANIMALS))
               if p not in _TINY_TEST + _TINY_VALIDATION]

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
# Each subject is held out in two styles: one for test, the next for validation.
_STYLE_TEST = [f"{s}, {st}" for s, st in zip(_STYLE_SUBJECTS, _STYLES * 2)]
_STYLE_VALIDATION = [f"{s}, {st}" for s, st in zip(_STYLE_SUBJECTS, (_STYLES[1:] + _STYLES[:1]) * 2)]

PROMPT_SETS: dict[str, dict[str, list[str]]] = {
    "tiny": {"train": _TINY_TRAIN, "validation": _TINY_VALIDATION, "test": _TINY_TEST},
    # Held-out animals alternate between validation and test.
    "animals": {"train": [f"a photo of a {a}" for a in _ANIMALS_TRAIN],
                "validation": [f"a photo of a {a}" for a in _ANIMALS_HELDOUT[0::2]],
                "test": [f"a photo of a {a}" for a in _ANIMALS_HELDOUT[1::2]]},
    "styles": {"train": [p for p in _STYLE_PAIRS if p not in _STYLE_TEST + _STYLE_VALIDATION],
               "validation": _STYLE_VALIDATION, "test": _STYLE_TEST},
    # Our own 50 animals x 20 activities, held-out animals and activities (bench/prompts/animal_activities.py).
    "animal-activities": _animal_activity_splits(),
    # Coloured digits: 90 training combinations; 10 validation and 10 test (digit, ink, background) combinations,
    # never seen by the generator's training or RL training (bench/prompts/testbed.py).
    "testbed": {"train": _TESTBED_TRAIN, "validation": _TESTBED_VALIDATION, "test": _TESTBED_TEST},
}


def load_prompts(name_or_file: str, split: str) -> list[str]:
    """A registered set's split, or a text file with one prompt per line."""
    if split not in SPLITS:
        raise unknown_name("prompt split", split, list(SPLITS))
    if name_or_file in PROMPT_SETS:
        return list(PROMPT_SETS[name_or_file][split])
    if name_or_file in HUB_PROMPT_SETS:  # drawbench, parti, hpdv2: from the hub cache (bench fetch NAME)
        return load_hub_split(name_or_file, split)
    path = Path(name_or_file)
    if path.suffix or "/" in name_or_file:
        if not path.is_file():
            raise BenchError(f"prompt file not found: {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise BenchError(f"prompt file is empty: {path}")
        return prompts
    raise unknown_name("prompt set", name_or_file, [*PROMPT_SETS, *HUB_PROMPT_SETS])
