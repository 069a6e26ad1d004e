"""Spark for the assets: dagster-pyspark's resource, with Delta Lake, started only when first used.

Locally the session is a ``local[N]`` Spark with Delta's jars (resolved from Maven Central once and
cached by Ivy, or given as local jar files). On Databricks the same resource returns the cluster's
session (``getOrCreate``), where Delta is built in. Starting a JVM costs seconds, so nothing starts
when definitions load, and a run whose step executes elsewhere (the Databricks step launcher) never
starts one in the launching process.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster_pyspark import LazyPySparkResource
from pydantic import PrivateAttr

from backfill_platform import tags
from backfill_platform.resources.guard import refuse_resource_overrides
from backfill_platform.resources.spark_connect import (
    SparkStartError,
    run_session_id,
    server_address,
    start_remote_session,
)
from backfill_platform.settings import Settings

SCALA_VERSION = "2.13"
SHORT_LIVED_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def delta_maven_coordinate() -> str:
    """The delta-spark artifact matching the installed pyspark and delta-spark wheels."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    delta_version = importlib.metadata.version("delta-spark")
    return f"io.delta:delta-spark_{spark_minor}_{SCALA_VERSION}:{delta_version}"


def local_spark_config(settings: Settings) -> dict[str, str]:
    """Spark settings for the embedded local deployment, sized for a small machine."""
    data_dir = Path(settings.data_dir)
    config = {
        "spark.master": settings.spark.master,
        "spark.app.name": "backfill_platform",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.warehouse.dir": str(data_dir / "spark-warehouse"),
        "spark.local.dir": str(data_dir / "spark-tmp"),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.memory": "2g",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        # Small data, two cores: the defaults (200 shuffle partitions, 50 snapshot partitions)
        # make every Delta commit schedule hundreds of empty tasks.
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
        # A run's JVM lives for seconds to a minute: C1-only JIT and the serial GC cut its start-up
        # and first-query CPU (the first Delta read+write of a run took ~2x longer with C2 here).
        # The long-lived Spark Connect servers (resources/shared_spark.py) drop this and keeps the full JIT.
        "spark.driver.extraJavaOptions": SHORT_LIVED_JVM_OPTIONS,
    }
    config.update(delta_jars_config(settings))
    config.update(settings.spark.conf)
    return config


def delta_jars_config(settings: Settings) -> dict[str, str]:
    """How Spark gets Delta's jars: given files, files cached by an earlier start, or Maven.

    The first start resolves ``io.delta:delta-spark_*`` (and its dependencies) from Maven Central
    into a per-user cache with Ivy; every later start, in any clone, loads the cached files with
    ``spark.jars`` and skips resolution (which costs a second and is not safe to run from several
    processes at once).
    """
    if settings.spark.jars:
        return {"spark.jars": settings.spark.jars}
    coordinate = delta_maven_coordinate()
    ivy_home = settings.spark.jar_cache_dir / coordinate.replace(":", "_")
    jars = sorted((ivy_home / "jars").glob("*.jar"))
    if (ivy_home / "complete").exists() and jars:
        return {"spark.jars": ",".join(str(jar) for jar in jars)}
    return {"spark.jars.packages": coordinate, "spark.jars.ivy": str(ivy_home)}


def _mark_jar_cache_complete(spark_config: dict[str, Any]) -> None:
    ivy_home = spark_config.get("spark.jars.ivy")
    if ivy_home and spark_config.get("spark.jars.packages") and any(Path(ivy_home, "jars").glob("*.jar")):
        Path(ivy_home, "complete").write_text(spark_config["spark.jars.packages"] + "\n")


def _ivy_jar_dir(spark_config: dict[str, Any]) -> Path:
    ivy_home = spark_config.get("spark.jars.ivy")
    return Path(ivy_home) / "jars" if ivy_home else Path.home() / ".ivy2.5.2" / "jars"


