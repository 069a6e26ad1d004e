"""BACKFILL_SPARK_REMOTE: a run that is told to use a warm Spark Connect server that is not there
fails with a message that says how to start one (checked in a subprocess: a Connect session switches
the whole process's pyspark to Connect mode, which the shared classic session of pytest must not see)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

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


KILLED_WRITE = """
import sys
from backfill_platform.resources.spark import local_spark_config, start_remote_session, start_spark_session
from backfill_platform.settings import Settings
remote, table, scratch = sys.argv[1:4]
spark = start_remote_session(remote) if remote else start_spark_session(local_spark_config(Settings(data_dir=scratch)))
print("writing", flush=True)
(spark.range(0, 30_000_000, numPartitions=4).selectExpr("id", "sha2(cast(id AS STRING), 512) AS h")
 .write.format("delta").mode("overwrite").save(table))
print("written", flush=True)
"""


def _commits_after_sigkill(remote: str, table: Path, scratch: Path, wait_s: float = 90) -> list[str]:
    """SIGKILL a Python process 3 s into a Delta write of ~20 s (its Spark: ``remote``, or an embedded
    JVM); the table's commit files that appear within ``wait_s`` after the kill."""
    import os
    import signal
    import time

    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, remote, str(table), str(scratch)],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(3)
        assert writer.poll() is None and not list(table.glob("_delta_log/*.json"))  # killed mid-write
        os.kill(writer.pid, signal.SIGKILL)  # the run worker only, as the OOM killer or a lost host would
        writer.wait()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not list(table.glob("_delta_log/*.json")):
            time.sleep(1)
        return sorted(path.name for path in table.glob("_delta_log/*.json"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(writer.pid, signal.SIGKILL)  # an embedded JVM the writer left behind


@pytest.mark.slow
def test_the_write_of_a_killed_run_commits_on_a_spark_connect_server_and_not_in_an_embedded_jvm(settings, tmp_path):
    """Why the warm Spark Connect server stays opt-in (issue 13). Spark 4.2's Connect server runs an
    operation to its end after its client died: a writer SIGKILLed 3 s into a Delta write still commits it
    after the kill. A run Dagster records as FAILED (its worker died) would then change the table, and a
    rerun of its dates would race with that write. In the default deployment the run's embedded JVM goes
    down with the run worker and nothing commits.
    (Measured by hand: neither a non-reattachable execution nor spark.connect.execute.manager.detachedTimeout=5s
    with a 1 s maintenance interval stops it.) When this fails on the server side, Spark stops such writes
    and the server can become the default."""
    from backfill_platform.spark_server import SparkConnectServerProcess

    assert _commits_after_sigkill("", tmp_path / "embedded", tmp_path / "scratch", wait_s=40) == []
    with SparkConnectServerProcess(settings, data_dir=tmp_path / "server") as server:
        commits = _commits_after_sigkill(server.remote, tmp_path / "connect", tmp_path / "scratch")
    assert commits == ["00000000000000000000.json"]
