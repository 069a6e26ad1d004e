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


PLAN_IN_A_NEW_PROCESS = """
import json, sys
from backfill_platform import cli
code = cli.main(["plan", "--from", "2016-01-01", "--to", "2025-12-31", "--format", "json"])
heavy = {"pyspark", "dagster_pyspark", "pyarrow", "pandas", "delta"}
print(json.dumps({"code": code, "imported": sorted({name.split(".")[0] for name in sys.modules} & heavy)}))
"""


def test_plan_imports_no_spark_arrow_or_pandas(tmp_path):
    """``backfill-platform plan`` reads the calendar and Dagster's runs only: importing pyspark, pyarrow
    and pandas would cost it about 1 s per call (docs/benchmark.md). The first process computes pandas'
    holidays once (README, "The business-day calendar"); the next one imports none of the three."""
    import json
    import os
    import subprocess
    import sys

    from backfill_platform_tests.conftest import make_dagster_home

    env = {**os.environ, "DAGSTER_HOME": str(make_dagster_home(tmp_path / "home")),
           "BACKFILL_DATA_DIR": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "BACKFILL_START_DATE": "2016-01-01"}

    def plan() -> dict:
        done = subprocess.run([sys.executable, "-c", PLAN_IN_A_NEW_PROCESS], capture_output=True, text=True,
                              env=env, timeout=120, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    assert plan()["code"] == 0
    assert plan() == {"code": 0, "imported": []}
