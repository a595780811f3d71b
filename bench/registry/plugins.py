"""Plugins: methods, rewards, metrics and models from outside the package, by import path or entry point.

Anywhere a registered name is accepted (`--methods`, `--rewards`, `--model`, `--set eval.metrics=`), a
`package.module:Name` import path is too; and an installed package can declare entry points in the groups
of GROUPS (e.g. in its pyproject.toml: `[project.entry-points."cm_rlhf_bench.methods"] my-method =
"my_pkg.methods:MyMethod"`), whose names then appear in `bench ls` and work like built-in ones.

A plugin is registered into the plain-dict registries of bench/registry/catalog.py under a declared name — the
entry point's name, or the class's `name` attribute for an import path (a model builder's `name`
attribute, else its function name) — so run folders and `--set` prefixes never carry a raw `module:Name`.
What it must be is checked when it is first used, with one line saying what is wrong (docs/extending.md):
a `bench.api.Method` subclass with a TrainConfig dataclass `Config`, a `bench.api.Reward` (a metric may
also be a `bench.api.SetMetric`), or a model builder `(ModelConfig, ComputeMeter | None) -> Policy`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
from typing import Any

from bench.core.errors import BenchError

GROUPS = {"method": "cm_rlhf_bench.methods", "reward": "cm_rlhf_bench.rewards",
          "metric": "cm_rlhf_bench.metrics", "model": "cm_rlhf_bench.models"}
"""Entry-point group per kind ("metric": evaluation-only SetMetrics; rewards are metrics too)."""
NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.+-]|_(?!_))*$")
"""A registry name: it becomes part of run folder names `{method}__{reward}__seed{seed}`, so no '/', ':', '__'."""

PLUGIN_TARGETS: set[str] = set()
"""Targets ("module:attr") registered by this module: their contract is checked on use, built-ins' are not."""
_entry_points_loaded = False


def registry_of(kind: str) -> dict:
    """The registry dict a plugin of `kind` goes into (methods map to (target, overrides) pairs)."""
    from bench.registry import catalog as registry

    return {"method": registry.METHODS, "reward": registry.REWARDS, "metric": registry.SET_METRICS,
            "model": registry.MODELS}[kind]


def target_of(kind: str, entry: Any) -> str:
    """The "module:attr" of a registry entry (a method's entry is a (target, overrides) pair)."""
    return entry[0] if kind == "method" else entry


