"""The import graph of the source tree, read from the code with `ast` (nothing is imported): every `import` and
`from … import` anywhere in a module counts, at module level or inside a function — a lazy import is still a
dependency. Used by tests/test_layers.py; `python -m tests.import_graph` prints the layout's numbers (modules per
package, the longest import chain, any cycle).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("bench", "methods", "rewards")


def modules(repo: Path = REPO, roots: tuple[str, ...] = ROOTS) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under the roots (a package is its __init__.py)."""
    found = {}
    for root in roots:
        for path in sorted((repo / root).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The modules of `known` an import statement names: `from pkg import name` is pkg.name where that is a
    module, else pkg; a name not in `known` is cut back to its longest known prefix, an outside one dropped."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the package of this module, `level - 1` packages up
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def graph(repo: Path = REPO, roots: tuple[str, ...] = ROOTS) -> dict[str, set[str]]:
    """{module: the modules it imports} over the roots (imports of outside packages left out)."""
    known = modules(repo, roots)
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module] |= {t for t in imported(node, module, path.name == "__init__.py", known) if t != module}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def longest_chain(edges: dict[str, set[str]], start: str) -> list[str]:
    """The longest import path from `start` (the graph must have no cycle)."""
    memo: dict[str, list[str]] = {}

    def walk(v: str) -> list[str]:
        if v not in memo:
            memo[v] = [v] + max((walk(w) for w in edges[v]), key=len, default=[])
        return memo[v]

    return walk(start)


def package_of(module: str) -> str:
    """`bench.run.runner` -> `run`; `bench.api` -> `api`; `methods.rocm` -> `methods`; `bench` -> `bench`."""
    parts = module.split(".")
    return parts[0] if parts[0] != "bench" or len(parts) == 1 else parts[1]


def main() -> None:
    edges = graph()
    print("modules per package:", dict(Counter(package_of(m) for m in edges)))
    top = sorted(p.name for p in (REPO / "bench").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    print(f"bench/ top level ({len(top)}):", " ".join(top))
    chain = longest_chain(edges, "bench.cli.main") if not cycles(edges) else []
    print(f"longest import chain from bench.cli.main: {len(chain)} modules:", " -> ".join(chain))
    print("cycles:", cycles(edges) or "none")


if __name__ == "__main__":
    sys.exit(main())
