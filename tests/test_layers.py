"""The layout's rules, read from the source (tests/import_graph.py; nothing is imported): no import cycle anywhere
in bench/, methods/ and rewards/; each package of bench/ imports only itself and the packages below it (LAYERS,
the order docs/architecture.md draws); methods/ and rewards/ see only the contracts (bench.api and bench/core/);
the contracts see nothing above them. Also: the checker finds a cycle and an upward import that are put there on
purpose, in a copy of the tree. Reads files only: about a second.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.import_graph import REPO, ROOTS, cycles, graph, package_of

LAYERS = ["core", "api", "results", "registry", "prompts", "models", "testbed", "run", "human_eval", "analysis",
          "sweep", "serve", "perf", "cli"]
"""bench/'s packages from the bottom up (`api` is the façade module over core). The root `bench` (docstring only) and
`bench.__main__` (the entry point, above everything) are not layers."""
CONTRACTS = {"core", "api"}
"""What methods/ and rewards/ may import from bench/."""


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule: `a -> b (why)`."""
    bad = []
    for a, targets in sorted(edges.items()):
        pa = package_of(a)
        for b in sorted(targets):
            pb = package_of(b)
            if pa in ("methods", "rewards"):
                if pb not in (*CONTRACTS, "methods", "rewards"):
                    bad.append(f"{a} -> {b} (methods/ and rewards/ import only bench.api and bench/core/)")
            elif pb in ("methods", "rewards"):
                bad.append(f"{a} -> {b} (the harness reaches methods and rewards through the registry only)")
            elif pa == "__main__" or pb == "bench":
                continue
            elif pa not in LAYERS or pb not in LAYERS:
                bad.append(f"{a} -> {b} (a package not in LAYERS: add it to the order and to docs/architecture.md)")
            elif LAYERS.index(pb) > LAYERS.index(pa):
                bad.append(f"{a} -> {b} ({pa} is below {pb})")
    return bad


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_package_imports_only_the_ones_below_it():
    assert violations(graph()) == []


def test_bench_top_level_holds_the_layers_and_three_modules():
    top = {p.stem for p in (REPO / "bench").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert top == {*LAYERS, "__init__", "__main__"}


def test_package_inits_import_nothing():
    """A package's __init__.py is its docstring: importing bench.run.config never runs more than that module's own
    imports (and no re-export can hide a dependency)."""
    for path in (REPO / "bench").rglob("__init__.py"):
        assert not re.search(r"^\s*(import|from)\s", path.read_text(), re.M), path


def test_docs_architecture_draws_the_same_layers():
    page = (REPO / "docs/architecture.md").read_text()
    drawn = re.findall(r"^\s*\d+\s+(\w+)/?\s", page.split("## Layers", 1)[1].split("##", 1)[0], re.M)
    assert drawn == LAYERS[::-1], drawn


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for root in ROOTS:
        shutil.copytree(REPO / root, tmp_path / root, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    return tmp_path


def test_the_checks_fail_on_a_cycle_put_there_on_purpose(tree_copy):
    errors = tree_copy / "bench/core/errors.py"  # the bottom of everything, made to import the runner lazily
    errors.write_text(errors.read_text() + "\n\ndef _oops():\n    from bench.run.runner import run_suite  # noqa\n")
    edges = graph(tree_copy)
    assert any({"bench.core.errors", "bench.run.runner"} <= set(c) for c in cycles(edges))
    assert any(v.startswith("bench.core.errors -> bench.run.runner") for v in violations(edges))


def test_the_checks_fail_on_a_method_that_reaches_the_runner(tree_copy):
    rocm = tree_copy / "methods/rocm.py"
    rocm.write_text(rocm.read_text() + "\nfrom bench.run import runner  # noqa\n")
    assert "methods.rocm -> bench.run.runner (methods/ and rewards/ import only bench.api and bench/core/)" in \
        violations(graph(tree_copy))


def test_every_file_docs_architecture_names_exists():
    """Every repository path the page names in backticks (`bench/run/runner.py`, `methods/`) exists."""
    page = (REPO / "docs/architecture.md").read_text()
    named = set(re.findall(r"`((?:bench|methods|rewards|tests|docs|results)/[\w/.\-]*)`", page))
    assert len(named) > 20
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, missing