def explain_start_failure(spark_config: dict[str, Any], error: BaseException) -> str:
    """Turn Spark's 'Java gateway process exited' into what the user must do."""
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return (
            "Spark cannot start because no Java runtime was found (JAVA_HOME unset and no 'java' "
            "on PATH). Install Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless, "
            "macOS: brew install openjdk@17) or set JAVA_HOME, then run again."
        )
    packages = spark_config.get("spark.jars.packages", "")
    if packages:
        _, artifact, version = packages.split(",")[0].split(":")
        jar = _ivy_jar_dir(spark_config) / f"io.delta_{artifact}-{version}.jar"
        if not jar.exists():
            return (
                f"Spark could not start because Delta Lake's jars ({packages}) could not be "
                f"resolved: they are not in the Ivy cache ({jar.parent}) and could not be downloaded "
                "from Maven Central (see the 'UNRESOLVED DEPENDENCIES' lines Spark printed above). "
                "Connect to Maven Central once so Spark can cache them, or fetch them with Maven "
                f"(mvn dependency:copy -Dartifact={packages} and io.delta:delta-storage:{version} "
                "-DoutputDirectory=jars) and set BACKFILL_SPARK_JARS to the comma-separated jar paths."
            )
    return f"Spark could not start: {error}. See the lines Spark printed above for the cause."


class DeltaSparkResource(LazyPySparkResource):
    """dagster-pyspark's ``LazyPySparkResource`` (no session until ``spark_session`` is read), with
    Delta's jars, clear start-up errors, and an optional Spark Connect server instead of a JVM."""

    log_level: str = "ERROR"
    # sc://host:port of a warm Spark Connect server (``backfill-platform spark-server``); empty: the
    # shared server below, else an embedded JVM in this process.
    remote: str = ""
    # the data dir's shared server (resources/shared_spark.py): its state folder, and how long it outlives
    # its last run; empty: an embedded JVM
    shared_server_dir: str = ""
    shared_server_idle_seconds: float = 900.0

    _run: Any = PrivateAttr(default=None)
    _instance: Any = PrivateAttr(default=None)
    _log: Any = PrivateAttr(default=None)
    _shared: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context) -> None:
        refuse_resource_overrides(context.dagster_run)  # before any session can start
        self._run, self._instance, self._log = context.dagster_run, context.instance, context.log

    def teardown_after_execution(self, context) -> None:
        if self._shared is not None:  # the shared server may stop once no run holds it
            self._shared.release()
            self._shared = None

    def _shared_remote(self) -> str:
        """The shared server's URL (started if needed), or "" to fall back to an embedded JVM."""
        if self.remote or not self.shared_server_dir:
            return self.remote
        from backfill_platform.resources.shared_spark import SparkServerError, acquire_shared_server

        try:
            # the server's spark-submit may resolve Delta's jars into the shared Ivy cache: one process at a time
            with _jar_resolution_lock(self.spark_config):
                self._shared = acquire_shared_server(Path(self.shared_server_dir), self.spark_config,
                                                     self.shared_server_idle_seconds)
            _mark_jar_cache_complete(self.spark_config)
        except Exception as error:  # whatever went wrong, the run still has Spark: its own JVM
            if self._log is not None:
                reason = str(error) if isinstance(error, SparkServerError) else f"{type(error).__name__}: {error}"
                self._log.warning(f"Starting an embedded Spark instead of the shared Spark server: {reason}.")
            return ""
        if self._log is not None:
            verb = "Started" if self._shared.started else "Using"
            self._log.info(f"{verb} the shared Spark server {self._shared.remote} (process group "
                           f"{self._shared.state['pgid']}, log {self.shared_server_dir}/server.log).")
        return self._shared.remote

    @property
    def started_session(self) -> Any:
        """The session if this resource started one, else None (never starts one)."""
        return self._spark_session

    def _init_session(self) -> None:
        # LazyPySparkResource's hook: called on the first read of spark_session / spark_context.
        if self._spark_session is None:
            in_run = self._run is not None and self._instance is not None
            if remote := self._shared_remote():
                session_id = run_session_id(self._run.run_id) if in_run else None
                shared_dir, token = (self.shared_server_dir, self._shared.token) if self._shared else ("", None)
                if session_id:
                    # before the session can run anything: a failed run's end interrupts its session
                    # (resources/spark_connect.py)
                    self._instance.add_run_tags(self._run.run_id, {tags.SPARK_REMOTE: server_address(remote),
                                                                   tags.SPARK_SERVER_DIR: shared_dir})
                self._spark_session = start_remote_session(remote, session_id, token)
            else:
                if in_run and self._run.tags.get(tags.SPARK_REMOTE):
                    # a run retry inherits its parent's tags: this run is not on that server
                    self._instance.add_run_tags(self._run.run_id, {tags.SPARK_REMOTE: "", tags.SPARK_SERVER_DIR: ""})
                self._spark_session = start_spark_session(self.spark_config, self.log_level)


