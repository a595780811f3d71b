"""The `bench` command line (typer): `bench --help` lists the commands, each defined in a module of this package
(common.py holds what they share). `main` is the `bench` script's entry point: a BenchError becomes one line,
`error: ...`, and exit code 2 — never a traceback.
"""
# ruff: noqa: I001 (the command modules are imported in the order `bench --help` lists them)

from __future__ import annotations

import os
import sys

from bench.cli.common import app
from bench.core.errors import BenchError

# Each module registers its commands on `app`; `bench --help` lists them in this order.
from bench.cli import run, report, trained, tools  # noqa: E402, F401

__all__ = ["app", "main"]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only `bench fetch` may touch the network
    try:
        app()
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: completed runs are kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
