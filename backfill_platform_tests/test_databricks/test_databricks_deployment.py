"""The Databricks deployment end to end: real Dagster instance + daemon, real databricks-sdk client,
the project's workspace emulator on 127.0.0.1 running the step with local Spark + Delta.

Each emulated run that gets as far as the step starts a JVM, so the module keeps them few: one
backfill run (5 business dates), one remote failure; the other cases fail before or right after
the driver starts.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform.backfills import backfill_runs, launch_destination_backfill
from backfill_platform.classification import FAILURE_CLASS_KEY, LOGIC, classification_of_failure
from backfill_platform.resources import local_resources, resources_for
from backfill_platform.settings import Settings
from backfill_platform_tests.helpers import BUSINESS_DAYS, business_calendar, destination_data, source_data
from backfill_platform_tests.test_databricks.conftest import (
    CANARY_TOKEN,
    CATALOG,
    SCHEMA,
    databricks_settings,
)

FIRST, LAST = "2025-01-15", "2025-01-22"  # Wed..Wed: 5 business dates, MLK day (01-20) is not a partition
SOURCE_CONFIG = {"first_day": "2025-01-02", "last_day": "2025-01-31", "rows_per_date": 7, "seed": 11}


def _keys(first: str, last: str) -> list[str]:
    return [k for k in BUSINESS_DAYS.partitions_def.get_partition_keys() if first <= k <= last]


def _rows(spark, path: Path) -> list[tuple]:
    return sorted(tuple(row) for row in spark.read.format("delta").load(str(path)).collect())


@pytest.fixture(scope="module")
def local_tables(spark, tmp_path_factory):
    """The same data processed by the local deployment: source seeded, the 5 dates materialized."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("local_deployment"))
    resources = local_resources(settings)
    seeded = dg.materialize(
        [source_data], resources=resources, run_config={"ops": {"source_data": {"config": SOURCE_CONFIG}}}
    )
    assert seeded.success
    keys = _keys(FIRST, LAST)
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
    remote_path = emulator.warehouse / CATALOG / SCHEMA / "destination_data"
    remote_rows, local_rows = _rows(spark, remote_path), _rows(spark, Path(local_tables.destination.path))
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

    # The remote step's events, logs and stdout are in the Dagster run.
    materializations = deployment.instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    assert sorted(r.event_log_entry.asset_materialization.partition for r in materializations) == keys
    metadata = materializations[0].event_log_entry.asset_materialization.metadata
    assert metadata["rows_written"].value == 35
    assert metadata["table"].value == f"{CATALOG}.{SCHEMA}.destination_data ({remote_path})"
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


def _emulated_run_of(emulator, dagster_run_id: str):
    runs = [r for r in emulator.runs.values() if dagster_run_id in json.dumps(r.task)]
    return runs[-1] if runs else None


# name: (partition, Databricks life cycle state, result state, classification)
FAULT_CASES = {
    "internal_error": ("2025-01-23", "INTERNAL_ERROR", "FAILED", "transient"),
    "lost_driver": ("2025-01-24", "TERMINATED", "FAILED", "transient"),
    "timeout": ("2025-01-27", "TERMINATED", "TIMEDOUT", "transient"),
    "submit_rejected": ("2025-01-28", None, None, "transient"),
    "terminated_by_dagster": ("2025-01-29", "TERMINATED", "CANCELED", None),
    # The source has no rows after 2025-01-31: the asset itself raises on the cluster.
    "asset_fails_remotely": ("2025-02-03", "TERMINATED", "SUCCESS", None),
}