@contextlib.contextmanager
def _jar_resolution_lock(spark_config: dict[str, Any]) -> Iterator[None]:
    """One process at a time resolves jars into the shared Ivy cache (Ivy is not safe otherwise)."""
    ivy_home = spark_config.get("spark.jars.ivy")
    if not (ivy_home and spark_config.get("spark.jars.packages")):
        yield
        return
    Path(ivy_home).mkdir(parents=True, exist_ok=True)
    with open(Path(ivy_home) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start_spark_session(spark_config: dict[str, Any], log_level: str = "ERROR") -> Any:
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Spark's Python workers (Python UDFs) run PYSPARK_PYTHON, else the first `python3` on PATH,
    # which may lack this project's packages (pyspark 4 workers import pyarrow for UDFs): use this
    # interpreter unless the user chose one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key in ("spark.local.dir", "spark.sql.warehouse.dir"):
        if key in spark_config:
            Path(spark_config[key]).mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder
    for key, value in spark_config.items():
        builder = builder.config(key, value)
    try:
        with _jar_resolution_lock(spark_config), _keeping_the_interrupt_handler():
            session = builder.getOrCreate()
    except (PySparkRuntimeError, FileNotFoundError, RuntimeError) as error:
        raise SparkStartError(explain_start_failure(spark_config, error)) from error
    session.sparkContext.setLogLevel(log_level)
    _mark_jar_cache_complete(spark_config)
    return session


# --- UPSTREAM WORKAROUND (pyspark 4.2 + Dagster 1.13): Cancel must stop a running local run -------
# 1. A new SparkContext replaces the process's SIGINT handler with one that calls cancelAllJobs() on
#    the main thread's py4j connection, then raises KeyboardInterrupt. Dagster terminates a run by
#    sending its worker SIGINT; with pyspark's handler the py4j call fails ("reentrant call") and runs
#    went on to SUCCESS 30-80 s after Cancel. Fix: keep the handler Dagster installed.
# 2. While the main thread waits for the JVM (a Spark job), the signal does not interrupt it: Python
#    runs signal handlers in the main thread only, between bytecodes. Fix: a watcher thread polls the
#    run's status; when the run is CANCELING (Terminate, a run timeout), it cancels the Spark jobs on
#    its own py4j connection, the main thread's call returns and Dagster's interruption proceeds.


@contextlib.contextmanager
def _keeping_the_interrupt_handler() -> Iterator[None]:
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        yield
    finally:
        if in_main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def cancel_spark_jobs_on_termination(pyspark: Any, instance: Any, run_id: str, poll_s: float = 1.0) -> Iterator[None]:
    """Run a step's Spark work; when the run is being terminated (Cancel, a run timeout), cancel the
    Spark jobs of ``pyspark``'s session (if it started), so the step stops and nothing commits."""
    import dagster as dg

    stop = threading.Event()
    terminating = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)

    def watch() -> None:
        while not stop.wait(poll_s):
            try:
                run = instance.get_run_by_id(run_id)
            except Exception:  # storage busy: look again next time
                continue
            if run is not None and run.status in terminating:
                _cancel_all_jobs(getattr(pyspark, "started_session", None))
                return

    watcher = threading.Thread(target=watch, name="cancel-spark-on-termination", daemon=True)
    watcher.start()
    try:
        yield
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        _cancel_all_jobs(getattr(pyspark, "started_session", None))
        raise
    finally:
        stop.set()


def _cancel_all_jobs(spark: Any) -> None:
    if spark is None:
        return
    try:
        if type(spark).__module__.startswith("pyspark.sql.connect"):  # Spark Connect: its operations
            spark.interruptAll()
        else:
            spark.sparkContext.cancelAllJobs()
    except Exception:  # the JVM may already be going down with the process
        pass


# ------------------------------------------------------------------------------------------------
