"""Imports inside rsmae point down the layers only, and no module imports itself through others.

The order is written once, here (and drawn in the README's Architecture section): a module may
import modules of its own layer or of a lower one, never of a higher one. Every import counts,
also those inside functions (a lazy import is still a dependency); only ``if TYPE_CHECKING:``
blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = [  # lowest first
    ["errors", "files", "bands", "band_match", "stats", "parallel", "progress", "provenance"],
    ["store"],
    ["tiling"],
    ["data", "augment"],
    ["datasets"],
    ["models"],
    ["tasks"],
    ["landscape"],
    ["evaluation", "predict"],
    ["experiments"],
    ["cli", "__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _imports() -> dict[str, set[str]]:
    """Module -> the rsmae modules it imports (``from rsmae.x import y`` counts ``rsmae.x.y`` if a module)."""
    files = {_module(p): p for p in (ROOT / "rsmae").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        found = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("rsmae."))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsmae"):
                found.add(node.module)
                names = (f"{node.module}.{a.name}" for a in node.names)
                found.update(name for name in names if name in files)
        graph[module] = {m for m in found if m in files and m != module}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None  # the package root re-exports lazily


def test_every_package_has_a_layer() -> None:
    packages = {_module(p).split(".")[1] for p in (ROOT / "rsmae").rglob("*.py") if _module(p) != "rsmae"}
    assert packages <= set(LAYER), f"give these a layer in LAYERS: {sorted(packages - set(LAYER))}"


def test_imports_point_down() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in _imports().items() for b in targets
                    if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a))
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _imports()
    graph = {a: {b for b in targets if b != "rsmae"} for a, targets in graph.items() if a != "rsmae"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)
