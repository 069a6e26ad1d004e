"""A long-lived local Spark Connect server: one warm JVM that many Dagster runs share.

Every local run otherwise starts its own JVM (~7 s here), which dominates a per-date run (the
rerun sensor's and the daily schedule's runs are per-date). ``backfill-platform spark-server`` starts
``org.apache.spark.sql.connect.service.SparkConnectServer`` (shipped in pyspark 4.2's jars) with the
same Delta/Spark settings as an embedded session, bound to 127.0.0.1. Runs then use it when
``BACKFILL_SPARK_REMOTE=sc://127.0.0.1:PORT`` is set: ``DeltaSparkResource`` opens a thin Spark Connect
client instead of starting a JVM. Needs the ``fast`` extra (``pip install -e '.[fast]'``: pyarrow,
grpcio-status, zstandard for the Connect client).

Delta's ``DeltaTable`` Python API needs Delta's Connect server plugin, which is not published on
Maven Central for Delta 4.4 / Spark 4.2, so the project's table helpers (``resources/tables.py``) use
Delta SQL (``DESCRIBE HISTORY``, ``CREATE TABLE ... USING DELTA``), which works on both kinds of session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from backfill_platform.processes import stop_process_group
from backfill_platform.resources.spark import local_spark_config
from backfill_platform.settings import Settings

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


class SparkServerError(RuntimeError):
    """The Spark Connect server did not come up; the message says why and where its log is."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(settings: Settings, port: int) -> list[str]:
    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    config = local_spark_config(settings)
    config.pop("spark.app.name", None)
    config.pop("spark.driver.extraJavaOptions", None)  # long-lived: keep the JVM's full JIT and GC
    config.update(
        {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port),
            # idle sessions of finished runs are dropped instead of piling up in the server
            "spark.connect.session.manager.defaultSessionTimeout": "10m",
        }
    )
    command = [str(spark_submit), "--name", "backfill_platform-connect", "--class", SERVER_CLASS]
    for key, value in config.items():
        if key == "spark.jars.packages":
            command += ["--packages", value]
        else:
            command += ["--conf", f"{key}={value}"]
    command.append("spark-internal")
    return command


class SparkConnectServerProcess:
    """Start/stop a local Spark Connect server (a process group this object owns)."""

    def __init__(self, settings: Settings | None = None, port: int | None = None, *,
                 data_dir: Path | None = None, log_path: Path | None = None):
        settings = settings or Settings.from_env()
        if data_dir is not None:
            settings = settings.replace(data_dir=Path(data_dir))
        self.settings = settings
        self.port = port or _free_port()
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
                server_command(self.settings, self.port), stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SparkServerError(
                    f"The Spark Connect server exited with code {self.process.returncode} before it "
                    f"listened on 127.0.0.1:{self.port}; see {self.log_path}."
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            self.stop()
            raise SparkServerError(f"The Spark Connect server did not listen within {timeout_s:.0f} s; "
                                   f"see {self.log_path}.")
        self._warm_up()
        return self

    def _warm_up(self) -> None:
        """One tiny Delta round trip, so the first run does not pay for class loading."""
        # In a child process: a Connect client switches its whole process (and the environment its
        # children inherit: SPARK_CONNECT_MODE_ENABLED) to Connect mode.
        path = str(Path(self.settings.data_dir) / "warmup")
        code = (
            "import sys; from backfill_platform.resources.spark_connect import start_remote_session\n"
            "session = start_remote_session(sys.argv[1])\n"
            "session.range(2).write.format('delta').mode('overwrite').save(sys.argv[2])\n"
            "session.sql(f'DESCRIBE HISTORY delta.`{sys.argv[2]}` LIMIT 1').collect()\n"
        )
        completed = subprocess.run([sys.executable, "-c", code, self.remote, path],
                                   capture_output=True, text=True)
        if completed.returncode != 0:
            self.stop()
            raise SparkServerError(
                f"The Spark Connect server at {self.remote} did not complete a Delta write: "
                f"{completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else completed.returncode}; "
                f"see {self.log_path}."
            )

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
