"""Structure the code keeps (STYLE.md 7, 13, 14): no import cycles between modules, no
private name imported from another module, no function body over 100 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_BODY_LINES = 100


def _modules() -> dict[str, ast.Module]:
    out = {}
    for file in sorted(SRC.rglob("*.py")):
        name = ".".join(file.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(file.read_text(), str(file))
    return out


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, str]]:
    """(module, imported name) for every seqtwins import, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqtwins"):
            found += [(str(node.module), a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("seqtwins")]
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, tree in MODULES.items():
        for module, imported in _imports(tree):
            target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
            if target != name and target in MODULES:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    # a package's __init__ re-exporting its modules is not a cycle of the design
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _graph().items()}
    assert _cycles(graph) == []


def test_no_private_names_imported_across_modules() -> None:
    private = [
        f"{name} imports {module}.{imported}"
        for name, tree in MODULES.items()
        for module, imported in _imports(tree)
        if imported.startswith("_") and not imported.startswith("__") and module != name
    ]
    assert private == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_stay_short(module: str) -> None:
    """The body (docstring included, signature excluded) of every function."""
    long = []
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = int(node.end_lineno or 0) - node.body[0].lineno + 1
            if lines > MAX_BODY_LINES:
                long.append(f"{node.name}: {lines} lines")
    assert long == []


def test_the_checks_can_fail() -> None:
    """The cycle finder and the import scan see what they are meant to see."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    tree = ast.parse("def f():\n    from seqtwins.x import _y\n")
    assert _imports(tree) == [("seqtwins.x", "_y")]