@pytest.fixture(scope="module")
def failing_runs(emulator, deployment, workspace_source):
    """Six runs submitted to the instance at once, each meeting one failure (faults are keyed by the
    Dagster run id, which the emulator sees in the submitted task's DBFS paths). The run meant to be
    terminated is terminated while its Databricks run is PENDING."""
    run_ids = {name: str(uuid.uuid4()) for name in FAULT_CASES}
    emulator.end_next_run_with_internal_error(match=run_ids["internal_error"])
    emulator.lose_driver_of_next_run(after_s=1.0, match=run_ids["lost_driver"])
    emulator.time_out_next_run(after_s=2, match=run_ids["timeout"])
    emulator.fail_next_submits(1, status=500, error_code="INTERNAL_ERROR", match=run_ids["submit_rejected"])
    emulator.delay_next_run(pending_s=600, match=run_ids["terminated_by_dagster"])
    deployment.launch_runs({run_ids[name]: case[0] for name, case in FAULT_CASES.items()})

    terminated = run_ids["terminated_by_dagster"]
    deadline = time.monotonic() + 300
    while _emulated_run_of(emulator, terminated) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    pending = _emulated_run_of(emulator, terminated)
    assert pending is not None and pending.life_cycle_state == "PENDING", deployment.explain(terminated)
    assert deployment.instance.run_launcher.terminate(terminated)

    runs = {name: deployment.wait_for_run(run_id) for name, run_id in run_ids.items()}
    return run_ids, runs


def test_failure_inside_the_remote_step_surfaces_its_traceback(emulator, deployment, failing_runs):
    run_ids, runs = failing_runs
    run_id = run_ids["asset_fails_remotely"]
    assert runs["asset_fails_remotely"].status == dg.DagsterRunStatus.FAILURE
    failure = deployment.step_failure(run_id)
    assert "has no rows for business date(s) 2025-02-03" in failure.error.message
    assert "destination.py" in "".join(failure.error.stack), failure.error.stack
    assert failure.user_failure_data.metadata["missing_dates"].value == ["2025-02-03"]
    # A logic error of the asset (classified by the asset, same key), not a Databricks failure: the
    # Databricks run itself succeeded.
    assert classification_of_failure(failure.error, failure.user_failure_data.metadata) == LOGIC
    assert "[databricks:" not in failure.error.message
    assert _emulated_run_of(emulator, run_id).result_state == "SUCCESS"


def test_terminating_the_dagster_run_cancels_the_databricks_run(emulator, failing_runs):
    run_ids, runs = failing_runs
    assert runs["terminated_by_dagster"].status == dg.DagsterRunStatus.CANCELED
    cancelled = _emulated_run_of(emulator, run_ids["terminated_by_dagster"])
    assert cancelled.run_id in emulator.cancel_requests
    emulator.wait_for_run(cancelled.run_id, timeout_s=10)
    assert (cancelled.life_cycle_state, cancelled.result_state) == ("TERMINATED", "CANCELED")
    assert cancelled.process is None  # cancelled while PENDING: no driver was ever started


@pytest.mark.parametrize("name", ["internal_error", "lost_driver", "timeout", "submit_rejected"])
def test_databricks_side_failures_name_the_run_and_are_classified(emulator, deployment, failing_runs, name):
    run_ids, runs = failing_runs
    _, life_cycle, result, classification = FAULT_CASES[name]
    run_id = run_ids[name]
    assert runs[name].status == dg.DagsterRunStatus.FAILURE, deployment.explain(run_id)
    failure = deployment.step_failure(run_id)
    metadata = failure.user_failure_data.metadata
    assert classification_of_failure(failure.error, metadata) == classification
    assert metadata[FAILURE_CLASS_KEY].value == classification
    databricks_run = _emulated_run_of(emulator, run_id)
    if name == "submit_rejected":
        assert databricks_run is None  # refused: no run was created
        assert "HTTP 500" in failure.error.message and "InternalError" in failure.error.message
        return
    message = failure.error.message
    assert f"Databricks run {databricks_run.run_id} ended in life_cycle_state={life_cycle}" in message, message
    assert f"result_state={result}" in message, message
    assert databricks_run.state_message in message
    assert metadata["databricks_run_id"].value == databricks_run.run_id
    assert (databricks_run.life_cycle_state, databricks_run.result_state) == (life_cycle, result)
