"""Every asset and both cluster modes through the Databricks step launcher (issue 14).

- ``business_calendar``, ``source_data`` and ``destination_data`` each run as their own Databricks
  run on the emulator's existing cluster, launched as ``backfill-platform backfill`` launches them
  (one asset backfill that includes the never-materialized upstream assets);
- a new job cluster per step (``BACKFILL_DATABRICKS_SPARK_VERSION`` / ``_NODE_TYPE`` /
  ``_NUM_WORKERS`` instead of ``BACKFILL_DATABRICKS_CLUSTER_ID``), through ``dagster asset
  materialize``: the spec and libraries the emulator received, a cluster and a driver JVM per run;
- two Dagster runs at once on the one existing cluster: their Databricks runs overlap and share
  the cluster's driver JVM.

What ran is read back through databricks-sdk (``jobs.list_runs``, ``clusters.get``) and from the
emulator's records (``runs_matching``: the Dagster run id and step key are in the task's DBFS paths).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from databricks.sdk import WorkspaceClient, errors
from databricks.sdk.service import jobs

from backfill_platform import tags
from backfill_platform.backfills import backfill_runs, launch_destination_backfill, wait_for_backfill
from backfill_platform.classification import LOGIC
from backfill_platform.resources import local_resources, resources_for
from backfill_platform.resources.databricks import databricks_step_launcher
from backfill_platform.resources.databricks_failures import api_failure
from backfill_platform.settings import PROJECT_ROOT, Settings
from backfill_platform_tests.helpers import business_calendar, destination_data, source_data
from backfill_platform_tests.test_databricks.conftest import CANARY_TOKEN, CATALOG, SCHEMA, databricks_settings
from databricks_emulator import DEFAULT_CLUSTER_ID

SOURCE_CONFIG = {"first_day": "2025-01-13", "last_day": "2025-01-24", "rows_per_date": 7, "seed": 3}
SOURCE_ROWS = 10 * 7  # ten weekdays
BACKFILLED = ["2025-01-15", "2025-01-16"]  # test 1: with business_calendar and source_data
JOB_CLUSTER_DATE = "2025-01-17"  # test 2
CONCURRENT = ["2025-01-21", "2025-01-22"]  # test 3 (2025-01-20, MLK day, is not a partition)
ALL_DATES = [*BACKFILLED, JOB_CLUSTER_DATE, *CONCURRENT]
CALENDAR_DAYS = (dt.date(2026, 12, 31) - dt.date(2020, 1, 1)).days + 1  # CalendarConfig's default range
JOB_CLUSTER_SPEC = {"spark_version": "15.4.x-scala2.12", "node_type_id": "emulated.local", "num_workers": 0}
EXTRA_LIBRARY = "pypi:pandas==" + importlib.metadata.version("pandas")


def _table(emulator, name: str) -> Path:
    return emulator.warehouse / CATALOG / SCHEMA / name


def _rows(spark, path, dates: list[str] | None = None) -> list[tuple]:
    rows = spark.read.format("delta").load(str(path)).collect()
    return sorted(tuple(row) for row in rows if dates is None or str(row[0]) in dates)


def _writers(spark, path: Path, date: str) -> int:
    """Delta commits whose replaceWhere predicate names ``date``."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").collect()
    return sum(1 for commit in history if f"'{date}'" in str((commit["operationParameters"] or {}).get("predicate")))


@pytest.fixture(scope="module")
def expected(spark, tmp_path_factory):
    """The local deployment's tables for the same data: calendar, source, destination of ALL_DATES."""
    resources = local_resources(Settings(data_dir=tmp_path_factory.mktemp("local_expected")))
    upstream = dg.materialize(
        [business_calendar, source_data], resources=resources,
        run_config={"ops": {"source_data": {"config": SOURCE_CONFIG}}},
    )
    assert upstream.success
    result = dg.materialize(
        [destination_data], resources=resources,
        tags={tags.RANGE_START: ALL_DATES[0], tags.RANGE_END: ALL_DATES[-1]},
    )
    assert result.success
    return resources["tables"]


@pytest.fixture(scope="module")
def workspace_source(emulator, expected):
    """The workspace's source table (the platform only observes it on Databricks)."""
    shutil.copytree(expected.source.path, _table(emulator, "source_data"))
    return _table(emulator, "source_data")


@pytest.fixture(scope="module")
def client(emulator) -> WorkspaceClient:
    return WorkspaceClient(host=emulator.url, token=CANARY_TOKEN, auth_type="pat")


def _listed_runs(client: WorkspaceClient) -> dict[int, jobs.BaseRun]:
    """Every run of the workspace, as the Databricks UI's job runs list shows them."""
    return {run.run_id: run for run in client.jobs.list_runs(expand_tasks=True, run_type=jobs.RunType.SUBMIT_RUN)}


