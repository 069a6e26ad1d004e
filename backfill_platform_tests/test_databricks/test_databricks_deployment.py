"""The Databricks deployment end to end: real Dagster instance + daemon, real databricks-sdk client,
the project's workspace emulator on 127.0.0.1 running the step with local Spark + Delta.

One backfill run (5 business dates) checks the table row for row against the local deployment.
Then every fault scenario (``SCENARIOS``) runs at once, one Dagster run each, keyed to its fault by
the Dagster run id (the emulator sees it in the submitted task's DBFS paths): one fault of each
Databricks-side kind (then the run succeeds, written once), persistent faults (the step gives up
after ``BACKFILL_STEP_MAX_RETRIES`` + 1 submits), failures that are never retried (the asset's own
logic error, a rejected request, a cancellation) and the two ways of terminating a run. The figures
per scenario (attempts, submits, wall time) are written to ``databricks_scenarios.json`` in pytest's
base temporary directory.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform.backfills import backfill_runs, launch_destination_backfill
from backfill_platform.classification import (
    CANCELED,
    FAILURE_CLASS_KEY,
    LOGIC,
    TRANSIENT,
    classification_of_failure,
)
from backfill_platform.resources import local_resources, resources_for
from backfill_platform.settings import Settings
from backfill_platform_tests.helpers import BUSINESS_DAYS, business_calendar, destination_data, source_data
from backfill_platform_tests.test_databricks.conftest import (
    CANARY_TOKEN,
    CATALOG,
    SCHEMA,
    STEP_MAX_RETRIES,
    databricks_settings,
)
from databricks_emulator import DatabricksEmulator

FIRST, LAST = "2025-01-15", "2025-01-22"  # Wed..Wed: 5 business dates, MLK day (01-20) is not a partition
SOURCE_CONFIG = {"first_day": "2025-01-02", "last_day": "2025-01-31", "rows_per_date": 7, "seed": 11}
DATABRICKS_TIMEOUT_S = 540  # BACKFILL_RUN_TIMEOUT_SECONDS=600 (conftest): max(600 - 60, 0.9 * 600)


def _keys(first: str, last: str) -> list[str]:
    return [k for k in BUSINESS_DAYS.partitions_def.get_partition_keys() if first <= k <= last]


def _rows(spark, path: Path, dates: list[str]) -> list[tuple]:
    frame = spark.read.format("delta").load(str(path))
    return sorted(tuple(row) for row in frame.collect() if str(row[0]) in dates)


def _commits_writing(spark, path: Path, date: str) -> int:
    """Delta commits of the table whose replaceWhere predicate names ``date``: its writers."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").collect()
    return sum(1 for commit in history if f"'{date}'" in str((commit["operationParameters"] or {}).get("predicate")))


ATTEMPT = re.compile(r"Attempt (\d+) of at most (\d+): Databricks run (\d+) submitted")
REMOTE_DESTINATION = ("warehouse", CATALOG, SCHEMA, "destination_data")


def _remote_destination(emulator) -> Path:
    return emulator.root.joinpath(*REMOTE_DESTINATION)


