"""`animal-activities`: our own offline prompt set in the spirit of DDPO's prompt-image alignment task ("a raccoon
washing the dishes"): 50 animals x 20 activities, written for this suite (no list is taken from elsewhere).

Splits, fixed by SPLIT_SEED (a `random.Random` that shuffles both word lists, then samples):
- 10 animals and 4 activities are held out of training; 5 animals and 2 activities go to validation, the other
  5 and 2 to test;
- train: every seen animal with every seen activity (40 x 16 = 640 prompts);
- validation and test: 40 prompts each, of three kinds — 15 a held-out animal doing a seen activity, 15 a seen
  animal doing a held-out activity, and all 10 pairs of the split's held-out animals and activities. No
  validation prompt shares a held-out word with a test prompt, so tuning on validation never sees test words.
With 640 training prompts, evaluating the train split every time is costly on real models: `eval.max_prompts`
evaluates an evenly spread subset.
"""

from __future__ import annotations

import random
from itertools import product

SPLIT_SEED = 0
ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "hamster", "deer", "fox",
           "wolf", "bear", "lion", "tiger", "leopard", "zebra", "giraffe", "elephant", "monkey", "gorilla",
           "kangaroo", "koala", "panda", "camel", "donkey", "squirrel", "hedgehog", "otter", "seal", "dolphin",
           "turtle", "frog", "lizard", "crocodile", "owl", "eagle", "parrot", "penguin", "duck", "chicken", "swan",
           "flamingo", "raccoon", "lynx", "moose", "hippopotamus", "sloth", "beaver"]
ACTIVITIES = ["riding a bicycle", "playing chess", "washing the dishes", "reading a book", "playing the guitar",
              "baking bread", "painting a portrait", "flying a kite", "riding a skateboard", "knitting a scarf",
              "drinking tea", "playing football", "driving a car", "taking a photograph", "building a sandcastle",
              "watering the plants", "typing on a laptop", "juggling oranges", "rowing a boat", "dancing in the rain"]
HELD_OUT_ANIMALS, HELD_OUT_ACTIVITIES = 5, 2  # per held-out split (validation, test)
UNSEEN_ANIMAL, UNSEEN_ACTIVITY = 15, 15  # sampled prompts of each kind per held-out split


def prompt(animal: str, activity: str) -> str:
    article = "an" if animal[0] in "aeiou" else "a"
    return f"{article} {animal} {activity}"


def build_splits(seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """{"train", "validation", "test"} -> prompts, the same for the same seed."""
    rng = random.Random(seed)
    animals, activities = rng.sample(ANIMALS, len(ANIMALS)), rng.sample(ACTIVITIES, len(ACTIVITIES))
    na, nc = HELD_OUT_ANIMALS, HELD_OUT_ACTIVITIES
    held = {"validation": (animals[:na], activities[:nc]), "test": (animals[na:2 * na], activities[nc:2 * nc])}
    seen_animals, seen_activities = animals[2 * na:], activities[2 * nc:]
    splits = {"train": sorted(prompt(a, c) for a, c in product(seen_animals, seen_activities))}
    for split, (new_animals, new_activities) in held.items():
        kinds = [rng.sample(list(product(new_animals, seen_activities)), UNSEEN_ANIMAL),
                 rng.sample(list(product(seen_animals, new_activities)), UNSEEN_ACTIVITY),
                 list(product(new_animals, new_activities))]
        splits[split] = sorted(prompt(a, c) for kind in kinds for a, c in kind)
    return splits
