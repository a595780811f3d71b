"""The documentation in docs/: every file the code or a page cites exists, the docs index lists every page, and
the pages cover what they claim to (every registered method and every field of its config, every sampler option,
every field of the results schema). Reads files only: well under a second."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from bench.results import schema

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CODE_DIRS = ("bench", "methods", "rewards", "tests")


def backticked(page: str) -> set[str]:
    """Every `name` written in backticks on a docs page (table cells may list several)."""
    return set(re.findall(r"`([^`\n]+)`", (DOCS / page).read_text()))


def test_every_cited_docs_file_exists():
    cited = {}
    for folder in CODE_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            for name in re.findall(r"docs/([\w.-]+\.md)", path.read_text(errors="replace")):
                cited.setdefault(name, path.relative_to(REPO))
    assert cited, "no code cites docs/ at all"
    missing = {name: str(where) for name, where in cited.items() if not (DOCS / name).exists()}
    assert not missing, missing


@pytest.mark.parametrize("page", [*sorted(p.name for p in DOCS.glob("*.md")), "../README.md"])
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (DOCS / page).parent.joinpath(target).exists(), f"{page} links to missing {target}"


def test_the_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not list {page.name}"


def test_methods_page_covers_every_method_and_every_option():
    from bench.core.sampler import SamplerConfig
    from bench.registry.catalog import METHODS
    from bench.registry.lookup import method_class

    names = backticked("methods.md")
    for method in METHODS:
        assert method in names, f"docs/methods.md does not describe `{method}`"
        fields = {f.name for f in dataclasses.fields(method_class(method)[0].Config)}
        undocumented = sorted(fields - names)
        assert not undocumented, f"docs/methods.md lacks {method}'s options {undocumented}"
    assert {f.name for f in dataclasses.fields(SamplerConfig)} <= names


def test_results_format_page_covers_the_schema():
    names = backticked("results-format.md")
    fields = set(schema.COUNTER_KEYS)
    for cls in (schema.RunConfig, schema.EvalRow, schema.Command, schema.Manifest):
        fields |= {f.name for f in dataclasses.fields(cls)}
    fields -= {"config", "commands", "counters", "logs", "final"}  # documented as sections, not one cell
    documented = {part.strip().lstrip(".") for cell in names for part in cell.split(",")}
    documented |= {cell.rsplit(".", 1)[-1] for cell in documented}
    assert not sorted(fields - documented), sorted(fields - documented)