@pytest.fixture(scope="module")
def local_tables(spark, tmp_path_factory):
    """The same data processed by the local deployment: source seeded, every business date of
    January 2025 materialized (one range run)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("local_deployment"))
    resources = local_resources(settings)
    seeded = dg.materialize(
        [source_data], resources=resources, run_config={"ops": {"source_data": {"config": SOURCE_CONFIG}}}
    )
    assert seeded.success
    keys = _keys(SOURCE_CONFIG["first_day"], SOURCE_CONFIG["last_day"])
    result = dg.materialize(
        [destination_data],
        resources=resources,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert result.success
    return resources["tables"]


@pytest.fixture(scope="module")
def workspace_source(emulator, local_tables):
    """The workspace's source table (catalog.schema.source_data), with the local source's rows."""
    target = emulator.warehouse / CATALOG / SCHEMA / "source_data"
    shutil.copytree(local_tables.source.path, target)
    return target


def _scan_for_canary(*roots: Path) -> list[str]:
    needle = CANARY_TOKEN.encode()
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                hits.append(str(path))
    return hits


def test_backfill_on_databricks_matches_local_row_for_row(
    spark, emulator, deployment, local_tables, workspace_source, capfd
):
    keys = _keys(FIRST, LAST)
    assert keys == ["2025-01-15", "2025-01-16", "2025-01-17", "2025-01-21", "2025-01-22"]
    defs = dg.Definitions(
        assets=[business_calendar, source_data, destination_data],
        resources=resources_for(databricks_settings(emulator)),
    )
    backfill_id = launch_destination_backfill(deployment.instance, defs, keys, title="databricks e2e")
    submitted_before = len(emulator.runs)
    deployment.ensure_daemon()

    runs = []
    for _ in range(1200):
        runs = backfill_runs(deployment.instance, backfill_id)
        if runs and all(run.is_finished for run in runs):
            break
        time.sleep(0.5)
    assert runs, f"the daemon launched no run for backfill {backfill_id}:\n{deployment.daemon_log()}"
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS], deployment.explain(runs[0].run_id)
    run_id = runs[0].run_id

    # The table written on the emulated cluster equals the local deployment's, row for row.
    remote_path = _remote_destination(emulator)
    remote_rows, local_rows = _rows(spark, remote_path, keys), _rows(spark, Path(local_tables.destination.path), keys)
    assert len(remote_rows) == 5 * 7
    assert remote_rows == local_rows
    assert sorted({str(row[0]) for row in remote_rows}) == keys

    # It really went through Databricks: one runs/submit on the configured cluster, zip + pickles on DBFS.
    assert len(emulator.runs) == submitted_before + 1
    databricks_run = list(emulator.runs.values())[-1]
    assert databricks_run.result_state == "SUCCESS"
    assert databricks_run.task["existing_cluster_id"] == "0101-000000-emulated"
    staged = {p.name for p in (emulator.dbfs_root / "dagster_staging" / "backfill_platform" / run_id).rglob("*")}
    assert {"code.zip", "step_run_ref.pkl", "config.pkl", "databricks_step_main.py", "stdout", "stderr"} <= staged
    # One timeout (BACKFILL_RUN_TIMEOUT_SECONDS): the Databricks run's is a little shorter than the
    # Dagster run's maximum runtime; the submit carries an idempotency token.
    submit = emulator.submit_requests_matching(run_id)
    assert [request["outcome"] for request in submit] == ["created"]
    assert submit[0]["body"]["timeout_seconds"] == DATABRICKS_TIMEOUT_S
    assert databricks_run.idempotency_token and len(databricks_run.idempotency_token) <= 64

    # The remote step's events, logs and stdout are in the Dagster run.
    materializations = deployment.instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    assert sorted(r.event_log_entry.asset_materialization.partition for r in materializations) == keys
    metadata = materializations[0].event_log_entry.asset_materialization.metadata
    assert metadata["rows_written"].value == 35
    # by name: the emulated cluster's catalog serves three-level names (databricks_emulator/metastore.py)
    assert metadata["table"].value == f"{CATALOG}.{SCHEMA}.destination_data"
    messages = deployment.messages(run_id)
    assert any("Replaced 5 business date(s) 2025-01-15..2025-01-22" in m for m in messages)
    stdout_at = next(i for i, m in enumerate(messages) if m.startswith("Captured stdout for step destination_data"))
    assert "Running dagster job" in messages[stdout_at + 1]
    assert any(f"Databricks run {databricks_run.run_id} completed" in m for m in messages)

    # The canary token is nowhere: run config, events, instance storage and logs, DBFS uploads, output.
    run = deployment.instance.get_run_by_id(run_id)
    assert CANARY_TOKEN not in repr(run.run_config) and CANARY_TOKEN not in repr(run.tags)
    assert not any(CANARY_TOKEN in m for m in messages)
    assert _scan_for_canary(deployment.home, emulator.root) == []
    captured = capfd.readouterr()
    assert CANARY_TOKEN not in captured.out + captured.err


# ----------------------------------------------------------------------------- fault scenarios


@dataclasses.dataclass(frozen=True)
class Scenario:
    partition: str
    arm: Callable[[DatabricksEmulator, str], None]  # inject the fault for this Dagster run id
    status: dg.DagsterRunStatus
    step_retries: int  # STEP_UP_FOR_RETRY events of the run
    submits: int  # runs/submit requests the emulator received
    runs: int  # Databricks runs created


SUCCESS, FAILURE, CANCELED_RUN = (
    dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
)
N = STEP_MAX_RETRIES


def _nothing(emulator: DatabricksEmulator, match: str) -> None:
    pass


SCENARIOS: dict[str, Scenario] = {
    # One Databricks-side fault, retried by the step (a new attempt, a new Databricks run).
    "internal_error": Scenario(
        "2025-01-23", lambda e, m: e.end_next_run_with_internal_error(match=m), SUCCESS, 1, 2, 2),
    "lost_driver": Scenario(
        "2025-01-24", lambda e, m: e.lose_driver_of_next_run(after_s=1.0, match=m), SUCCESS, 1, 2, 2),
    "timeout": Scenario("2025-01-27", lambda e, m: e.time_out_next_run(after_s=2, match=m), SUCCESS, 1, 2, 2),
    "submit_500": Scenario("2025-01-28", lambda e, m: e.fail_next_submits(1, status=500, match=m), SUCCESS, 1, 2, 1),
    "poll_500": Scenario("2025-01-29", lambda e, m: e.fail_next_polls(1, status=500, match=m), SUCCESS, 1, 2, 2),
    # One fault that databricks-sdk retries inside the call (HTTP 429 / 503, no answer): the same
    # request again, so the same idempotency token; no step retry.
    "submit_503": Scenario(
        "2025-01-30", lambda e, m: e.fail_next_submits(1, 503, "TEMPORARILY_UNAVAILABLE", match=m), SUCCESS, 0, 2, 1),
    "submit_429": Scenario(
        "2025-01-31", lambda e, m: e.fail_next_submits(1, 429, "REQUEST_LIMIT_EXCEEDED", match=m), SUCCESS, 0, 2, 1),
    "connection_dropped": Scenario("2025-01-02", lambda e, m: e.drop_next_submits(1, match=m), SUCCESS, 0, 2, 1),
    # The dangerous one: the run is created, the answer is lost, the client submits again.
    "submit_created_then_503": Scenario(
        "2025-01-03", lambda e, m: e.lose_next_submit_answer(503, match=m), SUCCESS, 0, 2, 1),
    # The step's own code on the cluster meets a transient error: its own RetryRequested.
    "remote_transient": Scenario(
        "2025-01-06", lambda e, m: e.fail_first_write_of_next_run(match=m), SUCCESS, 1, 2, 2),
    # Persistent faults: N + 1 submits, then the step fails.
    "persistent_internal_error": Scenario(
        "2025-01-07", lambda e, m: [e.end_next_run_with_internal_error(match=m) for _ in range(N + 1)],
        FAILURE, N, N + 1, N + 1),
    "persistent_submit_500": Scenario(
        "2025-01-08", lambda e, m: e.fail_next_submits(N + 1, status=500, match=m), FAILURE, N, N + 1, 0),
    # Never retried: the asset's logic error on the cluster (no source rows after 2025-01-31), a
    # rejected request, a run cancelled in Databricks.
    "asset_fails_remotely": Scenario("2025-02-03", _nothing, FAILURE, 0, 1, 1),
    # The step on the cluster reported its outcome (its logic error), then Databricks failed the run.
    "internal_error_after_the_step": Scenario(
        "2025-02-04", lambda e, m: e.end_next_run_with_internal_error_after_its_task(match=m), FAILURE, 0, 1, 1),
    "submit_400": Scenario(
        "2025-01-09", lambda e, m: e.fail_next_submits(1, 400, "INVALID_PARAMETER_VALUE", match=m), FAILURE, 0, 1, 0),
    "canceled_in_databricks": Scenario(
        "2025-01-10", lambda e, m: e.delay_next_run(pending_s=600, match=m), FAILURE, 0, 1, 1),
    # Terminating the Dagster run cancels its Databricks run, PENDING or RUNNING.
    "terminated_while_pending": Scenario(
        "2025-01-13", lambda e, m: e.delay_next_run(pending_s=600, match=m), CANCELED_RUN, 0, 1, 1),
    "terminated_while_running": Scenario(
        "2025-01-14", lambda e, m: e.hold_next_run(running_s=600, match=m), CANCELED_RUN, 0, 1, 1),
}
ONE_FAULT = [name for name, s in SCENARIOS.items() if s.status == SUCCESS]
STEP_RETRIED = [name for name in ONE_FAULT if SCENARIOS[name].step_retries and name != "remote_transient"]


def _wait_for_emulated_run(emulator, deployment, run_id: str, ready: Callable, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = emulator.runs_matching(run_id)
        if runs and ready(runs[-1]):
            return runs[-1]
        time.sleep(0.2)
    raise AssertionError(f"the Databricks run of {run_id} never got ready:\n{deployment.explain(run_id)}")


def _figures(deployment, emulator, run_id: str) -> dict:
    stats = deployment.instance.get_run_stats(run_id)
    retries = len(deployment.step_retries(run_id))
    runs = emulator.runs_matching(run_id)
    return {
        "status": deployment.instance.get_run_by_id(run_id).status.value,
        "attempts": retries + 1,
        "step_retries": retries,
        "submit_requests": len(emulator.submit_requests_matching(run_id)),
        "databricks_runs": len(runs),
        "databricks_runs_succeeded": sum(run.result_state == "SUCCESS" for run in runs),
        "wall_s": round((stats.end_time or 0) - (stats.start_time or 0), 1),
    }


@pytest.fixture(scope="module")
def fault_runs(emulator, deployment, workspace_source, tmp_path_factory):
    """Every scenario's run submitted to the instance at once (faults armed by run id before the
    daemon starts them); the terminations and the cancel in Databricks happen when their Databricks
    run is PENDING (or RUNNING, with its driver process)."""
    started = time.monotonic()
    run_ids = deployment.submit_runs({name: scenario.partition for name, scenario in SCENARIOS.items()})
    for name, scenario in SCENARIOS.items():
        scenario.arm(emulator, run_ids[name])
    deployment.start_daemon()

    pending = run_ids["terminated_while_pending"]
    _wait_for_emulated_run(emulator, deployment, pending, lambda run: run.life_cycle_state == "PENDING")
    assert deployment.instance.run_launcher.terminate(pending)
    running = run_ids["terminated_while_running"]
    _wait_for_emulated_run(
        emulator, deployment, running, lambda run: run.life_cycle_state == "RUNNING" and run.process is not None
    )
    assert deployment.instance.run_launcher.terminate(running)
    in_databricks = _wait_for_emulated_run(
        emulator, deployment, run_ids["canceled_in_databricks"], lambda run: run.life_cycle_state == "PENDING"
    )
    emulator.cancel({"run_id": in_databricks.run_id})  # someone cancels it in the Databricks UI

    runs = {name: deployment.wait_for_run(run_id) for name, run_id in run_ids.items()}
    figures = {name: _figures(deployment, emulator, run_ids[name]) for name in SCENARIOS}
    figures["all scenarios at once"] = {"wall_s": round(time.monotonic() - started, 1)}
    (tmp_path_factory.getbasetemp() / "databricks_scenarios.json").write_text(json.dumps(figures, indent=2))
    return run_ids, runs


def _metadata(failure) -> dict:
    return failure.user_failure_data.metadata if failure.user_failure_data else {}


@pytest.mark.parametrize("name", ONE_FAULT)
def test_one_databricks_side_fault_is_retried_and_written_once(spark, emulator, deployment, local_tables,
                                                              fault_runs, name):
    run_ids, runs = fault_runs
    scenario, run_id = SCENARIOS[name], run_ids[name]
    assert runs[name].status == SUCCESS, deployment.explain(run_id)
    retries = deployment.step_retries(run_id)
    requests = emulator.submit_requests_matching(run_id)
    databricks_runs = emulator.runs_matching(run_id)
    assert (len(retries), len(requests), len(databricks_runs)) == (
        scenario.step_retries, scenario.submits, scenario.runs
    ), [r["outcome"] for r in requests]
    # Written once, by one Databricks run, with exactly the local deployment's rows.
    date = [scenario.partition]
    assert _commits_writing(spark, _remote_destination(emulator), scenario.partition) == 1
    assert _rows(spark, _remote_destination(emulator), date) == _rows(spark, Path(local_tables.destination.path), date)
    assert len(_rows(spark, _remote_destination(emulator), date)) == 7
    successful = [run for run in databricks_runs if run.result_state == "SUCCESS"]
    assert len(successful) == (2 if name == "remote_transient" else 1)  # there the first run's step failed itself
    # Each attempt submits with its own idempotency token (<= 64 characters); a call repeated by
    # databricks-sdk repeats its attempt's token.
    tokens = [request["body"].get("idempotency_token") for request in requests]
    assert all(tokens) and all(len(token) <= 64 for token in tokens), tokens
    assert len(set(tokens)) == scenario.step_retries + 1
    # Every attempt is in the event log with its Databricks run id and run page URL.
    # (An attempt whose submit failed has no run: its STEP_UP_FOR_RETRY is its trace.)
    attempts = [(ATTEMPT.match(m), m) for m in deployment.messages(run_id) if m.startswith("Attempt ")]
    assert [int(match[3]) for match, _ in attempts] == [run.run_id for run in databricks_runs], attempts
    assert {int(match[2]) for match, _ in attempts} == {N + 1}
    assert int(attempts[-1][0][1]) == scenario.step_retries + 1
    for (match, message), databricks_run in zip(attempts, databricks_runs, strict=True):
        if not (name == "poll_500" and match[1] == "1"):  # there runs/get, which gives the page, failed
            assert f"{emulator.url}/#job/{databricks_run.job_id}/run/{databricks_run.run_id}" in message
    if scenario.step_retries == 0:  # a call databricks-sdk repeated is in the log too
        assert any("retried by databricks-sdk" in m for m in deployment.messages(run_id)), deployment.messages(run_id)


@pytest.mark.parametrize("name", STEP_RETRIED)
def test_databricks_side_failures_name_the_run_and_are_classified(emulator, deployment, fault_runs, name):
    """The failed attempt of each one-fault scenario: a step retry whose error is the launcher's
    classified failure naming the Databricks run and its state; the next attempt succeeded."""
    run_ids, runs = fault_runs
    run_id = run_ids[name]
    assert runs[name].status == SUCCESS, deployment.explain(run_id)
    (retry,) = deployment.step_retries(run_id)
    assert retry.error.cls_name == "RetryRequested" and retry.error.cause is not None
    failure = retry.error.cause
    assert classification_of_failure(retry.error) == TRANSIENT
    assert failure.cls_name == "DatabricksTransientError" and "[databricks:transient]" in failure.message
    assert retry.seconds_to_wait is not None and 0.2 <= retry.seconds_to_wait < 0.4  # (2^1 - 1) x 0.2 s + jitter
    first = emulator.runs_matching(run_id)[0]
    if name == "submit_500":
        assert emulator.submit_requests_matching(run_id)[0]["outcome"] == "refused 500"
        assert "HTTP 500" in failure.message and "InternalError" in failure.message
        return
    if name == "poll_500":  # the run was abandoned: cancelled, then a new attempt
        assert "HTTP 500" in failure.message and f"Databricks run {first.run_id}" in failure.message
        assert first.run_id in emulator.cancel_requests and first.result_state == "CANCELED"
        return
    life_cycle, result = {
        "internal_error": ("INTERNAL_ERROR", "FAILED"),
        "lost_driver": ("TERMINATED", "FAILED"),
        "timeout": ("TERMINATED", "TIMEDOUT"),
    }[name]
    assert (first.life_cycle_state, first.result_state) == (life_cycle, result)
    message = failure.message
    assert f"Databricks run {first.run_id} ended in life_cycle_state={life_cycle}" in message, message
    assert f"result_state={result}" in message and first.state_message in message, message
    assert f"{emulator.url}/#job/{first.job_id}/run/{first.run_id}" in message


@pytest.mark.parametrize("name", ["persistent_internal_error", "persistent_submit_500"])
def test_a_persistent_fault_fails_after_max_retries_plus_one_submits(emulator, deployment, fault_runs, name):
    run_ids, runs = fault_runs
    run_id = run_ids[name]
    assert runs[name].status == FAILURE, deployment.explain(run_id)
    assert len(deployment.step_retries(run_id)) == N
    assert len(emulator.submit_requests_matching(run_id)) == N + 1
    failure = deployment.step_failure(run_id)
    assert failure.error.message.startswith(f"Exceeded max_retries of {N}")
    last_error, metadata = failure.error.cause, failure.user_failure_data.metadata
    assert classification_of_failure(failure.error, metadata) == TRANSIENT
    assert metadata[FAILURE_CLASS_KEY].value == TRANSIENT
    if name == "persistent_submit_500":
        assert "HTTP 500" in last_error.message
        assert emulator.runs_matching(run_id) == []
        return
    databricks_runs = emulator.runs_matching(run_id)
    assert [run.life_cycle_state for run in databricks_runs] == ["INTERNAL_ERROR"] * (N + 1)
    last = databricks_runs[-1]
    assert f"Databricks run {last.run_id} ended in life_cycle_state=INTERNAL_ERROR" in last_error.message
    assert metadata["databricks_run_id"].value == last.run_id
    assert metadata["databricks_run_page_url"].value == f"{emulator.url}/#job/{last.job_id}/run/{last.run_id}"


def test_failure_inside_the_remote_step_surfaces_its_traceback(emulator, deployment, fault_runs):
    run_ids, runs = fault_runs
    run_id = run_ids["asset_fails_remotely"]
    assert runs["asset_fails_remotely"].status == FAILURE
    failure = deployment.step_failure(run_id)
    assert "has no rows for business date(s) 2025-02-03" in failure.error.message
    assert "destination.py" in "".join(failure.error.stack), failure.error.stack
    assert failure.user_failure_data.metadata["missing_dates"].value == ["2025-02-03"]
    # A logic error of the asset (classified by the asset, same key), not a Databricks failure: the
    # Databricks run itself succeeded. Submitted once, never retried.
    assert classification_of_failure(failure.error, failure.user_failure_data.metadata) == LOGIC
    assert "[databricks:" not in failure.error.message
    assert [run.result_state for run in emulator.runs_matching(run_id)] == ["SUCCESS"]
    assert len(emulator.submit_requests_matching(run_id)) == 1 and deployment.step_retries(run_id) == []


def test_a_transient_error_of_the_remote_step_is_retried_once_by_its_own_request(spark, emulator, deployment,
                                                                                 fault_runs):
    """The asset's own RetryRequested on the cluster comes back as the remote step's
    STEP_UP_FOR_RETRY; the Databricks run succeeded, so the launcher adds no retry of its own."""
    run_ids, runs = fault_runs
    run_id = run_ids["remote_transient"]
    assert runs["remote_transient"].status == SUCCESS, deployment.explain(run_id)
    (retry,) = deployment.step_retries(run_id)
    assert "Connection reset by peer while writing to cloud storage" in retry.error.cause.message
    assert retry.error.cause.cls_name == "Failure"  # the asset's classified failure, not the launcher's
    assert "[transient: network error" in retry.error.cause.message
    # The cluster ran the deployment's schedule (BACKFILL_STEP_RETRY_DELAY_SECONDS=0.2), not the default 60 s.
    assert retry.seconds_to_wait is not None and retry.seconds_to_wait < 0.4
    assert [run.result_state for run in emulator.runs_matching(run_id)] == ["SUCCESS", "SUCCESS"]
    assert _commits_writing(spark, _remote_destination(emulator), SCENARIOS["remote_transient"].partition) == 1


def test_a_databricks_failure_after_the_step_reported_its_outcome_is_not_retried(emulator, deployment, fault_runs):
    """One retry mechanism per failure: the step's own outcome stands; the launcher only logs the
    INTERNAL_ERROR that followed it."""
    run_ids, runs = fault_runs
    run_id = run_ids["internal_error_after_the_step"]
    assert runs["internal_error_after_the_step"].status == FAILURE, deployment.explain(run_id)
    (databricks_run,) = emulator.runs_matching(run_id)
    assert databricks_run.life_cycle_state == "INTERNAL_ERROR"
    failure = deployment.step_failure(run_id)
    assert "has no rows for business date(s) 2025-02-04" in failure.error.message
    assert classification_of_failure(failure.error, _metadata(failure)) == LOGIC
    assert deployment.step_retries(run_id) == [] and len(emulator.submit_requests_matching(run_id)) == 1
    assert any(
        m.startswith("The step on the cluster already reported STEP_FAILURE; not retried again: [databricks:transient]")
        and f"Databricks run {databricks_run.run_id} ended in life_cycle_state=INTERNAL_ERROR" in m
        for m in deployment.messages(run_id)
    ), deployment.messages(run_id)


@pytest.mark.parametrize("name, failure_class, text", [
    ("submit_400", LOGIC, "HTTP 400"),
    ("canceled_in_databricks", CANCELED, "result_state=CANCELED"),
])
def test_logic_failures_and_cancellations_are_never_retried(emulator, deployment, fault_runs, name, failure_class,
                                                            text):
    run_ids, runs = fault_runs
    run_id = run_ids[name]
    assert runs[name].status == FAILURE, deployment.explain(run_id)
    failure = deployment.step_failure(run_id)
    assert classification_of_failure(failure.error, _metadata(failure)) == failure_class
    assert text in failure.error.message, failure.error.message
    assert deployment.step_retries(run_id) == []
    assert len(emulator.submit_requests_matching(run_id)) == 1


@pytest.mark.parametrize("name", ["terminated_while_pending", "terminated_while_running"])
def test_terminating_the_dagster_run_cancels_the_databricks_run(emulator, deployment, fault_runs, name):
    run_ids, runs = fault_runs
    run_id = run_ids[name]
    assert runs[name].status == CANCELED_RUN, deployment.explain(run_id)
    (cancelled,) = emulator.runs_matching(run_id)
    assert cancelled.run_id in emulator.cancel_requests
    emulator.wait_for_run(cancelled.run_id, timeout_s=10)
    assert (cancelled.life_cycle_state, cancelled.result_state) == ("TERMINATED", "CANCELED")
    if name == "terminated_while_pending":
        assert cancelled.process is None  # cancelled while PENDING: no driver was ever started
    else:  # cancelled while RUNNING: its driver process was killed
        assert cancelled.process is not None and cancelled.process.returncode not in (None, 0)
    # The step ends as cancelled: not retried, not a Databricks failure.
    assert deployment.step_retries(run_id) == []
    assert len(emulator.submit_requests_matching(run_id)) == 1
    failure = deployment.step_failure(run_id)
    assert classification_of_failure(failure.error, _metadata(failure)) == CANCELED