def import_target(target: str, kind: str) -> Any:
    """'package.module:Name' -> the object, or a one-line error saying why it cannot be imported."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise BenchError(f"bad {kind} plugin '{target}': expected package.module:Name")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # the `bench` script does not see the working directory's modules otherwise
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is reported on one line
        raise BenchError(f"cannot import {kind} plugin '{target}': {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BenchError(f"cannot import {kind} plugin '{target}': module '{module}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def check(kind: str, obj: Any, target: str) -> None:
    """Refuse, in one line, an object that does not meet the contract of `kind`."""
    from bench.core.method import Method, TrainConfig
    from bench.core.reward import Reward, SetMetric

    what = f"{kind} plugin '{target}'"
    got = f"got {type(obj).__name__} {getattr(obj, '__name__', '')}".rstrip()
    if kind == "method":
        if not (isinstance(obj, type) and issubclass(obj, Method)):
            raise BenchError(f"{what} is not a Method: expected a subclass of bench.api.Method, {got}")
        cfg = obj.Config
        if not (isinstance(cfg, type) and issubclass(cfg, TrainConfig) and dataclasses.is_dataclass(cfg)):
            raise BenchError(f"{what}: its Config must be a dataclass extending bench.api.TrainConfig")
        if obj.step is Method.step:
            raise BenchError(f"{what} does not implement step()")
    elif kind in ("reward", "metric"):
        bases = (Reward,) if kind == "reward" else (Reward, SetMetric)
        if not (isinstance(obj, type) and issubclass(obj, bases)):
            expected = "bench.api.Reward" + (" or bench.api.SetMetric" if kind == "metric" else "")
            raise BenchError(f"{what} is not a {kind.capitalize()}: expected a subclass of {expected}, {got}")
        if issubclass(obj, Reward) and obj.score is Reward.score:
            raise BenchError(f"{what} does not implement score(images, prompts)")
    else:
        if isinstance(obj, type) or not callable(obj):
            raise BenchError(f"{what} is not a model builder: expected a function (ModelConfig, ComputeMeter | None) "
                             f"-> Policy, {got}")
        try:
            inspect.signature(obj).bind(None, None)
        except TypeError:
            raise BenchError(f"{what} is not a model builder: it must accept (config, meter)") from None
        except ValueError:
            pass  # no signature to inspect (a builtin): the call will tell


def declared_name(kind: str, obj: Any, target: str) -> str:
    """The name a plugin given by import path is registered under: its declared `name`, never the path."""
    from bench.core.reward import Reward, SetMetric

    name = getattr(obj, "name", "") or ""
    if kind in ("reward", "metric") and name in (Reward.name, SetMetric.name):
        name = ""  # inherited from the base class: not declared
    if kind == "model" and not name:
        name = getattr(obj, "__name__", "").replace("_", "-")
    if not name:
        raise BenchError(f"{kind} plugin '{target}' declares no name: give the class a `name = \"my-{kind}\"` "
                         f"attribute (it names run folders and --set prefixes)")
    if not isinstance(name, str) or not NAME.match(name):
        raise BenchError(f"{kind} plugin '{target}' declares the name {name!r}: use letters, digits and . + - _ "
                         f"(no '__', '/' or ':'), e.g. 'my-{kind}'")
    return name


def register(kind: str, target: str, name: str | None = None) -> str:
    """Register `target` under `name` (default: its declared name) after checking its contract; idempotent.
    Returns the name. A name taken by another target is refused."""
    from bench.core.reward import Reward

    obj = import_target(target, kind)
    check(kind, obj, target)
    if kind == "metric" and issubclass(obj, Reward):
        kind = "reward"  # a per-image metric is a Reward: it can be trained on too
    name = name or declared_name(kind, obj, target)
    registry = registry_of(kind)
    if name in registry and target_of(kind, registry[name]) != target:
        raise BenchError(f"{kind} plugin '{target}' declares the name '{name}', already registered to "
                         f"'{target_of(kind, registry[name])}'; give it another name")
    registry[name] = (target, {}) if kind == "method" else target
    PLUGIN_TARGETS.add(target)
    return name


def model_defaults(name: str) -> None:
    """A plugin model builder's optional `defaults` dict (reward, prompts, metrics, select, rater, latent: the keys of
    bench/registry/catalog.py MODEL_DEFAULTS) into MODEL_DEFAULTS, unless it has an entry already."""
    from bench.registry.catalog import MODEL_DEFAULTS, MODELS

    target = MODELS[name]
    if target in PLUGIN_TARGETS and name not in MODEL_DEFAULTS:
        defaults = getattr(import_target(target, "model"), "defaults", None)
        if defaults is not None and not isinstance(defaults, dict):
            raise BenchError(f"model plugin '{target}': its `defaults` must be a dict (reward, prompts, metrics, "
                             f"select, latent)")
        MODEL_DEFAULTS[name] = dict(defaults or {})


def load_entry_points() -> None:
    """Add every installed package's entry points of GROUPS to the registries (once; lazily imported on use).
    One that would shadow a built-in name is skipped with a one-line warning."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for kind, group in GROUPS.items():
        registry = registry_of(kind)
        for ep in entry_points(group=group):
            if ep.name in registry and target_of(kind, registry[ep.name]) != ep.value:
                print(f"warning: entry point '{ep.name}' of {group} ({ep.value}) ignored: the name is taken by "
                      f"{target_of(kind, registry[ep.name])}", file=sys.stderr)
                continue
            if not NAME.match(ep.name):
                print(f"warning: entry point '{ep.name}' of {group} ignored: not a valid name", file=sys.stderr)
                continue
            registry[ep.name] = (ep.value, {}) if kind == "method" else ep.value
            PLUGIN_TARGETS.add(ep.value)


def resolve(kind: str, name: str) -> str | None:
    """A registered name, an installed entry point's name, or an import path -> its registry name (registering
    it); None if `name` is none of these (bench/registry/catalog.py then raises its did-you-mean error)."""
    kinds = ("reward", "metric") if kind == "metric" else (kind,)  # a metric is a reward or a set metric
    found = None
    for _ in range(2):
        if any(name in registry_of(k) for k in kinds):
            found = name
            break
        if ":" in name:
            found = register(kind, name)
            break
        load_entry_points()
    if found is not None and kind == "model":
        model_defaults(found)
    return found


def checked(kind: str, obj: Any, target: str) -> Any:
    """`obj`, after checking the contract if `target` came from a plugin (built-ins are trusted)."""
    if target in PLUGIN_TARGETS:
        check(kind, obj, target)
        if kind == "model":
            return _checked_builder(obj, target)
    return obj


def _checked_builder(builder, target: str):
    """A plugin model builder whose result is checked to be a Policy."""
    def build(config, meter=None):
        from bench.core.policy import Policy

        policy = builder(config, meter)
        if not isinstance(policy, Policy):
            raise BenchError(f"model plugin '{target}' returned {type(policy).__name__} instead of a bench.api.Policy")
        return policy

    return build