def _step_runs(emulator, run_id: str, step_key: str) -> list:
    """The Databricks runs of one step of one Dagster run (the task's DBFS paths name both)."""
    return emulator.runs_matching(f"/{run_id}/{step_key}/")


def _explain(emulator, deployment, run_id: str) -> str:
    """The Dagster run's last messages and the stderr tail of each of its Databricks runs."""
    parts = [deployment.explain(run_id)]
    for databricks_run in emulator.runs_matching(run_id):
        stderr = databricks_run.run_dir / "stderr.log" if databricks_run.run_dir else None
        text = stderr.read_text(errors="replace")[-3000:] if stderr and stderr.exists() else ""
        parts.append(f"--- Databricks run {databricks_run.run_id} {databricks_run.result_state}: {text}")
    return "\n".join(parts)


def _metadata(instance, run_id: str, asset_key: dg.AssetKey) -> list[dict]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return [
        {k: v.value for k, v in r.event_log_entry.asset_materialization.metadata.items()}
        for r in records if r.event_log_entry.asset_materialization.asset_key == asset_key
    ]


# ----------------------------------------------------------------------------- 1. every asset


def test_every_asset_runs_through_the_launcher_on_the_existing_cluster(
    spark, emulator, deployment, expected, workspace_source, client
):
    """As ``backfill-platform backfill`` does when the upstream assets were never materialized:
    one asset backfill of destination_data that includes business_calendar and source_data."""
    defs = dg.Definitions(
        assets=[business_calendar, source_data, destination_data],
        resources=resources_for(databricks_settings(emulator)),
    )
    backfill_id = launch_destination_backfill(
        deployment.instance, defs, BACKFILLED, include_prerequisites=tags.PREREQUISITES, title="every asset",
    )
    deployment.ensure_daemon()
    progress = wait_for_backfill(deployment.instance, backfill_id, timeout_s=900)
    runs = backfill_runs(deployment.instance, backfill_id)
    assert progress.status == "COMPLETED_SUCCESS", [_explain(emulator, deployment, run.run_id) for run in runs]
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}

    # Each asset's step ran as its own Databricks run on the existing cluster, named after the step.
    listed = _listed_runs(client)
    step_runs = {}
    for run in runs:
        for step_key in (stats.step_key for stats in deployment.instance.get_run_step_stats(run.run_id)):
            (databricks_run,) = _step_runs(emulator, run.run_id, step_key)
            step_runs[step_key] = (run.run_id, databricks_run)
    assert sorted(step_runs) == ["business_calendar", "destination_data", "source_data"], step_runs
    for step_key, (run_id, databricks_run) in step_runs.items():
        seen = listed[databricks_run.run_id]  # what databricks-sdk's jobs.list_runs answers
        assert (seen.state.life_cycle_state, seen.state.result_state) == (
            jobs.RunLifeCycleState.TERMINATED, jobs.RunResultState.SUCCESS
        ), (step_key, seen.state)
        assert seen.tasks[0].existing_cluster_id == DEFAULT_CLUSTER_ID
        assert f"/{run_id}/{step_key}/step_run_ref.pkl" in seen.tasks[0].spark_python_task.parameters[0]
        assert seen.run_name == f"backfill_platform {step_key}", (step_key, seen.run_name)
        # The step's events came back from the cluster into the Dagster run.
        assert any(m.startswith(f"Captured stdout for step {step_key}") for m in deployment.messages(run_id))
    # All three attached to the cluster's one warm driver JVM, each from its own driver process.
    jvms = {databricks_run.jvm_pid for _, databricks_run in step_runs.values()}
    assert len(jvms) == 1 and None not in jvms, jvms
    assert len({databricks_run.process.pid for _, databricks_run in step_runs.values()}) == 3

    # The tables: the calendar written on the cluster equals the local one; the source was observed
    # (not rewritten); destination_data has the local deployment's rows for both dates.
    remote_calendar = _rows(spark, _table(emulator, "calendar"))
    assert len(remote_calendar) == CALENDAR_DAYS
    assert remote_calendar == _rows(spark, expected.calendar.path)
    mlk = next(row for row in remote_calendar if str(row[0]) == "2025-01-20")
    assert mlk[5] == "H" and mlk[7] == "holiday: Birthday of Martin Luther King, Jr.", mlk
    source_run_id = step_runs["source_data"][0]
    (observed,) = _metadata(deployment.instance, source_run_id, tags.SOURCE)
    assert observed["rows"] == SOURCE_ROWS and observed["seeded_by_platform"] is False, observed
    assert spark.sql(f"DESCRIBE HISTORY delta.`{workspace_source}`").count() == 1  # never written
    (calendar_metadata,) = _metadata(deployment.instance, step_runs["business_calendar"][0], tags.CALENDAR)
    assert calendar_metadata["days"] == CALENDAR_DAYS
    remote = _rows(spark, _table(emulator, "destination_data"), BACKFILLED)
    assert remote == _rows(spark, expected.destination.path, BACKFILLED) and len(remote) == 2 * 7


