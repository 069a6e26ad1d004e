"""The package's layout rules, checked on its source: no import cycle, no module over 500 lines,
Dagster internals only in ``dagster_internals.py``, and nothing test-only in the product."""

from __future__ import annotations

import ast
from pathlib import Path

from backfill_platform.settings import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "backfill_platform"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules imported anywhere in ``path`` (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages expose them; not a cycle
    for name in graph:
        graph[name] = {dep for dep in graph[name] if not dep.startswith(name + ".")}
    cycles = []

    def visit(node, stack, seen):
        for dep in sorted(graph[node]):
            if dep in stack:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in seen:
                seen.add(dep)
                visit(dep, stack + [dep], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert cycles == []


def test_no_module_over_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}


def test_nothing_test_only_ships_in_the_product():
    for name, path in _modules().items():
        text = path.read_text()
        assert "databricks_emulator" not in _imports_text(text), name
        assert "backfill_platform_tests" not in _imports_text(text), name
        if name != "backfill_platform.dagster_internals":
            assert "dagster._" not in text, f"{name} uses a Dagster internal"


def _imports_text(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith(("import ", "from ")))
