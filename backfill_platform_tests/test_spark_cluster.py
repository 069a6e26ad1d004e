"""The platform on a real Spark standalone cluster (``BACKFILL_SPARK_MASTER=spark://...``), not only
``local[N]`` (docs/cluster.md).

A master and a worker from the installed pyspark distribution run on 127.0.0.1. A chunked backfill
through the CLI (its own dagster-daemon, fresh DAGSTER_HOME) points every run at the master: each
run's process is a Spark driver that registers with the master as an application, and its tasks run
in executor JVMs the worker starts. The table it writes is compared with the same chunks run on
local Spark. Driver and executors share the one local file system here; on a real cluster that is
the shared file system BACKFILL_DATA_DIR must be on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform.processes import stop_process_group
from backfill_platform.resources import local_resources
from backfill_platform.resources.spark import local_spark_config
from backfill_platform.settings import Settings
from backfill_platform_tests.conftest import free_port, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import (
    business_calendar,
    materialize_destination,
    rows_per_date,
    source_data,
    table_rows,
)

BIN = os.path.dirname(sys.executable)
APP_NAME = "backfill_platform"  # spark.app.name of local_spark_config
RANGE = ["--from", "2024-07-01", "--to", "2024-07-31"]  # 22 business days (07-04 is a holiday)
CHUNK_SIZE = 11  # -> 2 runs of 11 days, which the instance (max_concurrent_runs: 2) runs at once
CHUNKS = [("2024-07-01", "2024-07-16"), ("2024-07-17", "2024-07-31")]
# What the cluster run sets through the ordinary settings: one core per application, so the two
# concurrent runs share the two-core worker (without it the first application takes every core and
# the second run's driver waits for it to end).
CLUSTER_CONF = "spark.cores.max=1;spark.executor.memory=1g"


@dataclass
class StandaloneCluster:
    master_url: str
    webui_port: int
    work_dir: Path

    def state(self) -> dict:
        """The master's status page as JSON (workers, active and completed applications)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=5) as response:
            return json.load(response)

    def executor_logs(self) -> list[Path]:
        """stderr of every executor the worker ran (``<work-dir>/<app id>/<executor id>/stderr``)."""
        return sorted(self.work_dir.glob("app-*/*/stderr"))


def _start(stack: ExitStack, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop_process_group, process)
    return process


@pytest.fixture
def cluster(tmp_path):
    """A Spark standalone master and one worker (2 cores, 2 GiB) on 127.0.0.1, in the foreground as
    process groups this fixture owns and stops."""
    import pyspark

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    root = tmp_path / "cluster"
    work_dir, local_dirs = root / "work", root / "local"
    for folder in (work_dir, local_dirs):
        folder.mkdir(parents=True)
    port, webui_port, worker_webui_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_DIRS": str(local_dirs),  # the worker's (and its executors') scratch space
        # the master's REST submission server would take the fixed port 6066 (not needed here)
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    env.pop("SPARK_HOME", None)  # the installed pyspark's own distribution
    master_url = f"spark://127.0.0.1:{port}"
    with ExitStack() as stack:
        master = _start(stack, [
            spark_class, "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui_port),
        ], env, root / "master.log")
        worker = _start(stack, [
            spark_class, "org.apache.spark.deploy.worker.Worker", master_url,
            "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
            "--webui-port", str(worker_webui_port), "--work-dir", str(work_dir),
        ], env, root / "worker.log")
        cluster = StandaloneCluster(master_url, webui_port, work_dir)
        deadline = time.monotonic() + 180
        while True:
            for name, process in (("master", master), ("worker", worker)):
                assert process.poll() is None, f"the {name} exited: {(root / f'{name}.log').read_text()[-3000:]}"
            try:
                if cluster.state().get("aliveworkers", 0) >= 1:
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "no worker registered with the master within 180 s"
            time.sleep(0.5)
        yield cluster


def seeded_deployment(root: Path) -> tuple[Settings, Path]:
    """A data dir with the demo source (June-July 2024) and the calendar, written on the local
    in-process Spark (the ``spark`` fixture's session), and a DAGSTER_HOME that recorded both
    materializations (a chunked CLI launch runs destination_data only and requires them)."""
    settings = Settings(data_dir=root / "data")
    home = make_dagster_home(root / "dagster_home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            [source_data, business_calendar], resources=local_resources(settings), instance=instance,
            run_config={"ops": {"source_data": {"config": {"first_day": "2024-06-01", "last_day": "2024-07-31"}}}},
        )
        assert result.success
    return settings, home