# ----------------------------------------------------------------------------- 2. new job cluster


def test_the_emulator_refuses_a_bad_new_cluster_spec_or_library(emulator, client):
    client.dbfs.put("/coverage/ok.py", contents="cHJpbnQoMSk=", overwrite=True)  # print(1)
    task = {"task_key": "t", "spark_python_task": {"python_file": "dbfs:/coverage/ok.py"}}
    refused = [
        ({"new_cluster": {**JOB_CLUSTER_SPEC, "spark_version": "15.4"}}, "Invalid spark version '15.4'"),
        ({"new_cluster": {**JOB_CLUSTER_SPEC, "num_workers": -1}}, "num_workers must be a non-negative"),
        ({"new_cluster": {k: v for k, v in JOB_CLUSTER_SPEC.items() if k != "node_type_id"}}, "node_type_id"),
        ({"new_cluster": JOB_CLUSTER_SPEC, "libraries": [{"pypi": {"repo": "x"}}]}, "pypi.package must be"),
        ({"new_cluster": JOB_CLUSTER_SPEC, "libraries": [{"whl": "dbfs:/a.whl", "jar": "dbfs:/b.jar"}]},
         "exactly one of"),
    ]
    before = len(emulator.runs)
    for spec, message in refused:
        with pytest.raises(errors.DatabricksError, match=message) as error:
            client.jobs.submit(run_name="bad spec", tasks=[jobs.SubmitTask.from_dict({**task, **spec})])
        assert error.value.error_code == "INVALID_PARAMETER_VALUE"
    assert len(emulator.runs) == before  # nothing was created


def test_a_job_cluster_spec_databricks_refuses_fails_the_submit_as_a_logic_error(emulator, monkeypatch):
    """The launcher only checks that BACKFILL_DATABRICKS_SPARK_VERSION is set; the workspace refuses
    a value that is no runtime version: the submit fails with its message, classified as not retryable."""
    monkeypatch.setenv("BACKFILL_DATABRICKS_TOKEN", CANARY_TOKEN)
    settings = databricks_settings(
        emulator, BACKFILL_DATABRICKS_CLUSTER_ID=None, BACKFILL_DATABRICKS_SPARK_VERSION="15.4",
        BACKFILL_DATABRICKS_NODE_TYPE="emulated.local", BACKFILL_DATABRICKS_NUM_WORKERS="0",
    )
    with dg.build_resources({"launcher": databricks_step_launcher(settings)}) as resources:
        launcher = resources.launcher
        task = launcher._get_databricks_task("refused-spec-run", "destination_data")
        with pytest.raises(errors.InvalidParameterValue) as refused:
            launcher.databricks_runner.submit_run(launcher.run_config, task)
    assert "Invalid spark version '15.4' in new_cluster.spark_version" in str(refused.value)
    failure = api_failure(refused.value)
    assert failure.classification == LOGIC and "HTTP 400" in failure.description, failure.description
    assert emulator.runs_matching("refused-spec-run") == []
    assert [r["outcome"] for r in emulator.submit_requests_matching("refused-spec-run")] == ["refused 400"]


@pytest.fixture(scope="module")
def job_cluster_run(emulator, deployment, workspace_source):
    """``dagster asset materialize`` of source_data and destination_data (one date) in the job
    cluster mode: one Dagster run, two steps, each a Databricks run on a new job cluster."""
    env = {**deployment.env}
    env.pop("BACKFILL_DATABRICKS_CLUSTER_ID")
    env.update({
        "BACKFILL_DATABRICKS_SPARK_VERSION": JOB_CLUSTER_SPEC["spark_version"],
        "BACKFILL_DATABRICKS_NODE_TYPE": JOB_CLUSTER_SPEC["node_type_id"],
        "BACKFILL_DATABRICKS_NUM_WORKERS": str(JOB_CLUSTER_SPEC["num_workers"]),
        "BACKFILL_DATABRICKS_LIBRARIES": EXTRA_LIBRARY,
    })
    before = set(emulator.runs)
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "backfill_platform.definitions",
         "--select", "source_data,destination_data", "--partition", JOB_CLUSTER_DATE],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    created = [emulator.runs[run_id] for run_id in sorted(set(emulator.runs) - before)]
    return done, created


