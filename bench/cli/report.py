"""`bench report` (tables, plots and grids of one suite) and `bench claims` (the paper's claims over suites); both read
files only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.cli.common import app, split_list
from bench.core.errors import BenchError


@app.command()
def report(suite_dir: Path = typer.Argument(..., help="A folder written by `bench run`."),
           out: Path = typer.Option(None, help="Where to write (default SUITE_DIR/report).")) -> None:
    """Tables (Markdown, CSV, LaTeX), plots and image grids from a suite folder (reads files only)."""
    from bench.analysis.report import build_report

    if not suite_dir.is_dir():
        raise BenchError(f"suite folder not found: {suite_dir}")
    files = build_report(suite_dir, out)
    table = next((f for f in files if f.name == "table.md"), None)
    if table is not None:
        print(table.read_text())
    print(f"wrote {len(files)} files to {files[0].parent if files else out}")


@app.command()
def claims(suites: list[Path] = typer.Argument(None, help="Suite folders of runs trained on the proxy rewards."),
           out: Path = typer.Option(..., help="Where to write claims.md and the plots."),
           ceiling: list[Path] = typer.Option([], help="Suite folder(s) of the same methods trained on --gold."),
           sweep: Optional[Path] = typer.Option(None, help="A `bench sweep` folder: C4 from its trials.csv."),
           gold: str = typer.Option("testbed-gold", help="The held-out metric nobody trains on."),
           gold_gain: float = typer.Option(0.01, help="C1 gold threshold: base x (1 + this)."),
           proxy_gain: float = typer.Option(0.5, help="C1 proxy threshold: base x (1 + this)."),
           split: str = typer.Option("test", help="Split of C1 and the frontier."),
           at: str = typer.Option("", help="Comma-separated compute points (the suites' unit, e.g. 15000,45000) "
                                           "at which to tabulate every metric (each run interpolated "
                                           "between its evaluation points).")) -> None:
    """The paper's claims C1 (compute to threshold), C4 (sensitivity over sweep trials) and C6 (train-test gap,
    gold-versus-√KL frontier) from suite folders: tables in OUT/claims.md and one plot each (reads files only)."""
    from bench.analysis.claims import ClaimsConfig, write_claims

    suites = suites or []
    for folder in [*suites, *ceiling, *([sweep] if sweep else [])]:
        if not folder.is_dir():
            raise BenchError(f"folder not found: {folder}")
    if gold_gain < 0 or proxy_gain < 0:
        raise BenchError("--gold-gain and --proxy-gain must be >= 0")
    try:
        budgets = tuple(float(x) for x in split_list(at))
    except ValueError:
        raise BenchError(f"--at {at}: give numbers, e.g. --at 15000,45000") from None
    files = write_claims(suites, out, ClaimsConfig(gold=gold, gold_gain=gold_gain, proxy_gain=proxy_gain,
                                                   split=split, budgets=budgets), ceiling=ceiling, sweep=sweep)
    print(files[0].read_text())
    print(f"wrote {len(files)} files to {out}")
