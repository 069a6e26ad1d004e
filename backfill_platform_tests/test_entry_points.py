"""The four ways a user launches a backfill, each end to end against a real instance:

1. the web UI's partition backfill launcher (the webserver's ``launchPartitionBackfill`` mutation),
   with a real ``dagster-webserver`` and ``dagster-daemon`` on 127.0.0.1;
2. ``dagster job backfill -j destination_data_job`` through the run queue;
3. ``dagster asset materialize --partition-range`` (one run);
4. ``backfill-platform backfill`` (the README's main job).
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import dagster as dg
import pytest

from backfill_platform.daemon_lock import daemon_lock_holder
from backfill_platform.processes import (
    DaemonProcess,
    KeepDaemon,
    initialize_instance_storage,
    stop_process_group,
)
from backfill_platform.settings import PROJECT_ROOT
from backfill_platform_tests.conftest import free_port, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import delta_version, rows_per_date, seed_source

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def deployment(spark, settings, resources, tmp_path):
    """A local deployment with a seeded source (June-July 2024) and a fresh DAGSTER_HOME."""
    seed_source(resources, first_day="2024-06-01", last_day="2024-07-31")
    home = make_dagster_home(tmp_path / "dagster_home")
    return settings, resources, home


def default_sigint() -> None:
    """``preexec_fn`` of a process a test sends Ctrl-C (SIGINT) to: a suite started in the background of
    a non-interactive shell (``bash .ci/run &``) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so the Ctrl-C would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def running(command: list[str], env: dict[str, str], log_path):
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=default_sigint,
        )
    try:
        yield process
    finally:
        stop_process_group(process)


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # the webserver answers a PythonError result with HTTP 500
        text = error.read()
        body = json.loads(text) if text.startswith(b"{") else {}
        if "data" not in body:
            raise AssertionError(f"GraphQL answered HTTP {error.code}: {text[:2000]!r}") from None
    assert "errors" not in body, body
    return body["data"]


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
  }
}"""

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status numCancelable runs(limit: 50) { runId status } }
  }
}"""