def test_a_new_job_cluster_per_step(spark, emulator, deployment, expected, job_cluster_run, client):
    done, created = job_cluster_run
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    (run,) = deployment.instance.get_runs(filters=dg.RunsFilter(tags={tags.PARTITION: JOB_CLUSTER_DATE}))
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert [r.run_id for r in created] == [
        *(r.run_id for r in _step_runs(emulator, run.run_id, "source_data")),
        *(r.run_id for r in _step_runs(emulator, run.run_id, "destination_data")),
    ]
    assert [r.result_state for r in created] == ["SUCCESS", "SUCCESS"]

    # The spec the emulator received (and validated) is the one the settings describe, with the
    # configured library and the four the launcher pins at this process's versions.
    versions = {name: importlib.metadata.version(name)
                for name in ("dagster", "dagster-databricks", "dagster-pyspark", "databricks-sdk")}
    for databricks_run in created:
        task = databricks_run.task
        assert "existing_cluster_id" not in task
        assert {k: task["new_cluster"][k] for k in JOB_CLUSTER_SPEC} == JOB_CLUSTER_SPEC
        assert task["new_cluster"]["custom_tags"] == {"__dagster_version": versions["dagster"]}
        assert task["libraries"] == [
            {"pypi": {"package": EXTRA_LIBRARY.removeprefix("pypi:")}},
            *({"pypi": {"package": f"{name}=={version}"}} for name, version in versions.items()),
        ]
        # The project's code is not a library: the launcher stages it as a zip on DBFS per step.
        assert task["spark_python_task"]["parameters"][2].endswith("/code.zip")
        assert emulator.dbfs_local(task["spark_python_task"]["parameters"][2]).is_file()

    # A cluster per run, created for it and terminated with it (clusters/get through databricks-sdk).
    listed = _listed_runs(client)
    clusters = [listed[r.run_id].cluster_instance.cluster_id for r in created]
    assert len(set(clusters)) == 2 and DEFAULT_CLUSTER_ID not in clusters
    for cluster_id in clusters:
        cluster = client.clusters.get(cluster_id)
        assert (cluster.cluster_source.value, cluster.state.value) == ("JOB", "TERMINATED")
        assert (cluster.spark_version, cluster.node_type_id, cluster.num_workers) == (
            "15.4.x-scala2.12", "emulated.local", 0
        )
    # A driver JVM per run: two different JVMs, neither the existing cluster's.
    jvms = [r.jvm_pid for r in created]
    assert None not in jvms and len(set(jvms)) == 2, jvms
    warm = {r.jvm_pid for r in emulator.runs.values() if r.task.get("existing_cluster_id")}
    assert not warm & set(jvms), (warm, jvms)
    assert len({r.process.pid for r in created}) == 2

    remote = _rows(spark, _table(emulator, "destination_data"), [JOB_CLUSTER_DATE])
    assert remote == _rows(spark, expected.destination.path, [JOB_CLUSTER_DATE]) and len(remote) == 7


# ----------------------------------------------------------------------------- 3. concurrent runs


def test_two_runs_at_once_on_the_existing_cluster(spark, emulator, deployment, expected, workspace_source):
    run_ids = deployment.submit_runs(dict(zip(CONCURRENT, CONCURRENT, strict=True)))
    deployment.start_daemon()
    runs = {date: deployment.wait_for_run(run_id) for date, run_id in run_ids.items()}
    for run in runs.values():
        assert run.status == dg.DagsterRunStatus.SUCCESS, _explain(emulator, deployment, run.run_id)

    databricks_runs = {}
    for date, run_id in run_ids.items():
        (databricks_run,) = _step_runs(emulator, run_id, "destination_data")
        assert databricks_run.result_state == "SUCCESS"
        assert databricks_run.task["existing_cluster_id"] == DEFAULT_CLUSTER_ID
        databricks_runs[date] = databricks_run
    first, second = databricks_runs.values()
    windows = {date: (r.start_time, r.end_time) for date, r in databricks_runs.items()}
    assert first.start_time < second.end_time and second.start_time < first.end_time, (
        f"the two Databricks runs did not overlap: {json.dumps(windows)}"
    )
    # Same cluster, same driver JVM; a driver process each.
    assert first.jvm_pid == second.jvm_pid is not None
    assert first.process.pid != second.process.pid

    path = _table(emulator, "destination_data")
    for date in CONCURRENT:
        remote = _rows(spark, path, [date])
        assert remote == _rows(spark, expected.destination.path, [date]) and len(remote) == 7
        assert _writers(spark, path, date) == 1
