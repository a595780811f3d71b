"""The `bench` command line (typer): `bench --help` lists the commands, each defined in a module of this package
(common.py holds what they share). `main` is the `bench` script's entry point: a BenchError becomes one line,
`error: ...`, and exit code 2 — never a traceback.
"""
# ruff: noqa: I001 (the command modules are imported in the order `bench --help` lists them)

from __future__ import annotations

import os
import sys

# Before anything imports torch (its OpenMP runtime reads this once): threads that finish their work sleep instead
# of spinning. Measured on 2 cores, `bench run --model tiny --methods rocm-kl --budget 3000nfe`: alone 0.48 s a step
# spinning, 0.51-0.61 s sleeping; two copies at once 2.2 s a step each spinning (22% of a lone run's speed: each spins
# on the core the other needs), 0.73-0.75 s sleeping (64-66%). `OMP_WAIT_POLICY=ACTIVE bench ...` on a machine of its own.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.cli.common import app  # noqa: E402
from bench.core.errors import BenchError

# Each module registers its commands on `app`; `bench --help` lists them in this order.
from bench.cli import run, report, trained, tools  # noqa: E402, F401

__all__ = ["app", "main"]


def usage_errors() -> tuple[type, ...]:
    """The exception classes of command-line usage errors: typer's (newer typers carry their own click) and
    click's (older typers use it)."""
    import typer

    kinds: tuple[type, ...] = (typer.TyperException,)
    try:
        import click

        kinds += (click.ClickException,)
    except ImportError:
        pass
    return kinds


def main() -> None:
    import typer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only `bench fetch` may touch the network
    try:
        # standalone_mode=False: usage errors (a missing option, a value of the wrong type, an unknown command or
        # option) reach us as exceptions instead of a multi-line usage box, and are printed in one line too
        result = app(standalone_mode=False)
        if isinstance(result, int) and result:  # `bench` alone prints the help and returns an exit code
            sys.exit(result)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except usage_errors() as e:
        names, ctx = [], getattr(e, "ctx", None)
        while ctx is not None and ctx.parent is not None:  # the subcommands' names, not the program's
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        command = " ".join(["bench", *names])
        print(f"error: {' '.join(e.format_message().split())} (see `{command} --help`)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted: completed runs are kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
