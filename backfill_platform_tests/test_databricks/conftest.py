"""Fixtures of the Databricks deployment tests: one workspace emulator and one Dagster deployment
(DAGSTER_HOME + daemon configured with BACKFILL_DEPLOYMENT=databricks) per test module.

The token is a canary: a random string that must never show up in run config, event logs,
captured output, instance storage or files the emulator received.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform.processes import DaemonProcess
from backfill_platform.settings import PROJECT_ROOT, Settings
from backfill_platform_tests.conftest import make_dagster_home
from databricks_emulator import DEFAULT_CLUSTER_ID, DatabricksEmulator

CANARY_TOKEN = "dapi-canary-" + secrets.token_hex(12)
OAUTH_CLIENT = ("emulated-sp", "oauth-canary-" + secrets.token_hex(8))
CATALOG, SCHEMA = "demos", "backfill_demo"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with DatabricksEmulator(
        tmp_path_factory.mktemp("workspace"), token=CANARY_TOKEN, oauth_clients=dict([OAUTH_CLIENT])
    ) as workspace:
        yield workspace


def databricks_environment(emulator: DatabricksEmulator, **overrides: str) -> dict[str, str]:
    env = {
        "BACKFILL_DEPLOYMENT": "databricks",
        "BACKFILL_DATABRICKS_HOST": emulator.url,
        "BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN,
        "BACKFILL_DATABRICKS_CLUSTER_ID": DEFAULT_CLUSTER_ID,
        "BACKFILL_DATABRICKS_POLL_INTERVAL_S": "0.5",
        "BACKFILL_DATABRICKS_MAX_WAIT_S": "600",
        "BACKFILL_CATALOG": CATALOG,
        "BACKFILL_SCHEMA": SCHEMA,
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


class DatabricksDeployment:
    """A DAGSTER_HOME whose daemon and run workers use the Databricks deployment."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home = home
        self.env = {**env, "PYTHONUNBUFFERED": "1", "DAGSTER_HOME": str(home)}
        self.instance = dg.DagsterInstance.from_config(str(home))
        self.daemon = DaemonProcess(home, env=self.env, log_path=home / "daemon.log")

    def ensure_daemon(self) -> None:
        if self.daemon.process is None:
            self.daemon.start()

    def launch_runs(self, partition_by_run_id: dict[str, str]) -> None:
        """Submit runs of destination_data_job to the instance's run queue (as the UI's launchpad
        does), one per (run id, partition key), all at once."""
        self.ensure_daemon()
        # The definitions' executor is in-process: the step runs in the run worker.
        launches = [
            subprocess.Popen(
                [sys.executable, "-m", "dagster", "job", "launch", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                 "-j", "destination_data_job", "--run-id", run_id,
                 "--tags", json.dumps({"dagster/partition": partition_key})],
                cwd=PROJECT_ROOT, env={**_base_env(), **self.env}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )
            for run_id, partition_key in partition_by_run_id.items()
        ]
        for launch in launches:
            output, _ = launch.communicate(timeout=300)
            assert launch.returncode == 0, output

    def wait_for_run(self, run_id: str, timeout_s: float = 300) -> dg.DagsterRun:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run and run.is_finished:
                return run
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} not finished after {timeout_s}s; daemon log:\n{self.daemon_log()}")

    def wait_for_status(self, run_id: str, statuses: set[dg.DagsterRunStatus], timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run and run.status in statuses:
                return
            time.sleep(0.2)
        raise TimeoutError(f"run {run_id} never reached {statuses}")

    def daemon_log(self) -> str:
        path = self.home / "daemon.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def messages(self, run_id: str) -> list[str]:
        return [record.message or "" for record in self.instance.all_logs(run_id)]

    def explain(self, run_id: str) -> str:
        """What went wrong in a run, for assertion messages."""
        lines = self.messages(run_id)[-12:]
        for event in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            error = event.dagster_event.step_failure_data.error
            lines.append(error.to_string() if error else "")
        return "\n".join(lines)

    def step_failure(self, run_id: str):
        events = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert events, f"no step failure in run {run_id}: {self.messages(run_id)[-10:]}"
        return events[-1].dagster_event.step_failure_data

    def close(self) -> None:
        self.daemon.stop()
        self.instance.dispose()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, emulator):
    home = make_dagster_home(tmp_path_factory.mktemp("dagster_home_databricks"))
    # The fault tests run five runs at once (none holds a Spark session on this host).
    config = (home / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(config.replace("max_concurrent_runs: 2", "max_concurrent_runs: 6"))
    data_dir = tmp_path_factory.mktemp("host_data")
    env = {**_base_env(), **databricks_environment(emulator), "BACKFILL_DATA_DIR": str(data_dir)}
    deployment = DatabricksDeployment(home, env)
    try:
        yield deployment
    finally:
        deployment.close()


def databricks_settings(emulator: DatabricksEmulator, **overrides: str) -> Settings:
    return Settings.from_env(databricks_environment(emulator, **overrides))
