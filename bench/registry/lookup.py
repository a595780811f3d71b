"""Lookups in the registries (bench/registry/catalog.py): a user-given name, an installed entry point or a
`package.module:Name` import path -> the registered name, its class or builder (imported on use), or the
did-you-mean error. Plugins are registered on first use and checked against the contracts (plugins.py).

A reward or metric may also be a reward expression (bench/core/objective.py): `z(NAME)` or a weighted sum such
as `pickscore+0.5*z(hpsv2)`, each NAME any of the above or a reward-server URL. `find` gives its canonical
spelling with every term resolved, `reward_class` / `metric_class` its class (bench/core/combine.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bench.core.errors import unknown_name
from bench.registry import catalog  # read through the module: tests and plugins may replace its dicts

if TYPE_CHECKING:  # bench.core.method imports torch; the registry stays light
    from bench.core.method import Knob


def _import(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def find(kind: str, name: str) -> str:
    """The registry name of `name` of `kind` ("method", "reward", "metric", "model"): a registered name, an
    installed plugin's entry point, or a `package.module:Name` import path (registered under its declared name,
    bench/registry/plugins.py); otherwise the did-you-mean error."""
    from bench.registry.plugins import registry_of, resolve

    if kind in ("reward", "metric") and (obj := expression(name)) is not None:
        return resolved(kind, obj).text
    if kind in ("reward", "metric") and is_remote(name):
        return name  # a reward server's URL names itself (rewards/remote.py, docs/reward-server.md)
    found = resolve(kind, name)
    if found is None:
        available = [*catalog.REWARDS, *catalog.SET_METRICS, "kl-to-base"] if kind == "metric" else list(registry_of(kind))
        raise unknown_name(kind, name, available)
    return found


def resolve_names(kind: str, names) -> list[str]:
    """Registry names for user-given names or import paths, each checked (its contract, if a plugin's)."""
    lookup = {"method": method_class, "reward": reward_class, "metric": metric_class, "model": model_builder}[kind]
    out = [n if (kind, n) == ("metric", "kl-to-base") else find(kind, n) for n in names]
    for n in out:
        if n != "kl-to-base":
            lookup(n)
    return out


def model_builder(name: str):
    from bench.registry.plugins import checked

    name = find("model", name)
    return checked("model", _import(catalog.MODELS[name]), catalog.MODELS[name])


def method_class(name: str) -> tuple[type, dict[str, Any]]:
    from bench.registry.plugins import checked

    target, overrides = catalog.METHODS[find("method", name)]
    return checked("method", _import(target), target), dict(overrides)


def knobs_for(name: str, latent_dims: int | None = None, steps: int | None = None) -> dict[str, Knob]:
    """The sweep knobs of a registered method entry, {field: Knob} with absolute ranges: its config class's
    KNOBS, relative ones (e.g. ROCM's β) scaled by the entry's own value (bench/core/method.py RELATIVE_KNOBS), and
    dropped where that value is 0 (rocm-none's β). `latent_dims`: the model's latent size, for knobs whose scale
    depends on it (β of a per-dimension ROCM entry); None keeps the registered scale. `steps`: the sampler's N,
    for ranges that follow it (DRaFT-K's K in 1 … N-1); None: the sampler's default. `--set` values are not
    applied: for those, call resolved_knobs() on bench.run.config.method_config's config."""
    cls, overrides = method_class(name)
    return cls.Config(**overrides).resolved_knobs(latent_dims, steps)


def is_remote(name: str) -> bool:
    """Whether a reward or metric name is a reward server's URL, http(s)://HOST:PORT/NAME."""
    return name.startswith(("http://", "https://"))


def expression(name: str):
    """The reward expression (bench.core.objective.Objective) `name` spells, or None when it is one name: no
    `+ * ( )`, or a registered name that contains them (a plugin may be called `a+b`)."""
    from bench.core.objective import parse
    from bench.registry.plugins import load_entry_points

    if not any(c in name for c in "+*()"):
        return None
    load_entry_points()
    if name in catalog.REWARDS or name in catalog.SET_METRICS:
        return None
    return parse(name)


def resolved(kind: str, obj):
    """`obj` with every term's name replaced by its registry name (a plugin's declared name), each checked; an
    unknown term is the did-you-mean error, prefixed with the expression."""
    import dataclasses

    from bench.core.errors import BenchError
    from bench.core.objective import Objective

    terms = []
    for t in obj.terms:
        try:
            terms.append(dataclasses.replace(t, name=find(kind, t.name)))
        except BenchError as e:
            raise BenchError(f"in reward '{obj.text}': {e}") from None
    labels = [t.label for t in terms]
    if len(set(labels)) < len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise BenchError(f"bad reward expression '{obj.text}': {twice} appears twice; give it one weight")
    return Objective(tuple(terms))


def expression_class(kind: str, obj) -> type:
    """The Reward class of a reward expression: z(NAME) terms standardised, then the weighted sum."""
    from bench.core.combine import combined_class, standardised_class

    obj = resolved(kind, obj)
    lookup = reward_class if kind == "reward" else metric_class
    classes = [standardised_class(t.name, lookup(t.name)) if t.standardised else lookup(t.name) for t in obj.terms]
    return combined_class(obj, classes)


def reward_class(name: str) -> type:
    from bench.registry.plugins import checked

    if (obj := expression(name)) is not None:
        return expression_class("reward", obj)
    if is_remote(name):
        return _import("rewards.remote:remote_class")(name)
    target = catalog.REWARDS[find("reward", name)]
    return checked("reward", _import(target), target)


def metric_class(name: str) -> type:
    from bench.registry.plugins import checked

    if (obj := expression(name)) is not None:
        return expression_class("metric", obj)
    if is_remote(name):
        return reward_class(name)
    name = find("metric", name)
    target = catalog.REWARDS.get(name) or catalog.SET_METRICS[name]
    return checked("metric", _import(target), target)


def describe(target: str, kind: str | None = None) -> str:
    """First line of the registered object's docstring (for `bench ls`); for a plugin that cannot be imported
    or is not a `kind` ("method", "reward", "metric", "model"), that error instead."""
    from bench.core.errors import BenchError
    from bench.registry.plugins import PLUGIN_TARGETS, check, import_target

    try:
        if target in PLUGIN_TARGETS:
            obj = import_target(target, kind or "plugin")
            if kind:
                check(kind, obj, target)
        else:
            obj = _import(target)
    except BenchError as e:
        return f"(not usable: {e})"
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def reward_weights():
    """The rewards' weight catalogue and downloader (catalog.REWARD_WEIGHTS), imported on use."""
    return importlib.import_module(catalog.REWARD_WEIGHTS)
