"""``backfill-platform restore`` over Spark Connect (``BACKFILL_SPARK_REMOTE``): a Connect session has no
Delta Python API, so the restore must be Delta SQL only. A real local Spark Connect server (started and
stopped here), the CLI in subprocesses (a Connect client switches its whole process to Connect mode,
which the shared classic session of pytest must not see)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backfill_platform.resources import local_resources
from backfill_platform.settings import PROJECT_ROOT
from backfill_platform.spark_server import SparkConnectServerProcess

from .conftest import make_dagster_home, subprocess_env
from .test_restore import _counts, _history, _write


@pytest.mark.slow
def test_restore_over_spark_connect(spark, settings, tmp_path):
    path = local_resources(settings)["tables"].destination.path
    _write(spark, path, ["2024-03-04", "2024-03-05"], 3)  # v0
    _write(spark, path, ["2024-03-06"], 3, mode="append")  # v1
    _write(spark, path, ["2024-03-04"], 5, predicate="position_date = '2024-03-04'")  # v2
    home = make_dagster_home(tmp_path / "home")
    script = Path(sys.executable).parent / "backfill-platform"

    with SparkConnectServerProcess(settings, data_dir=tmp_path / "server") as server:
        env = subprocess_env(settings, home, PYTHONPATH=str(PROJECT_ROOT), BACKFILL_SPARK_REMOTE=server.remote)

        def restore(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(script), "restore", *argv], cwd=PROJECT_ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)

        whole = restore("--version", "0")
        assert whole.returncode == 0, whole.stderr[-3000:]
        assert "to the content of version 0 (was version 2, now version 3)" in whole.stdout
        assert "2024-03-04: 5 -> 3 rows" in whole.stdout and "2024-03-06: 3 -> 0 rows" in whole.stdout
        assert _counts(spark, path) == {"2024-03-04": 3, "2024-03-05": 3}

        dates = restore("--from", "2024-03-05", "--to", "2024-03-06", "--version", "1")
        assert dates.returncode == 0, dates.stderr[-3000:]
        assert "2024-03-06: 0 -> 3 rows" in dates.stdout and "dates affected: 1" in dates.stdout
    assert _counts(spark, path) == {"2024-03-04": 3, "2024-03-05": 3, "2024-03-06": 3}
    history = _history(spark, path)
    assert history[3][1] == "RESTORE" and history[4][1] == "WRITE" and len(history) == 5
