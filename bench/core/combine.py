"""The rewards behind reward expressions (bench/core/objective.py): `z(NAME)` and weighted sums of terms.

The registry (bench/registry/lookup.py reward_class / metric_class) builds the classes: for `z(NAME)` a
`Standardised` subclass around NAME's class, for `a+0.5*z(b)` a `Combined` subclass around one class per term.
Both are `Reward`s: a method, the evaluation and a plugin see one reward.

- Charging: each wraps reward objects built with the same meter and calls them, so the work is charged where it
  happens, once, by the inner rewards (`reward_calls` counts an image once per term that scored it, as it should:
  each term's model ran). A backward reaches each inner reward through its own output and is charged there.
- Gradient: both are affine in their terms' scores, so they are differentiable exactly when every term is.
- `z(NAME)` has no value until its normaliser is set (`Standardised.set_normaliser`, by bench/run/standardise.py
  at the start of a run, from the base model's samples of the training prompts); calling it before is an error,
  never a silent identity.
- A `Combined` reward records, inside `recording()`, each term's sum and count over the images it scored, so the
  runner logs every term of the objective separately (train.jsonl) without any method knowing.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import ClassVar, Iterator

import torch

from bench.core.compute import ComputeMeter
from bench.core.errors import BenchError
from bench.core.objective import Objective
from bench.core.reward import Reward


class Standardised(Reward):
    """z(NAME): (r − μ₀) / σ₀, μ₀ and σ₀ the reward's mean and standard deviation on the base model's samples."""

    inner_class: ClassVar[type[Reward]]
    mean: float | None = None
    std: float | None = None

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        self.inner = self.inner_class(device, self.meter)

    def set_normaliser(self, mean: float, std: float) -> None:
        """μ₀, σ₀ (bench/run/standardise.py). σ₀ must be > 0: a reward constant on the base model's samples gives
        no scale to standardise by."""
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise BenchError(f"{self.name}: the base model's mean {mean} or standard deviation {std} is not finite")
        if not std > 0:
            raise BenchError(f"{self.name}: {self.inner.name} scores every base-model sample the same (σ₀ = 0): "
                             f"there is no scale to standardise by; train on {self.inner.name} itself")
        self.mean, self.std = float(mean), float(std)

    def clear_prompt_cache(self) -> None:
        self.inner.clear_prompt_cache()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if self.mean is None or self.std is None:
            raise BenchError(f"{self.name} has no normaliser yet: μ₀, σ₀ are measured on the base model at the "
                             f"start of a run (bench/run/standardise.py)")
        return (self.inner(images, prompts) - self.mean) / self.std

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.score(images, prompts)  # charged once, by the inner reward


class Combined(Reward):
    """A weighted sum of rewards, Σ_i w_i · r_i (each r_i a reward or a z(reward))."""

    objective: ClassVar[Objective]
    term_classes: ClassVar[tuple[type[Reward], ...]]

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        self.parts: dict[str, Reward] = {t.label: cls(device, self.meter)
                                         for t, cls in zip(self.objective.terms, self.term_classes)}
        """Each term's reward object by its label (`hpsv2`, `z(pickscore)`): the evaluation reuses them."""
        self._sums: dict[str, float] | None = None
        self._count = 0

    def clear_prompt_cache(self) -> None:
        for part in self.parts.values():
            part.clear_prompt_cache()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        values = {t.label: self.parts[t.label](images, prompts) for t in self.objective.terms}  # each (B,)
        if self._sums is not None:
            for label, v in values.items():
                self._sums[label] += float(v.detach().double().sum())
            self._count += len(prompts)
        return sum(t.weight * values[t.label].float() for t in self.objective.terms)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.score(images, prompts)  # charged by each term's reward

    @contextmanager
    def recording(self) -> Iterator[dict[str, float]]:
        """Inside, every scored image adds each term's value to a sum; the yielded dict holds, once the block has
        ended, "reward/<label>_sum" per term and "reward/count" (sums, so that processes can add them up)."""
        self._sums, self._count = {label: 0.0 for label in self.parts}, 0
        out: dict[str, float] = {}
        try:
            yield out
        finally:
            out.update({f"reward/{label}_sum": s for label, s in self._sums.items()})
            out["reward/count"] = float(self._count)
            self._sums = None


def term_means(sums: dict[str, float]) -> dict[str, float]:
    """`recording()`'s sums (added over processes) -> {"reward/<label>": mean over the scored images}; {} when
    no image was scored."""
    count = sums.get("reward/count", 0.0)
    if not count:
        return {}
    return {k[: -len("_sum")]: v / count for k, v in sums.items() if k.endswith("_sum")}


def standardised_class(name: str, inner: type[Reward]) -> type[Standardised]:
    """The class of z(`name`), `inner` the class of `name`."""
    if not (isinstance(inner, type) and issubclass(inner, Reward)):
        raise BenchError(f"z({name}): only a per-image reward can be standardised; {name} is a set metric")
    return type("Standardised", (Standardised,), {
        "name": f"z({name})", "version": f"{inner.version}.z1", "higher_is_better": inner.higher_is_better,
        "differentiable": inner.differentiable, "inner_class": inner,
        "__doc__": f"{name} standardised on the base model's samples of the training prompts: (r − μ₀) / σ₀"})


def combined_class(objective: Objective, classes: list[type[Reward]]) -> type[Reward]:
    """The class of an objective, given each term's class (a z(...) term's is its `standardised_class`). A
    single unweighted term is that term's class; terms must agree on their direction (an objective is maximised)."""
    if len(objective.terms) == 1 and objective.terms[0].weight == 1:
        return classes[0]
    for term, cls in zip(objective.terms, classes):
        if not (isinstance(cls, type) and issubclass(cls, Reward)):
            raise BenchError(f"reward '{objective.text}': its term {term.label} is a set metric, not a per-image "
                             f"reward; a weighted objective sums per-image scores")
    directions = {cls.higher_is_better for cls in classes}
    if len(directions) > 1:
        lower = [t.label for t, c in zip(objective.terms, classes) if not c.higher_is_better]
        raise BenchError(f"reward '{objective.text}': {', '.join(lower)} is lower-is-better and the other terms are "
                         f"higher-is-better; a sum of both would reward making {lower[0]} worse")
    blocking = [t.label for t, c in zip(objective.terms, classes) if not c.differentiable]
    return type("Combined", (Combined,), {
        "name": objective.text, "version": "/".join(c.version for c in classes),
        "higher_is_better": directions.pop(), "differentiable": not blocking, "not_differentiable": tuple(blocking),
        "objective": objective, "term_classes": tuple(classes),
        "__doc__": f"weighted sum of rewards: {objective.text}"})


def non_differentiable_terms(cls: type) -> tuple[str, ...]:
    """The terms of a Combined class that no gradient crosses (empty for any other reward class)."""
    return tuple(getattr(cls, "not_differentiable", ()))

