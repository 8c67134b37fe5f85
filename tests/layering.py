"""The import graph of the project's packages, read from the source (an AST walk).

Run ``python tests/layering.py`` to print which floor imports which (with the number of
modules on each side), or ``python tests/layering.py --modules`` for every module-level
edge. ``tests/test_layering.py`` checks the graph against the floors of the house.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = {"flobc": "flobc", "storage": "flobc.storage", "consensus": "flobc.consensus",
               "validator": "flobc.validator", "trainer": "flobc.trainer",
               "configs": "flobc.configs"}
"""Each top-level folder and the package it is installed as (pyproject's package-dir)."""

FLOORS = {"core": 0, "storage": 1, "consensus": 2, "protocol": 3, "validator": 4,
          "trainer": 4, "launch": 5}
"""What may import what: a module imports only its own floor or lower ones, and the two
siblings on floor 4 never import each other."""


def floor_of(module: str) -> str:
    """The floor a ``flobc.*`` module belongs to."""
    parts = module.split(".")
    second = parts[1] if len(parts) > 1 else ""
    if second in ("storage", "consensus", "protocol", "validator", "trainer", "launch"):
        return second
    if second == "__main__":
        return "launch"
    return "core"  # codec, crypto, config, errors, registry, ml, configs


def modules() -> dict[str, Path]:
    """Every module of the project by its installed name."""
    found = {}
    for folder, package in SOURCE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in ``path``, in functions too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                yield target, node.lineno


def _resolve(name: str, known: set[str]) -> str | None:
    """The project module ``name`` is, or is in (``from a.b import c`` names a.b.c or a.b)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def edges() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    found = modules()
    known = set(found)
    graph: dict[str, dict[str, int]] = {}
    for module, path in found.items():
        targets: dict[str, int] = {}
        for target, line in imports(module, path, known):
            targets.setdefault(target, line)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def floor_graph(graph: dict[str, dict[str, int]]) -> Counter[tuple[str, str]]:
    """(importing floor, imported floor) -> number of module-level edges."""
    return Counter((floor_of(a), floor_of(b)) for a, targets in graph.items()
                   for b in targets if floor_of(a) != floor_of(b))


def main(argv: list[str]) -> None:
    graph = edges()
    if "--modules" in argv:
        for module, targets in sorted(graph.items()):
            for target in sorted(targets):
                print(f"{module} -> {target}")
        return
    for (a, b), count in sorted(floor_graph(graph).items(),
                                key=lambda e: (FLOORS[e[0][0]], e[0][0], FLOORS[e[0][1]])):
        print(f"{a:>9} -> {b:<9} {count:3d} imports")


if __name__ == "__main__":
    main(sys.argv[1:])
