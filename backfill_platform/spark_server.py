"""``backfill-platform spark-server``: a local Spark Connect server in the foreground, until Ctrl-C.

Runs use it with ``BACKFILL_SPARK_REMOTE=sc://127.0.0.1:PORT`` (which wins over the shared server that
local runs otherwise start and share on their own: ``resources/shared_spark.py``). The server has the
same Delta/Spark settings as an embedded session (``local_spark_config``).

Delta's ``DeltaTable`` Python API needs Delta's Connect server plugin, which is not published on
Maven Central for Delta 4.4 / Spark 4.2, so the project's table helpers (``resources/tables.py``) use
Delta SQL (``DESCRIBE HISTORY``, ``CREATE TABLE ... USING DELTA``), which works on both kinds of session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from backfill_platform.processes import stop_process_group
from backfill_platform.resources.shared_spark import SparkServerError, answers, free_port, server_command, warm_up
from backfill_platform.resources.spark import local_spark_config
from backfill_platform.settings import Settings


class SparkConnectServerProcess:
    """Start/stop a local Spark Connect server (a process group this object owns)."""

    def __init__(self, settings: Settings | None = None, port: int | None = None, *,
                 data_dir: Path | None = None, log_path: Path | None = None):
        settings = settings or Settings.from_env()
        if data_dir is not None:
            settings = settings.replace(data_dir=Path(data_dir))
        self.settings = settings
        self.port = port or free_port()
        self.log_path = log_path or Path(settings.data_dir) / "spark-connect-server.log"
        self.process: subprocess.Popen | None = None

    @property
    def remote(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> SparkConnectServerProcess:
        for key in ("spark-tmp", "spark-warehouse"):
            (Path(self.settings.data_dir) / key).mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {"PYSPARK_PYTHON": sys.executable, **os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
        env.pop("SPARK_HOME", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                server_command(local_spark_config(self.settings), self.port), stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SparkServerError(
                    f"The Spark Connect server exited with code {self.process.returncode} before it "
                    f"listened on 127.0.0.1:{self.port}; see {self.log_path}."
                )
            if answers(self.port, timeout_s=1):
                break
            time.sleep(0.3)
        else:
            self.stop()
            raise SparkServerError(f"The Spark Connect server did not listen within {timeout_s:.0f} s; "
                                   f"see {self.log_path}.")
        self._warm_up()
        return self

    def _warm_up(self) -> None:
        try:
            warm_up(self.remote, Path(self.settings.data_dir) / "warmup")
        except SparkServerError as error:
            self.stop()
            raise SparkServerError(f"{error}; see {self.log_path}.") from None

    def stop(self, timeout_s: float = 30) -> None:
        stop_process_group(self.process, timeout_s)

    def __enter__(self) -> SparkConnectServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(port: int, settings: Settings | None = None, say=print) -> int:
    """``backfill-platform spark-server``: run a warm local Spark Connect server until Ctrl-C."""
    server = SparkConnectServerProcess(settings, port)
    say(f"Starting a local Spark Connect server on 127.0.0.1:{port} (log: {server.log_path}) ...")
    try:
        server.start()
    except SparkServerError as error:
        say(f"backfill-platform: error: {error}")
        return 2
    say(
        "Ready. Runs of the local deployment use it (no JVM start per run) when their processes see\n"
        f"  export BACKFILL_SPARK_REMOTE={server.remote}\n"
        "(set it before `dagster dev` / `dagster-daemon run` / `backfill-platform backfill`). Ctrl-C stops it."
    )
    try:
        while server.process.poll() is None:
            time.sleep(1)
        say(f"The Spark Connect server exited with code {server.process.returncode}; see {server.log_path}.")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
