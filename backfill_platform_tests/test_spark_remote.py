"""BACKFILL_SPARK_REMOTE: a run that is told to use a warm Spark Connect server that is not there
fails with a message that says how to start one (checked in a subprocess: a Connect session switches
the whole process's pyspark to Connect mode, which the shared classic session of pytest must not see)."""

from __future__ import annotations

import subprocess
import sys

from backfill_platform.settings import PROJECT_ROOT, Settings

from .conftest import free_port

CODE = """
from backfill_platform.resources.spark import SparkStartError, start_remote_session
try:
    start_remote_session({remote!r})
except SparkStartError as error:
    print("ERROR:", error)
"""


def test_unreachable_spark_connect_server_is_a_clear_error():
    remote = f"sc://127.0.0.1:{free_port()}"
    completed = subprocess.run(
        [sys.executable, "-c", CODE.format(remote=remote)], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert f"No Spark Connect server answers at BACKFILL_SPARK_REMOTE={remote}" in completed.stdout
    assert "backfill-platform spark-server" in completed.stdout
    assert "unset BACKFILL_SPARK_REMOTE" in completed.stdout


def test_spark_remote_setting_reaches_the_spark_resource():
    from backfill_platform.resources import local_resources

    settings = Settings.from_env({"BACKFILL_SPARK_REMOTE": " sc://127.0.0.1:15002 "})
    assert settings.spark.remote == "sc://127.0.0.1:15002"
    assert local_resources(settings)["pyspark"].remote == "sc://127.0.0.1:15002"
    assert local_resources(Settings())["pyspark"].remote == ""
