"""The emulated workspace's Unity Catalog (``databricks_emulator/metastore.py``) and ``backfill-platform
restore`` on the Databricks deployment (issue 14).

1. The emulated cluster's Spark has three-level names: a task on the existing cluster (through
   databricks-sdk) creates a schema, writes with ``saveAsTable`` and a replaceWhere overwrite, MERGEs
   through ``DeltaTable.forName``, time-travels, ``RESTORE``s and reads ``DESCRIBE HISTORY``, all by
   ``catalog.schema.table``; the managed table lives in the emulator's warehouse folder.
2. The deployment's step writes ``demos.backfill_demo.destination_data`` by name (``dagster asset
   materialize`` through the step launcher, twice, the source changed in between), then
   ``backfill-platform restore`` (the CLI, as a user runs it) rolls the table back on the cluster: the
   whole table (Delta RESTORE, in DESCRIBE HISTORY as RESTORE), then one date (replaceWhere by name),
   each a plan run and a commit run on the cluster; a bad version changes nothing.
3. ``backfill-platform status --export-log`` on the Databricks deployment MERGEs the run history (of
   those materializations) into the Unity Catalog table ``demos.backfill_demo.backfill_log`` in a
   one-off run on the cluster, incrementally, in UTC; an old-format table is refused and left as it was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service import jobs

from backfill_platform.resources import local_resources
from backfill_platform.resources.databricks_launcher import idempotency_token
from backfill_platform.restore import DateChange, RestoreReport, Target, report_from_json, report_to_json
from backfill_platform.settings import PROJECT_ROOT, Settings
from backfill_platform.tags import DESTINATION
from backfill_platform_tests.helpers import source_data
from backfill_platform_tests.test_databricks.conftest import CANARY_TOKEN, CATALOG, SCHEMA, STEP_MAX_RETRIES
from backfill_platform_tests.test_reports.test_seed_log import OLD_SCHEMA, SEED_COLUMNS, _utc
from databricks_emulator import DEFAULT_CLUSTER_ID

SOURCE_CONFIG = {"first_day": "2025-02-03", "last_day": "2025-02-07", "rows_per_date": 7, "seed": 5}
DAY = "2025-02-04"
KEPT = 3  # rows of DAY left in the source before the second materialization
DESTINATION_NAME = f"{CATALOG}.{SCHEMA}.destination_data"
LOG_NAME, OLD_LOG = f"{CATALOG}.{SCHEMA}.backfill_log", "old_backfill_log"

CATALOG_CHECKS = '''
import json
import sys

from delta.tables import DeltaTable
from pyspark.sql import functions as F

out = {}
try:
    spark.range(1).write.format("delta").saveAsTable("demos.no_such_schema.t")
except Exception as error:
    out["no_schema"] = str(error).splitlines()[0]
spark.sql("CREATE SCHEMA IF NOT EXISTS demos.uc_checks")
name = "`demos`.`uc_checks`.`t`"
out["exists_before"] = spark.catalog.tableExists("demos.uc_checks.t")
rows = spark.createDataFrame([(i, str(i % 3)) for i in range(6)], "id int, d string")
rows.write.format("delta").partitionBy("d").saveAsTable("demos.uc_checks.t")  # v0
out["exists_after"] = spark.catalog.tableExists("demos.uc_checks.t")
(rows.where("d = '0'").withColumn("id", F.col("id") + 100).write.format("delta").mode("overwrite")
    .option("replaceWhere", "d = '0'").saveAsTable("demos.uc_checks.t"))  # v1
out["v1"] = sorted(row.id for row in spark.table("demos.uc_checks.t").collect())
changes = spark.createDataFrame([(1, "1"), (50, "2")], "id int, d string")
(DeltaTable.forName(spark, "demos.uc_checks.t").alias("t").merge(changes.alias("c"), "t.id = c.id")
    .whenMatchedUpdate(set={"id": "c.id + 1000"}).whenNotMatchedInsertAll().execute())  # v2
out["v2"] = sorted(row.id for row in spark.table(name).collect())
out["v0_rows"] = spark.sql(f"SELECT count(*) FROM {name} VERSION AS OF 0").first()[0]
spark.sql(f"RESTORE TABLE {name} TO VERSION AS OF 1").collect()  # v3
out["restored"] = sorted(row.id for row in spark.table(name).collect())
out["history"] = [[r.version, r.operation] for r in spark.sql(f"DESCRIBE HISTORY {name}").orderBy("version").collect()]
out["tables"] = [row.tableName for row in spark.sql("SHOW TABLES IN demos.uc_checks").collect()]
try:
    spark.table("demos.uc_checks.`../../../dbfs`").collect()
except Exception as error:
    out["escape"] = str(error).splitlines()[0]
with open(sys.argv[1], "w") as handle:
    json.dump(out, handle)
'''


def test_a_restore_report_travels_as_json():
    """The plan made on the cluster comes back, and goes out again for the commit, as JSON."""
    instant = dt.datetime(2025, 2, 4, 12, 30, tzinfo=dt.timezone.utc)
    report = RestoreReport(
        table=DESTINATION_NAME, version_before=4, target=Target(2, instant, instant - dt.timedelta(minutes=5)),
        version_after=None, rows_before=10, rows_after=7, changed_dates=[DateChange(DAY, 10, 7)], dry_run=True,
        dates=(DAY,),
    )
    assert report_from_json(json.loads(json.dumps(report_to_json(report)))) == report
    whole = dataclasses.replace(report, target=Target(2), dates=None, version_after=5, dry_run=False)
    assert report_from_json(json.loads(json.dumps(report_to_json(whole)))) == whole


@pytest.fixture(scope="module")
def client(emulator) -> WorkspaceClient:
    return WorkspaceClient(host=emulator.url, token=CANARY_TOKEN, auth_type="pat")


@pytest.fixture(scope="module")
def workspace_source(emulator, tmp_path_factory):
    """The workspace's source table ``demos.backfill_demo.source_data`` (its catalog and schema exist,
    as an admin created them), with rows made by the local deployment's source_data."""
    resources = local_resources(Settings(data_dir=tmp_path_factory.mktemp("local_source")))
    seeded = dg.materialize(
        [source_data], resources=resources, run_config={"ops": {"source_data": {"config": SOURCE_CONFIG}}}
    )
    assert seeded.success
    target = emulator.warehouse / CATALOG / SCHEMA / "source_data"
    shutil.copytree(resources["tables"].source.path, target)
    return target


