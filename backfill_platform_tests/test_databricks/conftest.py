"""Fixtures of the Databricks deployment tests: one workspace emulator and one Dagster deployment
(DAGSTER_HOME + daemon configured with BACKFILL_DEPLOYMENT=databricks) per test module.

The token is a canary: a random string that must never show up in run config, event logs,
captured output, instance storage or files the emulator received.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest

from backfill_platform import dagster_internals, tags
from backfill_platform.processes import WORKSPACE_YAML, DaemonProcess
from backfill_platform.settings import Settings
from backfill_platform_tests.conftest import make_dagster_home
from databricks_emulator import DEFAULT_CLUSTER_ID, DatabricksEmulator

CANARY_TOKEN = "dapi-canary-" + secrets.token_hex(12)
RUN_TIMEOUT_S = 600  # BACKFILL_RUN_TIMEOUT_SECONDS of the deployment: Databricks runs get timeout_seconds=540
STEP_MAX_RETRIES = 2  # BACKFILL_STEP_MAX_RETRIES of the deployment
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
        "BACKFILL_RUN_TIMEOUT_SECONDS": str(RUN_TIMEOUT_S),
        "BACKFILL_STEP_MAX_RETRIES": str(STEP_MAX_RETRIES),
        "BACKFILL_STEP_RETRY_DELAY_SECONDS": "0.2",
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

    def submit_runs(self, partition_by_name: dict[str, str]) -> dict[str, str]:
        """Submit one run of destination_data_job per name, for its partition key, to the instance's
        run queue (as ``dagster job launch`` and the UI's launchpad do), with the daemon stopped: no
        run starts before :meth:`start_daemon`, so faults can be armed by run id first. One
        workspace load for all of them, in this process's code server with the deployment's env."""
        self.daemon.stop()
        with mock.patch.dict(os.environ, self.env, clear=True), \
                dagster_internals.project_workspace(self.instance, WORKSPACE_YAML) as workspace:
            submitter = dagster_internals.JobSubmitter(self.instance, workspace, tags.DESTINATION_JOB)
            return {name: submitter.submit(None, {tags.PARTITION: key}) for name, key in partition_by_name.items()}

    def start_daemon(self) -> None:
        self.daemon.stop()
        self.daemon.start()

    def wait_for_run(self, run_id: str, timeout_s: float = 900) -> dg.DagsterRun:
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

    def step_retries(self, run_id: str) -> list:
        """The STEP_UP_FOR_RETRY events of a run, oldest first (their ``step_retry_data``)."""
        events = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        return [event.dagster_event.event_specific_data for event in events]

    def step_failure(self, run_id: str):
        events = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert events, f"no step failure in run {run_id}: {self.messages(run_id)[-10:]}"
        return events[-1].dagster_event.step_failure_data

    def close(self) -> None:
        self.daemon.stop()
        self.instance.dispose()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, emulator):
    home = make_dagster_home(tmp_path_factory.mktemp("dagster_home_databricks"))
    # The fault scenarios run all at once (none holds a Spark session on this host; each run worker
    # mostly waits on the emulator): no cap from the run queue or the Databricks pool.
    config = (home / "dagster.yaml").read_text()
    assert "max_concurrent_runs: 2" in config and "default_limit: 4" in config
    config = config.replace("max_concurrent_runs: 2", "max_concurrent_runs: 24").replace(
        "default_limit: 4", "default_limit: 24"
    ).replace("dequeue_interval_seconds: 1", "dequeue_interval_seconds: 1\n    dequeue_use_threads: true")
    (home / "dagster.yaml").write_text(config)
    data_dir = tmp_path_factory.mktemp("host_data")
    # 24 runs launched at once on 2 cores: the daemon's StartRun call waits for each spawned run worker to
    # import Dagster and the definitions, and Dagster's 60 s gRPC timeout ran out once in a full suite
    # ("Unexpected error in IPC client"; the run then failed before its step, not by its fault)
    env = {**_base_env(), **databricks_environment(emulator), "BACKFILL_DATA_DIR": str(data_dir),
           "DAGSTER_GRPC_TIMEOUT_SECONDS": "300"}
    deployment = DatabricksDeployment(home, env)
    try:
        yield deployment
    finally:
        deployment.close()


def databricks_settings(emulator: DatabricksEmulator, **overrides: str) -> Settings:
    return Settings.from_env(databricks_environment(emulator, **overrides))
