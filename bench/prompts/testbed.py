"""The testbed world's grammar and splits, torch-free (imported by `bench.prompts.sets` at no cost).

A prompt names three attributes: "a <ink> <digit> on a <background> background", e.g.
"a red seven on a blue background". Images are scikit-learn's 1,797 real handwritten 8x8 digits, upscaled
to 16x16 and coloured: ink colour where the stroke is, background colour elsewhere (see `world.py`).

Splits (fixed, documented; every number below is a constant of the world, not a tunable):
- **combinations**: 10 digits x 4 inks x 3 backgrounds, minus the pair white-on-white (no contrast) = 110.
- **held-out combinations** (`HELDOUT_COMBOS`, 20): two per digit, chosen so every colour pair appears about
  equally often. They are **truly unseen compositions**: excluded from the generator's pre-training and
  distillation, and from RL training prompts; each of their words is seen in other combinations.
  (The attribute classifier, the preference proxy and the FID features see all colourings: they are the
  evaluators, like CLIP, which has seen everything.)
- **prompts**: `TRAIN_PROMPTS` = the 90 other combinations; `HELDOUT_PROMPTS` = the 20 held-out ones, split
  in two halves of one combination per digit each: `VALIDATION_PROMPTS` (10, for tuning and selection only:
  `bench sweep`) and `TEST_PROMPTS` (10, reported; seen by no training stage and by no tuning). Both halves
  are unseen by the generator, so validation is a faithful stand-in for test.
- **images**: `PRETRAIN_IMAGES` = digit images 0..1399 (generator, classifier, proxy, feature network);
  `HELDOUT_IMAGES` = 1400..1796 (397 real images, the FID reference; never trained on).
"""

from __future__ import annotations

from itertools import product

from bench.core.errors import BenchError

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INKS: dict[str, tuple[float, float, float]] = {  # RGB in [0, 1], kept off the gamut edge so CFG can overshoot
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "yellow": (0.95, 0.85, 0.15),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.05),
    "blue": (0.10, 0.20, 0.65),
    "white": (0.95, 0.95, 0.95),
}
EXCLUDED_PAIRS = {("white", "white")}  # ink == background: the digit would be invisible

COLOUR_PAIRS: list[tuple[str, str]] = [(i, b) for i, b in product(INKS, BACKGROUNDS) if (i, b) not in EXCLUDED_PAIRS]
ALL_COMBOS: list[tuple[int, str, str]] = [(d, i, b) for d in range(10) for i, b in COLOUR_PAIRS]
# Two colour pairs per digit, stepping through the 11 pairs with strides coprime to 11 (balanced coverage).
HELDOUT_COMBOS: list[tuple[int, str, str]] = sorted(
    {(d, *COLOUR_PAIRS[(3 * d + off) % len(COLOUR_PAIRS)]) for d in range(10) for off in (0, 5)})
# Validation takes each digit's first held-out pair (offset 0), test its second (offset 5): every digit in both.
VALIDATION_COMBOS: list[tuple[int, str, str]] = [(d, *COLOUR_PAIRS[(3 * d) % len(COLOUR_PAIRS)]) for d in range(10)]
TEST_COMBOS: list[tuple[int, str, str]] = [(d, *COLOUR_PAIRS[(3 * d + 5) % len(COLOUR_PAIRS)]) for d in range(10)]
TRAIN_COMBOS: list[tuple[int, str, str]] = [c for c in ALL_COMBOS if c not in set(HELDOUT_COMBOS)]

PRETRAIN_IMAGES = range(0, 1400)
HELDOUT_IMAGES = range(1400, 1797)

WORDS = ["a", "on", "background"] + DIGITS + list(INKS) + list(BACKGROUNDS)


def make_prompt(digit: int, ink: str, background: str) -> str:
    return f"a {ink} {DIGITS[digit]} on a {background} background"


def parse_prompt(prompt: str) -> tuple[int, str, str]:
    """"a red seven on a blue background" -> (7, "red", "blue"); anything else is a BenchError."""
    words = prompt.strip().lower().split()
    ok = (len(words) == 7 and words[0] == "a" and words[3:5] == ["on", "a"] and words[6] == "background"
          and words[1] in INKS and words[2] in DIGITS and words[5] in BACKGROUNDS)
    if not ok or (words[1], words[5]) in EXCLUDED_PAIRS:
        raise BenchError(f"prompt {prompt!r} is outside the testbed grammar: expected 'a <ink> <digit> on a "
                         f"<background> background' with ink in {list(INKS)}, digit in {DIGITS}, background in "
                         f"{list(BACKGROUNDS)} (not {sorted(EXCLUDED_PAIRS)})")
    return DIGITS.index(words[2]), words[1], words[5]


TRAIN_PROMPTS: list[str] = [make_prompt(*c) for c in TRAIN_COMBOS]
HELDOUT_PROMPTS: list[str] = [make_prompt(*c) for c in HELDOUT_COMBOS]
VALIDATION_PROMPTS: list[str] = [make_prompt(*c) for c in VALIDATION_COMBOS]
TEST_PROMPTS: list[str] = [make_prompt(*c) for c in TEST_COMBOS]
