"""The order in which pairs are shown: balanced over method pairs and prompts at every point a rater stops.

An item is (prompt i, sample k, system a, system b) with a < b: both images share prompt i and the noise of
sample k. The order goes in rounds; each round shows every method pair once, on consecutive cells (prompt,
sample) of a list in which every prompt appears once per sample, so that the method pairs of a round are on
different prompts (when there are no more method pairs than prompts). A rater
who stops after r rounds has judged every method pair r times; within a round, prompts are spread over the
method pairs. Every rater walks the same order (skipping what they have judged), so raters overlap on the same
items and their agreement can be measured. Which image goes left is drawn at random when a pair is served.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Item:
    """One comparison: prompt index, sample index and the two systems (a < b)."""

    prompt: int
    sample: int
    a: str
    b: str

    @property
    def key(self) -> str:
        return f"{self.prompt}:{self.sample}:{self.a}:{self.b}"


def balanced_order(systems: list[str], n_prompts: int, samples_per_prompt: int, seed: int = 0) -> list[Item]:
    """Every item exactly once, in rounds of one item per method pair (see the module docstring)."""
    rng = random.Random(seed)
    pairs = list(combinations(sorted(systems), 2))
    rng.shuffle(pairs)
    prompts = list(range(n_prompts))
    rng.shuffle(prompts)
    # Cell c is (prompt order[c mod P], sample c div P): any P consecutive cells cover every prompt once.
    cells = [(prompts[c % n_prompts], c // n_prompts) for c in range(n_prompts * samples_per_prompt)]
    if not pairs or not cells:
        return []
    # Method pair j in round r gets cell r + j: distinct consecutive cells within a round (distinct prompts when
    # there are no more method pairs than prompts), and over the rounds every cell once per method pair.
    return [Item(*cells[(r + j) % len(cells)], a, b) for r in range(len(cells)) for j, (a, b) in enumerate(pairs)]
