"""The emulated clusters: ``clusters/get``, the environment a cluster's driver process sees, and the
long-lived driver JVM of an existing (all-purpose) cluster that runs attach to."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from databricks_emulator.errors import bad

DRIVER_SCRIPT = Path(__file__).with_name("driver.py")
RUNTIME_VERSION = "15.4-emulated"
DEFAULT_CLUSTER_ID = "0101-000000-emulated"
# The only host variables the emulated cluster sees (a real cluster shares nothing with the host).
_HOST_ENV_PASSED = ("PATH", "HOME", "JAVA_HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "TZ")


class ClustersApi:
    """The clusters part of :class:`~databricks_emulator.server.DatabricksEmulator` (a mixin: the
    emulator sets these attributes)."""

    root: Path
    dbfs_root: Path
    warehouse: Path
    clusters: dict[str, dict[str, Any]]
    _lock: threading.RLock
    _cluster_lock: threading.Lock
    _cluster_processes: dict[str, subprocess.Popen]
    _cluster_gateways: dict[str, dict[str, Any]]

    def cluster(self, cluster_id: str | None) -> dict[str, Any]:
        with self._lock:
            info = self.clusters.get(cluster_id or "")
        if info is None:
            raise bad(f"Cluster {cluster_id} does not exist")
        return info

    def _cluster_env(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in _HOST_ENV_PASSED if name in os.environ}
        env.update({
            "DATABRICKS_RUNTIME_VERSION": RUNTIME_VERSION,
            "EMULATOR_WAREHOUSE": str(self.warehouse),
            "EMULATOR_DBFS_ROOT": str(self.dbfs_root),
            "EMULATOR_SPARK_CONFIG": str(self.root / "cluster" / "spark_config.json"),
            "EMULATOR_SECRETS_DIR": str(self.root / "secrets"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def cluster_gateway(self, cluster_id: str, timeout_s: float = 600) -> dict[str, Any]:
        """The running driver JVM of an existing cluster, started on first use (like starting a
        terminated all-purpose cluster) and kept warm for every later run on it."""
        with self._cluster_lock:
            process = self._cluster_processes.get(cluster_id)
            if process is not None and process.poll() is None and cluster_id in self._cluster_gateways:
                return self._cluster_gateways[cluster_id]
            folder = self.root / "clusters" / cluster_id
            folder.mkdir(parents=True, exist_ok=True)
            state_file = folder / "gateway.json"
            state_file.unlink(missing_ok=True)
            with self._lock:
                self.clusters[cluster_id]["state"] = "PENDING"
            with open(folder / "driver.log", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, str(DRIVER_SCRIPT), "--cluster", str(state_file)],
                    cwd=folder, env=self._cluster_env(), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._cluster_processes[cluster_id] = process
            deadline = time.monotonic() + timeout_s
            while not state_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    kill_process_group(process)
                    with self._lock:
                        self.clusters[cluster_id]["state"] = "ERROR"
                    tail = (folder / "driver.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"Cluster {cluster_id} failed to start: {tail}")
                time.sleep(0.2)
            self._cluster_gateways[cluster_id] = json.loads(state_file.read_text())
            # The cluster's one driver JVM (every run on this cluster attaches to it): recorded per run.
            self._cluster_gateways[cluster_id]["jvm_pid"] = java_pid_in_group(process.pid)
            with self._lock:
                self.clusters[cluster_id]["state"] = "RUNNING"
            return self._cluster_gateways[cluster_id]


# A Databricks runtime version key, as ``clusters/spark-versions`` lists them: 15.4.x-scala2.12,
# 15.4.x-cpu-ml-scala2.12, 14.3.x-photon-scala2.12, 16.x-snapshot-scala2.12, ...
SPARK_VERSION_KEY = re.compile(r"\d+\.(\d+\.)?x(-[a-z0-9-]+)?-scala\d+\.\d+")


def run_job_tag(run_id: int) -> str:
    """The Spark job tag of the jobs a run starts on an existing cluster's shared JVM."""
    return f"emulated-run-{run_id}"


