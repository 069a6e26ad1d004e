"""The workspace emulator is its own package: runnable with ``python -m databricks_emulator`` and
absent from the code the Databricks launcher uploads with every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from backfill_platform.resources.databricks import _staged_package


def test_emulator_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "databricks_emulator", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


def test_staged_package_holds_no_emulator_code():
    with _staged_package() as folder:
        root = Path(folder)
        files = [path for path in root.rglob("*") if path.is_file()]
        assert any(path.name == "definitions.py" for path in files)  # the product package is there
        for path in root.rglob("*"):
            relative = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
            assert "databricks_emulator" not in relative
            assert "dev/" not in relative
        assert [
            path.relative_to(root).as_posix() for path in files
            if path.suffix == ".py" and "DatabricksEmulator" in path.read_text(errors="replace")
        ] == []
