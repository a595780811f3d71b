"""The one exception type for mistakes a user can fix: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

import difflib


class BenchError(Exception):
    """A user-facing error: bad name, bad budget, missing weights, corrupt file, NaN loss, ..."""


def unknown_name(kind: str, name: str, available: list[str] | tuple[str, ...]) -> BenchError:
    """'unknown method 'rocm-kll'; did you mean 'rocm-kl'? available: ...' (lm-evaluation-harness style)."""
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return BenchError(f"unknown {kind} '{name}'{hint} available: {', '.join(sorted(available))}")