def cancel_tagged_jobs(gateway: dict[str, Any], tag: str, quiet_s: float = 2.0, timeout_s: float = 30.0) -> int:
    """Cancel the Spark jobs tagged ``tag`` on an existing cluster's JVM, as Databricks cancels an
    ended run's Spark jobs; returns how many jobs were running.

    The run's driver process is already dead, but the JVM thread that served its last py4j call
    runs that call (a ``save``: snapshot jobs, write jobs, then the commit) to its end; each of its
    jobs is cancelled as it starts, until none has run for ``quiet_s``. A commit that began before
    the first cancel still lands (so it does on Databricks, which cancels a run asynchronously)."""
    from py4j.clientserver import ClientServer, JavaParameters, PythonParameters

    client = ClientServer(
        java_parameters=JavaParameters(port=gateway["port"], auth_token=gateway["secret"], auto_convert=True),
        python_parameters=PythonParameters(port=0, eager_load=False),
    )
    cancelled: set[int] = set()
    try:
        context = client.jvm.org.apache.spark.SparkContext.getOrCreate()
        tracker = context.statusTracker()
        deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            active = set(tracker.getActiveJobIds()) & set(tracker.getJobIdsForTag(tag))
            if active:
                context.cancelJobsWithTag(tag)
                cancelled |= active
                quiet_since = time.monotonic()
            time.sleep(0.05)
    finally:
        client.close()  # not shutdown(): that would stop the cluster JVM's gateway server
    return len(cancelled)


def validate_new_cluster(spec: Any) -> None:
    """The checks Databricks makes on a ``runs/submit`` task's ``new_cluster`` before creating a run
    (node types are not checked: the emulator has no node type list)."""
    if not isinstance(spec, dict):
        raise bad("new_cluster must be an object.")
    if not spec.get("spark_version"):
        raise bad("Missing required field: new_cluster.spark_version")
    if not isinstance(spec["spark_version"], str) or not SPARK_VERSION_KEY.fullmatch(spec["spark_version"]):
        raise bad(
            f"Invalid spark version {spec['spark_version']!r} in new_cluster.spark_version: use a runtime "
            "version key, e.g. 15.4.x-scala2.12."
        )
    if not (spec.get("node_type_id") or spec.get("instance_pool_id")):
        raise bad("Missing required field: new_cluster.node_type_id (or instance_pool_id)")
    has_workers, autoscale = "num_workers" in spec, spec.get("autoscale")
    if has_workers == bool(autoscale):
        raise bad("Exactly one of new_cluster.num_workers and new_cluster.autoscale must be set.")
    if has_workers and (not isinstance(spec["num_workers"], int) or spec["num_workers"] < 0):
        raise bad("new_cluster.num_workers must be a non-negative integer.")
    if autoscale:
        low, high = autoscale.get("min_workers"), autoscale.get("max_workers")
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high > 0):
            raise bad("new_cluster.autoscale needs 0 <= min_workers <= max_workers and max_workers > 0.")


def java_pid_in_group(pgid: int) -> int | None:
    """The ``java`` process (a driver JVM) in process group ``pgid``, from ``/proc``; None if there is
    none (yet), or no ``/proc`` (not Linux): the record is best-effort."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command, _, rest = stat.partition(" (")[2].rpartition(") ")
        fields = rest.split()
        if command == "java" and len(fields) > 2 and fields[2] == str(pgid):
            return int(entry.name)
    return None


def kill_process_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def default_cluster_spark_config(data_dir: Path) -> dict[str, str]:
    """The emulated cluster's Spark: the project's local Spark + Delta settings, own scratch space.

    The emulator's only use of ``backfill_platform`` (which never imports the emulator)."""
    from backfill_platform.resources.spark import local_spark_config
    from backfill_platform.settings import Settings

    config = local_spark_config(Settings(data_dir=Path(data_dir)))
    config["spark.app.name"] = "databricks-emulator-cluster"
    config["spark.driver.memory"] = "1g"
    return config

