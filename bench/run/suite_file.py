"""Suite files: `bench run --config suite.toml` holds what `bench run`'s flags say, flags overriding the file.

    methods = ["rocm-kl", "ddpo"]          # or "rocm-kl,ddpo"; import paths package.module:Name too
    rewards = ["testbed-pref"]
    seeds = [0, 1, 2]
    budget = "2.5tflop"
    model = "testbed"
    out = "results/my-suite"               # relative to the working directory, as --out
    device = "auto"

    [set]                                  # every --set field: section.field, entry.field or family.field
    "sampler.steps" = 4                    # a quoted dotted key ...
    eval.points = 5                        # ... or a dotted key (a nested table), the same thing
    rocm-kl.beta = 10.0

A flag given on the command line replaces the file's value; `--set` flags are applied after the file's
[set] entries, so they win over them. An unknown key is a one-line error with "did you mean". Example files:
examples/testbed.toml and examples/gpu-dreamshaper.toml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, unknown_name


@dataclass
class RunOptions:
    """`bench run`'s options as given (None: not given, so the file's value or the default applies)."""

    methods: str | None = None
    """Comma-separated method names or import paths."""
    rewards: str | None = None
    """Comma-separated training rewards (default: the model's own)."""
    model: str | None = None
    seeds: str | None = None
    """Comma-separated integer seeds."""
    budget: str | None = None
    """Training compute per run, e.g. 2000nfe, 2.5tflop, 10m."""
    out: str | None = None
    """Suite folder."""
    device: str | None = None
    sets: list[str] = field(default_factory=list)
    """`key=value` overrides, in the order applied (the last wins)."""


KEYS = ("methods", "rewards", "model", "seeds", "budget", "out", "device", "set")


def _text(value: Any, key: str, path: Path) -> str:
    """A TOML value as the flag's text: lists comma-joined, booleans lower-case, numbers as written by repr."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return ",".join(_text(v, key, path) for v in value)
    raise BenchError(f"{path}: bad value for '{key}': {value!r} (expected a string, number, boolean or list of them)")


def _flat_sets(table: dict, path: Path, prefix: str = "") -> list[str]:
    """[set] as `key=value` strings: nested tables (dotted keys) joined with '.'."""
    out = []
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flat_sets(value, path, full + ".")
        else:
            out.append(f"{full}={_text(value, full, path)}")
    return out


def load(path: Path) -> RunOptions:
    """Read a suite file; one-line errors for a missing file, bad TOML, unknown keys or bad values."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise BenchError("suite files need Python 3.11 or later (tomllib); pass the flags instead") from None
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"suite file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"{path}: not valid TOML: {e}") from None
    for key in data:
        if key not in KEYS:
            raise unknown_name(f"key in {path}", key, list(KEYS))
    sets = data.get("set", {})
    if not isinstance(sets, dict):
        raise BenchError(f"{path}: 'set' must be a table, e.g. [set] followed by sampler.steps = 8")
    if isinstance(data.get("budget"), (int, float)):
        raise BenchError(f"{path}: budget needs its unit, as a string: e.g. budget = \"2000nfe\" or \"2.5tflop\"")
    given = {k: _text(v, k, path) for k, v in data.items() if k != "set"}
    return RunOptions(**given, sets=_flat_sets(sets, path))


def merge(file: RunOptions, flags: RunOptions) -> RunOptions:
    """The file's options with every flag given on the command line replacing its value; --set flags last."""
    merged = {f.name: getattr(flags, f.name) if getattr(flags, f.name) is not None else getattr(file, f.name)
              for f in dataclasses.fields(RunOptions) if f.name != "sets"}
    return RunOptions(**merged, sets=[*file.sets, *flags.sets])