def test_the_cluster_serves_three_level_names(spark, emulator, client, workspace_source):
    client.dbfs.upload("/uc_checks/checks.py", io.BytesIO(CATALOG_CHECKS.encode()), overwrite=True)
    run = client.jobs.submit(run_name="unity catalog checks", tasks=[jobs.SubmitTask(
        task_key="checks", existing_cluster_id=DEFAULT_CLUSTER_ID,
        spark_python_task=jobs.SparkPythonTask(
            python_file="dbfs:/uc_checks/checks.py", parameters=["/dbfs/uc_checks/out.json"]
        ),
    )]).result(timeout=dt.timedelta(minutes=15))
    assert run.state.result_state == jobs.RunResultState.SUCCESS, client.jobs.get_run_output(run.tasks[0].run_id)
    out = json.loads((emulator.dbfs_root / "uc_checks" / "out.json").read_text())

    assert "SCHEMA_NOT_FOUND" in out["no_schema"] and "`demos`.`no_such_schema`" in out["no_schema"]
    assert (out["exists_before"], out["exists_after"]) == (False, True)
    assert out["v1"] == [1, 2, 4, 5, 100, 103]  # replaceWhere replaced d = '0' only
    assert out["v2"] == [2, 4, 5, 50, 100, 103, 1001]  # MERGE: 1 updated, 50 inserted
    assert out["v0_rows"] == 6
    assert out["restored"] == out["v1"]
    assert out["history"] == [
        [0, "CREATE TABLE AS SELECT"], [1, "WRITE"], [2, "MERGE"], [3, "RESTORE"],
    ]
    assert out["tables"] == ["t"]
    assert "Not a valid Unity Catalog name" in out["escape"]  # a name never leaves the warehouse folder
    # a managed table in the emulator's warehouse folder: <warehouse>/<catalog>/<schema>/<table>
    path = emulator.warehouse / CATALOG / "uc_checks" / "t"
    assert sorted(r.id for r in spark.read.format("delta").load(str(path)).collect()) == out["v1"]