def test_cluster_settings_reach_the_spark_config():
    """What docs/cluster.md tells a real cluster to set goes through the ordinary variables, and
    BACKFILL_SPARK_CONF wins over the local defaults (driver address, parallelism, scratch dir)."""
    settings = Settings.from_env({
        "BACKFILL_SPARK_MASTER": "spark://spark-master.internal:7077",
        "BACKFILL_DATA_DIR": "/mnt/backfill",
        "BACKFILL_SPARK_CONF": (
            "spark.driver.host=10.0.0.5;spark.driver.bindAddress=0.0.0.0;spark.cores.max=8;"
            "spark.executor.memory=8g;spark.sql.shuffle.partitions=64;spark.local.dir=/var/tmp/spark"
        ),
    })
    config = local_spark_config(settings)
    assert config["spark.master"] == "spark://spark-master.internal:7077"
    assert config["spark.sql.warehouse.dir"] == "/mnt/backfill/spark-warehouse"
    assert {key: config[key] for key in settings.spark.conf} == {
        "spark.driver.host": "10.0.0.5", "spark.driver.bindAddress": "0.0.0.0", "spark.cores.max": "8",
        "spark.executor.memory": "8g", "spark.sql.shuffle.partitions": "64", "spark.local.dir": "/var/tmp/spark",
    }


@pytest.mark.slow
def test_chunked_backfill_on_a_standalone_cluster_writes_the_same_table_as_local(spark, cluster, tmp_path):
    on_cluster, cluster_home = seeded_deployment(tmp_path / "on_cluster")
    started = time.monotonic()
    result = subprocess.run(
        [f"{BIN}/backfill-platform", "backfill", *RANGE, "--chunk-size", str(CHUNK_SIZE)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env=subprocess_env(
            on_cluster, cluster_home, BACKFILL_SPARK_MASTER=cluster.master_url, BACKFILL_SPARK_CONF=CLUSTER_CONF
        ),
    )
    cluster_wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 run(s) succeeded" in result.stdout, result.stdout
    assert re.findall(r"submitted \S+ for (\S+)\.\.(\S+) \(", result.stdout) == CHUNKS, result.stdout

    # Each run's driver was an application of the master, with the one core it asked for; the two
    # ran at the same time, and both ended with their runs.
    state = cluster.state()
    apps = [app for app in state["completedapps"] if app["name"] == APP_NAME]
    assert len(apps) == 2, json.dumps(state, indent=1)
    assert all(app["state"] == "FINISHED" and app["cores"] == 1 for app in apps), apps
    assert not state["activeapps"], state["activeapps"]
    first, second = sorted(apps, key=lambda app: app["starttime"])
    assert second["starttime"] < first["starttime"] + first["duration"], apps  # they overlapped
    # The tasks ran in executor JVMs the worker started for those applications, not in the drivers.
    logs = cluster.executor_logs()
    assert {log.parent.parent.name for log in logs} == {app["id"] for app in apps}, logs
    tasks = [log.read_text(errors="replace").count("Finished task") for log in logs]
    assert all(tasks), [log.read_text(errors="replace")[-2000:] for log in logs]

    # The same chunks on local Spark (this process's local[2] session), in their own data dir.
    local, local_home = seeded_deployment(tmp_path / "local")
    local_run_resources = local_resources(local)
    started = time.monotonic()
    with dg.DagsterInstance.from_config(str(local_home)) as instance:
        for first_day, last_day in CHUNKS:
            assert materialize_destination(local_run_resources, first_day, last_day, instance=instance).success
    local_wall = time.monotonic() - started

    cluster_table = local_resources(on_cluster)["tables"].destination
    local_table = local_run_resources["tables"].destination
    counts = rows_per_date(spark, cluster_table)
    assert len(counts) == 22 and set(counts.values()) == {10}, counts
    assert counts == rows_per_date(spark, local_table)
    assert table_rows(spark, cluster_table) == table_rows(spark, local_table)
    print(
        f"\n2 chunk runs, 22 business days: cluster (CLI + daemon, a driver and an executor per run) "
        f"{cluster_wall:.1f} s; local (in-process, warm session) {local_wall:.1f} s; "
        f"tasks per executor {tasks}; load average {os.getloadavg()[0]:.1f}"
    )
