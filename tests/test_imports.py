"""The package's import graph has no cycle: every medsemi module imports on its own, in a fresh interpreter, and
no module reaches itself through the imports of others (module level or inside functions; only `if
TYPE_CHECKING:` blocks, which never run, are left out)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import medsemi

PACKAGE = Path(medsemi.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST) -> set[str]:
    """Every module name an import statement of `tree` may load (`from a import b`: a and a.b)."""
    names: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imported(ast.parse(path.read_text())) if target in modules and target != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_medsemi_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "medsemi.engine.trainer" in graph and graph["medsemi.engine.trainer"]
    assert find_cycle(graph) is None


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    modules = [name for name in _modules() if not name.endswith("__main__")]
    result = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