def _materialize(deployment, day: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "backfill_platform.definitions",
         "--select", "destination_data", "--partition", day],
        cwd=PROJECT_ROOT, env=deployment.env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


def _cli(deployment, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """``backfill-platform ARGV...`` as a user runs it, in the deployment's environment (plus ``env``)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "backfill-platform"), *argv],
        cwd=PROJECT_ROOT, env={**deployment.env, **env}, capture_output=True, text=True, timeout=900,
    )


def _restore(deployment, *argv: str) -> subprocess.CompletedProcess:
    return _cli(deployment, "restore", *argv)


def _counts(spark, path: Path) -> dict[str, int]:
    rows = spark.read.format("delta").load(str(path)).groupBy("position_date").count().collect()
    return {str(row[0]): row[1] for row in rows}


def _history(spark, path: Path) -> list[tuple[int, str]]:
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    return [(row.version, row.operation) for row in history]


def _keep_first_rows_of_day(spark, source: Path) -> None:
    frame = spark.read.format("delta").load(str(source))
    first = frame.where(f"position_date = '{DAY}'").orderBy("id").limit(KEPT).collect()
    kept = spark.createDataFrame(first, frame.schema)
    kept.write.format("delta").mode("overwrite").option("replaceWhere", f"position_date = '{DAY}'").save(str(source))


def test_restore_on_the_databricks_deployment(spark, emulator, deployment, workspace_source):
    destination = emulator.warehouse / CATALOG / SCHEMA / "destination_data"
    _materialize(deployment, DAY)  # v0 CREATE TABLE, v1 WRITE (7 rows of DAY)
    _keep_first_rows_of_day(spark, workspace_source)
    _materialize(deployment, DAY)  # v2 WRITE (3 rows of DAY)
    assert _counts(spark, destination) == {DAY: KEPT}
    # The remote step used the name (DeltaLocation without a path): the table's metadata names no path.
    records = deployment.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=DESTINATION), limit=10).records
    assert {r.event_log_entry.asset_materialization.metadata["table"].value for r in records} == {DESTINATION_NAME}

    runs_before = set(emulator.runs)
    bad = _restore(deployment, "--version", "99")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "Version 99 is not in the table's history" in bad.stderr and "Nothing was changed" in bad.stderr

    whole = _restore(deployment, "--version", "1")
    assert whole.returncode == 0, whole.stdout + whole.stderr[-4000:]
    assert f"Restored {DESTINATION_NAME} to the content of version 1 (was version 2, now version 3)" in whole.stdout
    assert f"{DAY}: {KEPT} -> 7 rows" in whole.stdout
    assert _counts(spark, destination) == {DAY: 7}
    assert _history(spark, destination)[3] == (3, "RESTORE")

    dates = _restore(deployment, "--from", DAY, "--to", DAY, "--version", "2")
    assert dates.returncode == 0, dates.stdout + dates.stderr[-4000:]
    assert f"{DAY}: 7 -> {KEPT} rows" in dates.stdout and "now version 4" in dates.stdout
    assert _counts(spark, destination) == {DAY: KEPT}
    assert _history(spark, destination)[4] == (4, "WRITE")

    # Each restore ran on the configured cluster: a plan run and a commit run (the bad one: a plan run).
    restore_runs = [emulator.runs[run_id] for run_id in sorted(set(emulator.runs) - runs_before)]
    assert [run.result_state for run in restore_runs] == ["SUCCESS"] * 5
    assert {run.task["existing_cluster_id"] for run in restore_runs} == {DEFAULT_CLUSTER_ID}
    assert all(run.run_name == f"backfill_platform restore {DESTINATION_NAME}" for run in restore_runs)
    # Dagster saw both restores: the date's latest materialization is the last one.
    latest = deployment.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DESTINATION, asset_partitions=[DAY]), limit=1
    ).records[0].event_log_entry.asset_materialization
    assert latest.metadata["restored_from_version"].value == 2 and latest.metadata["delta_version"].value == 4


def _step_run(emulator, dagster_run_id: str):
    """The emulator's run of a Dagster run's destination_data step (its last attempt), found by the
    idempotency token the launcher gave each attempt's submit."""
    tokens = {idempotency_token(dagster_run_id, "destination_data", n) for n in range(STEP_MAX_RETRIES + 1)}
    found = [run for run in emulator.runs.values() if run.idempotency_token in tokens]
    assert found, f"no Databricks run of Dagster run {dagster_run_id}"
    return max(found, key=lambda run: run.run_id)


def _export(deployment, emulator, **env: str) -> tuple[subprocess.CompletedProcess, list]:
    """``backfill-platform status --export-log`` and the emulator's runs it submitted."""
    before = set(emulator.runs)
    done = _cli(deployment, "status", "--export-log", **env)
    assert CANARY_TOKEN not in done.stdout + done.stderr
    return done, [emulator.runs[run_id] for run_id in sorted(set(emulator.runs) - before)]


def test_export_log_on_the_databricks_deployment(spark, emulator, deployment, workspace_source):
    records = deployment.instance.get_run_records()
    if not records:  # run on its own: without the restore test's two materializations of DAY
        _materialize(deployment, DAY)
        records = deployment.instance.get_run_records()
    assert records and {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
    table, count = emulator.warehouse / CATALOG / SCHEMA / "backfill_log", len(records)

    first, submitted = _export(deployment, emulator)
    assert first.returncode == 0, first.stdout + first.stderr[-4000:]
    assert f"backfill_log: {count} row(s) merged into {LOG_NAME}; the table has {count} row(s)" in first.stderr
    assert [(run.result_state, run.task["existing_cluster_id"]) for run in submitted] == [
        ("SUCCESS", DEFAULT_CLUSTER_ID)
    ]
    assert f"Databricks run {submitted[0].run_id}: " in first.stdout
    # the managed table of the name, in the emulator's warehouse: the seed's columns and types
    frame = spark.read.format("delta").load(str(table))
    schema = [(field.name, field.dataType.simpleString()) for field in frame.schema.fields]
    assert schema[: len(SEED_COLUMNS)] == SEED_COLUMNS
    rows = {(row.run_id, str(row.position_date)): row for row in frame.collect()}
    assert set(rows) == {(record.dagster_run.run_id, DAY) for record in records}
    for record in records:
        row, step = rows[(record.dagster_run.run_id, DAY)], _step_run(emulator, record.dagster_run.run_id)
        assert (row.status, row.dagster_status, row.retry_metadata) == ("SUCCESS", "SUCCESS", None)
        assert row.job_id == str(step.run_id)  # the Databricks run of the step, not the Dagster job
        assert row.run_page_url == f"{emulator.url}/#job/{step.job_id}/run/{step.run_id}"
        assert (row.start_time, row.end_time) == (_utc(record.start_time), _utc(record.end_time))  # UTC

    again, submitted = _export(deployment, emulator)
    assert again.returncode == 0, again.stdout + again.stderr[-4000:]
    assert f"backfill_log: {count} row(s) merged into {LOG_NAME}; the table has {count} row(s)" in again.stderr
    assert [run.result_state for run in submitted] == ["SUCCESS"]
    assert sorted(spark.read.format("delta").load(str(table)).collect()) == sorted(frame.collect())
    assert [operation for _, operation in _history(spark, table)][-2:] == ["MERGE", "MERGE"]

    old = emulator.warehouse / CATALOG / SCHEMA / OLD_LOG  # a table of the export's earlier format
    row = ("r1", dt.date.fromisoformat(DAY), "job", "SUCCESS", None, None, None, 1, None, '{"a": "b"}', None, None,
           None)
    spark.createDataFrame([row], OLD_SCHEMA).write.format("delta").save(str(old))
    refused, submitted = _export(deployment, emulator, BACKFILL_LOG_TABLE=OLD_LOG)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-4000:]
    assert f"{CATALOG}.{SCHEMA}.{OLD_LOG} has the old backfill_log format" in refused.stderr
    assert (
        f"DROP TABLE `{CATALOG}`.`{SCHEMA}`.`{OLD_LOG}`, then run `backfill-platform status --export-log` again"
        in refused.stderr
    )
    assert [run.result_state for run in submitted] == ["SUCCESS"]
    assert _history(spark, old) == [(0, "WRITE")] and spark.read.format("delta").load(str(old)).count() == 1