@pytest.mark.slow
def test_web_ui_partition_backfill_launcher(spark, deployment, tmp_path):
    settings, resources, home = deployment
    env = subprocess_env(settings, home)
    port = free_port()
    initialize_instance_storage(home)  # before two processes (webserver, daemon) open it at once
    keys = ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08"]
    webserver_command = [f"{BIN}/dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(webserver_command, env, tmp_path / "webserver.log"), \
            running([f"{BIN}/dagster-daemon", "run", "-w", "workspace.yaml"], env, tmp_path / "daemon.log"):
        def server_up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(server_up, 120, "the webserver to answer")
        # The API is the first door: a holiday or weekend key is refused with the reason, not moved to
        # the next business day (Dagster alone maps 2024-07-04 to 2024-07-05: dagster_internals.py).
        refused = graphql(port, LAUNCH, {"params": {
            "assetSelection": [{"path": ["destination_data"]}], "partitionNames": ["2024-07-04", "2024-07-06"],
        }})["launchPartitionBackfill"]
        assert refused["__typename"] == "PythonError", refused
        assert "2024-07-04 (Thursday): holiday: Independence Day" in refused["message"], refused
        assert "2024-07-06 (Saturday): weekend" in refused["message"], refused
        # Run config cannot point the write elsewhere: the run is refused at submission and never starts.
        redirected = graphql(port, LAUNCH_RUN, {"params": {
            "selector": {"repositoryLocationName": "backfill_platform", "repositoryName": "__repository__",
                         "jobName": "destination_data_job"},
            "runConfigData": {"resources": {"tables": {"config": {"destination_table": "stolen"}}}},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2024-07-01"}]},
        }})["launchRun"]
        assert redirected["__typename"] == "LaunchRunSuccess", redirected
        launched = graphql(port, LAUNCH, {"params": {
            "assetSelection": [{"path": ["destination_data"]}],
            "partitionNames": keys,
            "title": "test backfill from the UI launcher",
        }})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def finished():
            status = graphql(port, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
            ended = status["status"] in {"COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
            return status if ended else None

        status = wait_until(finished, 900, f"backfill {backfill_id} to finish", poll_s=2)

    assert status["status"] == "COMPLETED_SUCCESS", (tmp_path / "daemon.log").read_text()[-3000:]
    assert [run["status"] for run in status["runs"]] == ["SUCCESS"]  # 5 dates <= 60 per run: one run
    assert rows_per_date(spark, resources["tables"].destination) == {key: 10 for key in keys}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_backfills()) == 1  # the refused holiday backfill was never stored
        refused_run_id = redirected["run"]["runId"]
        assert instance.get_run_by_id(refused_run_id).status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(refused_run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
        assert "[logic: run config configures the deployment's resources]" in failure.message
        assert instance.all_logs(refused_run_id, of_type=dg.DagsterEventType.RUN_START) == []
    assert not (settings.data_dir / "warehouse" / "backfill_demo" / "stolen").exists()


@pytest.mark.slow
def test_dagster_job_backfill_drains_through_the_queue(spark, deployment, tmp_path):
    settings, resources, home = deployment
    env = subprocess_env(settings, home)
    with DaemonProcess(home, env=env, log_path=tmp_path / "daemon.log"):
        launched = subprocess.run(
            [f"{BIN}/dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "destination_data_job",
             "--from", "2024-07-03", "--to", "2024-07-08", "--noprompt"],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert launched.returncode == 0, launched.stdout + launched.stderr
        os.environ["DAGSTER_HOME"], old_home = str(home), os.environ.get("DAGSTER_HOME")
        try:
            instance = dg.DagsterInstance.get()
            runs = instance.get_runs()
            # one run per business date: 07-04 (holiday) and the weekend are not partitions
            assert sorted(run.tags["dagster/partition"] for run in runs) == ["2024-07-03", "2024-07-05", "2024-07-08"]
            assert {run.status for run in runs} <= {
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.SUCCESS,
            }

            def drained():
                return all(run.is_finished for run in instance.get_runs())

            wait_until(drained, 900, "the queued runs to finish", poll_s=2)
            assert {run.status for run in instance.get_runs()} == {dg.DagsterRunStatus.SUCCESS}
        finally:
            if old_home is None:
                del os.environ["DAGSTER_HOME"]
            else:
                os.environ["DAGSTER_HOME"] = old_home
    assert rows_per_date(spark, resources["tables"].destination) == {
        "2024-07-03": 10, "2024-07-05": 10, "2024-07-08": 10,
    }


@pytest.mark.slow
def test_dagster_asset_materialize_partition_range_is_one_run(spark, deployment, tmp_path):
    settings, resources, home = deployment
    command = [f"{BIN}/dagster", "asset", "materialize", "-m", "backfill_platform.definitions",
               "--select", "destination_data", "--partition-range", "2024-06-28...2024-07-05"]
    # With the default chunked (multi-run) policy Dagster's CLI refuses ranges and says why.
    refused = subprocess.run(
        command, cwd=PROJECT_ROOT, env=subprocess_env(settings, home), capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0
    assert "BackfillPolicy.single_run()" in refused.stderr

    env = subprocess_env(settings, home, BACKFILL_MAX_PARTITIONS_PER_RUN="all")
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows_per_date(spark, resources["tables"].destination) == {
        "2024-06-28": 10, "2024-07-01": 10, "2024-07-02": 10, "2024-07-03": 10, "2024-07-05": 10,
    }
    assert delta_version(spark, resources["tables"].destination) == 1  # create + one write

    holiday = subprocess.run(
        command[:-1] + ["2024-07-04...2024-07-05"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert holiday.returncode != 0
    assert "holiday: Independence Day" in holiday.stderr


@pytest.mark.slow
def test_backfill_platform_cli_is_the_main_job(spark, settings, resources, tmp_path):
    """From an empty data dir and instance: seeds source and calendar, backfills, summarises."""
    home = make_dagster_home(tmp_path / "dagster_home")
    env = subprocess_env(settings, home)
    result = subprocess.run(
        [f"{BIN}/backfill-platform", "backfill", "--from", "2024-07-01", "--to", "2024-07-09"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Also materializing source_data, business_calendar first" in out
    assert "No dagster-daemon is running for this instance: starting one" in out
    assert "0/6 partitions done" in out
    assert "COMPLETED_SUCCESS" in out
    assert "partitions requested: 6" in out and "partitions succeeded: 6" in out
    assert "partitions failed:    0" in out and "rows written:         60" in out
    tables = resources["tables"]
    assert f"table:                {tables.destination}" in out
    expected = {d: 10 for d in ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08", "2024-07-09"]}
    assert rows_per_date(spark, tables.destination) == expected
    assert tables.calendar.exists(spark)

    # A date missing from the source: the run fails, the CLI says which partitions and exits 1,
    # and the table keeps what it had.
    tables.source.delta_table(spark).delete("position_date = '2024-07-10'")
    failed = subprocess.run(
        [f"{BIN}/backfill-platform", "backfill", "--from", "2024-07-10", "--to", "2024-07-11"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Also materializing" not in failed.stdout  # source and calendar already exist
    # the first command's daemon is gone; its last heartbeats must not pass for a live daemon
    assert "No dagster-daemon is running for this instance: starting one" in failed.stdout
    assert "partitions failed:    2 (2024-07-10, 2024-07-11)" in failed.stdout
    assert rows_per_date(spark, tables.destination) == expected


def daemon_is_running(instance: dg.DagsterInstance, tolerance_s: float = 30) -> bool:
    """Whether every daemon the instance needs sent a heartbeat in the last ``tolerance_s`` seconds
    (for waiting until a daemon serves; the product decides from the daemon lock)."""
    heartbeats = instance.get_daemon_heartbeats()
    required = instance.get_required_daemon_types()
    now = time.time()
    return bool(required) and all(
        kind in heartbeats and now - heartbeats[kind].timestamp <= tolerance_s for kind in required
    )


@pytest.mark.slow
def test_keep_daemon_replaces_a_dead_daemon_and_frees_the_instance_when_it_ends(tmp_path):
    """What the CLI does while it waits: the daemon it started dies -> it starts another; when the
    CLI ends, no daemon holds the instance at once (heartbeats, up to 30 s old, decide nothing)."""
    home = make_dagster_home(tmp_path / "dagster_home")
    initialize_instance_storage(home)
    said: list[str] = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keeper = KeepDaemon(instance, home, said.append, check_every_s=1)
        with keeper:
            first = keeper.daemon
            assert first is not None and said == [
                "No dagster-daemon is running for this instance: starting one for this backfill."
            ]
            wait_until(lambda: daemon_is_running(instance), 180, "the first daemon's heartbeats", poll_s=0.5)
            assert daemon_lock_holder(home) == first.process.pid
            os.killpg(first.process.pid, signal.SIGKILL)
            wait_until(lambda: keeper.daemon is not first, 30, "a replacement daemon", poll_s=0.5)
            assert said[1].startswith("The dagster-daemon this command started exited with code -9"), said
            second = keeper.daemon
            wait_until(
                lambda: second.process.poll() is None and daemon_lock_holder(home) == second.process.pid,
                180,
                "the second daemon",
                poll_s=0.5,
            )
        assert second.process.poll() is not None  # stopped on exit
        assert daemon_lock_holder(home) is None
        assert daemon_is_running(instance)  # its last heartbeats are still fresh, and decide nothing:
        nxt = KeepDaemon(instance, home, said.append)
        nxt.check()
        assert nxt.daemon is not None  # the next command starts a daemon at once
        nxt.daemon.stop()
        assert len(said) == 3, said


@pytest.mark.parametrize(
    "date_from, date_to, message",
    [
        ("2024-07-04", "2024-07-04", "2024-07-04 (Thursday): holiday: Independence Day"),
        ("2024-07-06", "2024-07-07", "weekend (Saturday)"),
        ("2024-13-45", "2024-12-31", "'2024-13-45' is not a calendar date"),
        ("2024-06-17; DROP TABLE x", "2024-07-01", "use the form YYYY-MM-DD"),
        ("2023-12-01", "2024-01-05", "before the first partition 2024-01-01"),
        ("2024-07-01", "2099-01-01", "has not ended yet"),
        ("2024-07-09", "2024-07-01", "--from 2024-07-09 is after --to 2024-07-01"),
    ],
)
def test_cli_bad_input_is_a_clear_error_with_exit_code_2(date_from, date_to, message, capsys, tmp_path, monkeypatch):
    from backfill_platform.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "never-created"))
    assert main(["backfill", "--from", date_from, "--to", date_to]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "never-created").exists()  # nothing was launched
