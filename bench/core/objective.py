"""Reward expressions: standardised rewards `z(NAME)` and weighted sums `pickscore+0.5*z(hpsv2)` (docs/methods.md §0).

Torch-free (the report reads expressions back from run configs). The grammar, spaces allowed around every token:

    objective := term ('+' term)*
    term      := [WEIGHT '*'] atom
    atom      := 'z(' NAME ')' | NAME

NAME is any reward name the registry takes (a registered name, `package.module:Name`, a reward-server URL)
without the characters `+ * ( )` or spaces; WEIGHT a decimal number (1.5, 0.25, 2e-3), which must be > 0: a
weighted objective is maximised, so a term is only ever wanted more or less, and a term of weight 0 is a term
left out. `z(NAME)` is (r − μ₀) / σ₀, with μ₀, σ₀ the reward's mean and standard deviation on the base model's
samples of the training prompts, measured at the start of a run (bench/run/standardise.py). A text that is one
plain NAME is no expression (`parse` returns None) and names the reward itself.

Where such a name becomes a folder (`{method}__{reward}__seed{seed}`, bench.results.io.run_id), `folder_name`
spells `z(NAME)` as `z.NAME` and `W*` as `Wx`: `z(pickscore)+0.5*hpsv2` -> `z.pickscore+0.5xhpsv2`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bench.core.errors import BenchError

RESERVED = "+*() \t"
"""Characters a NAME inside an expression cannot contain: they are the expression's own."""
_WEIGHT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[^+*()\s]+"
_TERM = re.compile(rf"^(?:(?P<weight>{_WEIGHT})\s*\*\s*)?(?:z\(\s*(?P<z>{_NAME})\s*\)|(?P<name>{_NAME}))$")


@dataclass(frozen=True)
class Term:
    """One term of an objective: `weight · name` or `weight · z(name)`."""

    name: str
    """The reward's name as the registry takes it (resolved to its registered name by bench.registry.lookup)."""
    weight: float = 1.0
    """The term's multiplier in the sum (> 0)."""
    standardised: bool = False
    """z(name): (r − μ₀)/σ₀ with the base model's μ₀, σ₀ on the training prompts."""

    @property
    def label(self) -> str:
        """The term's own metric name, without its weight: `name` or `z(name)` (logged and evaluated as such)."""
        return f"z({self.name})" if self.standardised else self.name


@dataclass(frozen=True)
class Objective:
    """A reward expression: a weighted sum of (possibly standardised) rewards."""

    terms: tuple[Term, ...]

    @property
    def text(self) -> str:
        """The canonical spelling: no spaces, weights as Python writes the float (1 left out), terms in order."""
        return "+".join(("" if t.weight == 1 else f"{_number(t.weight)}*") + t.label for t in self.terms)

    @property
    def labels(self) -> list[str]:
        """Every term's metric name, in order."""
        return [t.label for t in self.terms]

    @property
    def standardised(self) -> list[str]:
        """The names inside z(...), in order."""
        return [t.name for t in self.terms if t.standardised]


def _number(w: float) -> str:
    text = repr(float(w))
    return text[:-2] if text.endswith(".0") else text


def parse(text: str) -> Objective | None:
    """The expression in `text`, or None if `text` is one plain name (none of `+ * ( )`). A malformed
    expression, a weight that is not > 0 or a term given twice is a one-line BenchError."""
    text = text.strip()
    if not any(c in text for c in "+*()"):
        return None
    terms, seen = [], set()
    for part in text.split("+") if "+" in text else [text]:
        part = part.strip()
        m = _TERM.match(part)
        if not part or m is None:
            shown = repr(part) if part else "an empty term"
            raise BenchError(f"bad reward expression '{text}': cannot read {shown}; expected terms like NAME, "
                             f"0.5*NAME or z(NAME) joined by '+', e.g. pickscore+0.5*z(hpsv2)")
        weight = float(m["weight"]) if m["weight"] is not None else 1.0
        term = Term(m["z"] or m["name"], weight, m["z"] is not None)
        if not (math.isfinite(weight) and weight > 0):
            raise BenchError(f"bad reward expression '{text}': the weight of {term.label} must be > 0, got "
                             f"{m['weight']} (an objective is maximised: leave a term out rather than weigh it 0, "
                             f"and use a reward whose higher is better rather than a negative weight)")
        if term.label in seen:
            raise BenchError(f"bad reward expression '{text}': {term.label} appears twice; give it one weight")
        seen.add(term.label)
        terms.append(term)
    return Objective(tuple(terms))


def folder_name(reward: str) -> str:
    """A reward name or expression as one path component of a run folder: z(NAME) -> z.NAME, W* -> Wx; then
    anything but letters, digits and . _ + - becomes '-' (a reward-server URL http://127.0.0.1:8000/NAME becomes
    http-127.0.0.1-8000-NAME)."""
    try:
        expression = parse(reward) is not None
    except BenchError:
        expression = False
    if expression:
        reward = re.sub(r"z\(\s*([^()]*?)\s*\)", r"z.\1", reward.replace(" ", "")).replace("*", "x")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", reward)


def trained_metrics(reward: str) -> list[str]:
    """The metrics a run trained on `reward` optimises: the reward itself, each term of a weighted sum and the
    reward inside each z(...) (the same reward in other units). Selection and the hacking judge leave them out."""
    try:
        obj = parse(reward)
    except BenchError:
        obj = None
    if obj is None:
        return [reward]
    return list(dict.fromkeys([reward, *obj.labels, *obj.standardised]))
