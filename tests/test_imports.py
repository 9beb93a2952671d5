"""No import circles inside src/condlora: every `import` statement (function-level ones included) is an edge."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HARNESS = ("runner", "study", "bench", "analyze", "cli")


def module_name(file: Path) -> str:
    """'condlora.runner.train' for src/condlora/runner/train.py, 'condlora.runner' for its __init__.py."""
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The condlora modules one import statement of `module` names (a `from X import name` of a submodule: both)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")[: len(module.split(".")) - node.level + is_package]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
    if subs and not node.module:  # `from . import x`: only the submodule x
        return subs
    return ([target] if target in known else []) + subs


def import_graph() -> dict[str, set[str]]:
    """condlora module -> the condlora modules it imports, from the source with `ast` (nothing is executed)."""
    files = {module_name(f): f for f in (SRC / "condlora").rglob("*.py")}
    known = set(files)
    graph = {}
    for name, file in files.items():
        tree = ast.parse(file.read_text(encoding="utf-8"))
        edges = {t for node in ast.walk(tree) for t in imported(node, name, file.name == "__init__.py", known)}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_library(name: str) -> bool:
    """Whether `name` is a library module (the package top level), not one of the harness subpackages."""
    parts = name.split(".")
    return len(parts) < 2 or parts[1] not in HARNESS


def test_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "condlora.errors" in graph["condlora.config"]
    assert "condlora.cli" in graph["condlora.__main__"]
    assert {"condlora.runner.methods", "condlora.errors"} <= graph["condlora.runner.train"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_has_no_import_circle():
    graph = import_graph()
    library = {m: {t for t in edges if is_library(t)} for m, edges in graph.items() if is_library(m)}
    cycle = find_cycle(library)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_harness_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)
