"""``status --export-log`` writes the seed's ``backfill_log``: its columns and types, its statuses,
its ``retry_metadata`` VARIANT, its SKIPPED rows, so the seed's own SQL runs on it unchanged.

The history is test_status.py's (runs A..E and two queued runs, its module docstring), plus:

- run F: one range run 2024-07-11..07-15 (Thu..Mon) that succeeds -> SKIPPED rows for the weekend
  07-13 and 07-14 inside its requested range (run_id = F, the request that skipped them);
- run H: 07-16 fails on a NULL id; run I, Dagster's re-execution of H from failure, fails again (the
  source is not repaired yet); the source is repaired and run J, the re-execution of I, succeeds ->
  a retry chain H <- I (retry 1) <- J (retry 2), lineage written by Dagster (``parent_run_id`` /
  ``root_run_id``), so J's ``original_run_id`` is H.

Each query of the seed's "Query Backfill Log" and "Retry Analytics Queries" sections and the retry
notebook's failed-jobs query is below as the seed's text, with only ``demos.backfill_demo.`` (or the
notebook's ``{BACKFILL_LOG_TABLE}``) replaced by the temp views ``backfill_log`` / ``calendar``.
"""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest

from backfill_platform import tags
from backfill_platform.resources import local_resources
from backfill_platform.resources.tables import DeltaTables
from backfill_platform_tests.helpers import business_calendar
from backfill_platform_tests.test_reports.test_status import (  # noqa: F401  (history_home: a fixture)
    SCHEMA,
    _materialize,
    destination_job,
    environment,
    history_home,
    run_cli,
)

RANGE = ["--from", "2024-07-01", "--to", "2024-07-16"]

OVERALL_STATUS_SUMMARY = """
SELECT
    status,
    COUNT(*) as count,
    MIN(position_date) as earliest_date,
    MAX(position_date) as latest_date
FROM backfill_log
GROUP BY status
ORDER BY status;"""

RECENT_RUNS = """
SELECT
    position_date,
    status,
    start_time,
    end_time,
    TIMESTAMPDIFF(SECOND, start_time, end_time) as duration_seconds,
    error_message
FROM backfill_log
ORDER BY start_time DESC
LIMIT 20;"""

FAILED_RUNS = """
SELECT position_date, error_message
FROM backfill_log
WHERE status = 'FAILED'
ORDER BY position_date;"""

BUSINESS_DAY_COVERAGE = """
SELECT
    c.calendar_date,
    CASE WHEN bl.position_date IS NOT NULL THEN 'Processed' ELSE 'Missing' END as status
FROM calendar c
LEFT JOIN (
    SELECT DISTINCT position_date
    FROM backfill_log
    WHERE status = 'SUCCESS'
) bl ON c.calendar_date = bl.position_date
WHERE c.us_business_or_holiday_flag = 'B'
  AND c.calendar_date BETWEEN '2024-01-01' AND '2024-12-31'
ORDER BY c.calendar_date;"""

# 05_retry_failed_jobs.ipynb's query, its f-string filled as the notebook fills it
BACKFILL_LOG_TABLE, retry_days_back, max_retries = "backfill_log", 3650, 10
FAILED_JOBS = f"""
    SELECT position_date, job_name, job_id, run_id, error_message
    FROM {BACKFILL_LOG_TABLE}
    WHERE status = 'FAILED'
      AND retry_metadata IS NULL  -- Only original failures
      AND position_date >= CURRENT_DATE - INTERVAL '{retry_days_back}' DAYS
    LIMIT {max_retries}
"""

SUCCEEDED_AFTER_RETRIES = """
SELECT
    position_date,
    COUNT(*) as total_attempts,
    MAX(CAST(retry_metadata:retry_count AS INT)) as max_retry_count,
    MIN(CASE WHEN status = 'FAILED' THEN start_time END) as first_failure,
    MAX(CASE WHEN status = 'SUCCESS' THEN start_time END) as final_success
FROM backfill_log
WHERE position_date IN (
    SELECT position_date FROM backfill_log
    WHERE retry_metadata IS NOT NULL
)
GROUP BY position_date
HAVING MAX(CASE WHEN status='SUCCESS' THEN 1 ELSE 0 END) = 1;"""

RETRY_SUCCESS_RATE = """
SELECT
    retry_metadata:retry_count as retry_attempt,
    COUNT(*) as total_retries,
    SUM(CASE WHEN status = 'SUCCESS' THEN 1 ELSE 0 END) as successful,
    ROUND(100.0 * SUM(CASE WHEN status = 'SUCCESS' THEN 1 ELSE 0 END) / COUNT(*), 2) as success_rate_pct
FROM backfill_log
WHERE retry_metadata IS NOT NULL
GROUP BY retry_metadata:retry_count
ORDER BY retry_attempt;"""

SEED_COLUMNS = [
    ("run_id", "string"), ("position_date", "date"), ("job_name", "string"), ("job_id", "string"),
    ("status", "string"), ("start_time", "timestamp"), ("end_time", "timestamp"), ("backfill_job_id", "string"),
    ("error_message", "string"), ("creator_user_name", "string"), ("run_page_url", "string"),
    ("retry_metadata", "variant"),
]


def D(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


@pytest.fixture(scope="module")
def seed_home(history_home, spark):  # noqa: F811  (the imported fixture)
    """test_status.py's history plus runs F, H, I, J (module docstring); (settings, env, run ids)."""
    settings, _, runs, queued, env = history_home
    resources = local_resources(settings)
    source = resources["tables"].source
    with environment(**env), dg.DagsterInstance.get() as instance:
        rows = [(D(day), i, 10.0 * i, "ABC"[i % 3]) for day in ("2024-07-15", "2024-07-16") for i in range(4)]
        rows.append((D("2024-07-16"), None, 1.0, "A"))
        spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").save(source.path)
        f = _materialize(
            resources, instance,
            {tags.RANGE_START: "2024-07-11", tags.RANGE_END: "2024-07-15", "dagster/user": "alice@example.com"},
        )
        assert f.success
        job = dg.reconstructable(destination_job)
        h = dg.execute_job(job, instance, tags={tags.PARTITION: "2024-07-16"}, raise_on_error=False)
        assert not h.success
        i = dg.execute_job(
            job, instance, tags=h.dagster_run.tags, raise_on_error=False,
            reexecution_options=dg.ReexecutionOptions.from_failure(h.run_id, instance),
        )
        assert not i.success
        source.delta_table(spark).delete("position_date = DATE'2024-07-16' AND id IS NULL")
        j = dg.execute_job(
            job, instance, tags=i.dagster_run.tags,
            reexecution_options=dg.ReexecutionOptions.from_failure(i.run_id, instance),
        )
        assert j.success and j.dagster_run.parent_run_id == i.run_id and j.dagster_run.root_run_id == h.run_id
        cal = dg.materialize(
            [business_calendar], resources=resources, instance=instance,
            run_config={"ops": {"business_calendar": {"config": {"first_day": "2024-01-01",
                                                                 "last_day": "2024-12-31"}}}},
        )
        assert cal.success
        records = {r.dagster_run.run_id: r for r in instance.get_run_records()}
    runs = {**runs, "F": f.run_id, "H": h.run_id, "I": i.run_id, "J": j.run_id}
    runs.update({f"Q{run.tags[tags.RANGE_START][-2:]}": run.run_id for run in queued})
    return settings, env, runs, records


def _utc(timestamp: float | None) -> dt.datetime | None:
    """A run record's time as Spark shows a TIMESTAMP read in a UTC session (naive UTC)."""
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).replace(tzinfo=None)


def _log_location(settings):
    return DeltaTables.from_settings(settings, mode="path").location(settings.tables.log_table)


@pytest.fixture(scope="module")
def seed_log(seed_home, spark, capsys_module):
    """Export twice (the second a no-op MERGE) with the Python process in a non-UTC zone, then
    register the table and the calendar as the seed's names."""
    settings, env, _, _ = seed_home
    try:
        with environment(TZ="Asia/Kolkata"):  # UTC+05:30: a naive local time would be off by 5.5 hours
            time.tzset()
            for _ in range(2):
                code, _, err = run_cli(env, ["status", *RANGE, "--export-log"], capsys_module)
                assert code == 1, err
    finally:
        time.tzset()
    _log_location(settings).read(spark).createOrReplaceTempView("backfill_log")
    local_resources(settings)["tables"].calendar.read(spark).createOrReplaceTempView("calendar")
    return err


@pytest.fixture(scope="module")
def capsys_module():
    """run_cli reads captured output through ``readouterr``; a module fixture has no capsys."""

    class _NoCapture:
        @staticmethod
        def readouterr():
            return "", ""

    return _NoCapture()


def _sql(spark, query: str) -> list[tuple]:
    return [tuple(row) for row in spark.sql(query).collect()]


def test_the_table_has_the_seeds_columns_first_with_the_seeds_types(seed_log, spark):
    schema = [(f.name, f.dataType.simpleString()) for f in spark.table("backfill_log").schema.fields]
    assert schema[: len(SEED_COLUMNS)] == SEED_COLUMNS
    assert {"attempt", "duration_s", "dagster_status", "backfill_id"} <= {name for name, _ in schema}


def test_overall_status_summary(seed_log, spark):
    assert _sql(spark, OVERALL_STATUS_SUMMARY) == [
        ("FAILED", 5, D("2024-07-05"), D("2024-07-16")),  # B, D, E, H, I
        ("SKIPPED", 2, D("2024-07-13"), D("2024-07-14")),  # the weekend inside F's range
        ("STARTED", 2, D("2024-07-09"), D("2024-07-10")),  # the two queued runs
        ("SUCCESS", 8, D("2024-07-01"), D("2024-07-16")),  # A x3, C, F x3, J
    ]


def test_recent_runs(seed_log, seed_home, spark):
    _, _, runs, records = seed_home

    def row(name, day, status):
        record = records[runs[name]]
        start, end = _utc(record.start_time), _utc(record.end_time)
        return (D(day), status, start, end, int((end - start).total_seconds()) if start and end else None)

    expected = [
        row("A", "2024-07-01", "SUCCESS"), row("A", "2024-07-02", "SUCCESS"), row("A", "2024-07-03", "SUCCESS"),
        row("B", "2024-07-05", "FAILED"), row("C", "2024-07-05", "SUCCESS"), row("D", "2024-07-08", "FAILED"),
        row("E", "2024-07-08", "FAILED"), row("Q09", "2024-07-09", "STARTED"), row("Q10", "2024-07-10", "STARTED"),
        row("F", "2024-07-11", "SUCCESS"), row("F", "2024-07-12", "SUCCESS"), row("F", "2024-07-15", "SUCCESS"),
        row("H", "2024-07-16", "FAILED"), row("I", "2024-07-16", "FAILED"), row("J", "2024-07-16", "SUCCESS"),
    ]
    f_created = _utc(records[runs["F"]].create_timestamp.timestamp())
    expected += [(D(day), "SKIPPED", f_created, f_created, 0) for day in ("2024-07-13", "2024-07-14")]
    result = _sql(spark, RECENT_RUNS)
    assert len(result) == 17
    starts = [r[2] for r in result]
    assert starts[-2:] == [None, None]  # the queued runs have not started: last in DESC order
    assert starts[:-2] == sorted(starts[:-2], reverse=True)
    assert sorted(r[:5] for r in result) == sorted(expected)
    errors = {(r[0], r[1]): r[5] for r in result if r[1] != "STARTED"}
    assert errors[(D("2024-07-13"), "SKIPPED")] == "weekend (Saturday)"
    assert errors[(D("2024-07-14"), "SKIPPED")] == "weekend (Sunday)"
    assert all(r[5] is None for r in result if r[1] in ("SUCCESS", "STARTED"))
    assert all("id_not_null (1 row(s))" in r[5] for r in result if r[1] == "FAILED")


def test_failed_runs(seed_log, spark):
    result = _sql(spark, FAILED_RUNS)
    assert [r[0] for r in result] == [D("2024-07-05"), D("2024-07-08"), D("2024-07-08"), D("2024-07-16"),
                                      D("2024-07-16")]
    assert all("id_not_null (1 row(s))" in message for _, message in result)


def test_business_day_coverage(seed_log, spark):
    result = _sql(spark, BUSINESS_DAY_COVERAGE)
    processed = [day for day, status in result if status == "Processed"]
    assert processed == [D(f"2024-07-{d:02}") for d in (1, 2, 3, 5, 11, 12, 15, 16)]
    assert len(result) == 251  # 2024's business days (366 days - 104 weekend days - 11 weekday holidays)
    assert D("2024-07-04") not in [day for day, _ in result]
    assert {status for day, status in result if day not in processed} == {"Missing"}


def test_retry_notebooks_failed_jobs_query_finds_the_original_failures(seed_log, seed_home, spark):
    _, _, runs, _ = seed_home
    result = _sql(spark, FAILED_JOBS)
    assert sorted((r[0], r[1], r[2], r[3]) for r in result) == [
        (D("2024-07-05"), "destination_data_job", "destination_data_job", runs["B"]),
        (D("2024-07-08"), "__ephemeral_asset_job__", "__ephemeral_asset_job__", runs["D"]),
        (D("2024-07-16"), "destination_data_job", "destination_data_job", runs["H"]),
    ]
    assert all("id_not_null (1 row(s))" in r[4] for r in result)


def test_dates_that_succeeded_after_retries(seed_log, seed_home, spark):
    _, _, runs, records = seed_home
    start = {name: _utc(records[run_id].start_time) for name, run_id in runs.items()}
    assert sorted(_sql(spark, SUCCEEDED_AFTER_RETRIES)) == [
        (D("2024-07-05"), 2, 1, start["B"], start["C"]),
        (D("2024-07-16"), 3, 2, start["H"], start["J"]),
    ]  # 07-08 (D, E) never succeeded


def test_retry_success_rate_by_attempt(seed_log, spark):
    """The seed's query groups and orders by ``retry_metadata:retry_count``, a VARIANT: Spark (and
    Databricks) cannot group or order by a VARIANT, so that query fails as the seed wrote it on a
    VARIANT column. With the extracted count cast to INT it gives the expected rows."""
    from pyspark.errors import AnalysisException

    with pytest.raises(AnalysisException, match="GROUP_EXPRESSION_TYPE_IS_NOT_ORDERABLE"):
        spark.sql(RETRY_SUCCESS_RATE).collect()
    cast = RETRY_SUCCESS_RATE.replace("retry_metadata:retry_count", "CAST(retry_metadata:retry_count AS INT)")
    assert [(a, n, s, float(p)) for a, n, s, p in _sql(spark, cast)] == [
        (1, 3, 1, 33.33),  # C (success), E, I (failed)
        (2, 1, 1, 100.0),  # J
    ]


def test_retry_metadata_holds_the_seeds_fields(seed_log, seed_home, spark):
    _, _, runs, records = seed_home
    query = """SELECT run_id, position_date, retry_metadata:is_retry::boolean, retry_metadata:original_run_id::string,
               retry_metadata:retry_count::int, retry_metadata:retry_triggered_by::string,
               retry_metadata:retry_triggered_at::string FROM backfill_log WHERE retry_metadata IS NOT NULL"""
    retries = {r[0]: r[1:] for r in _sql(spark, query)}

    def created(name):
        return _utc(records[runs[name]].create_timestamp.timestamp()).isoformat() + "Z"

    assert retries == {
        runs["C"]: (D("2024-07-05"), True, runs["B"], 1, "re-execution", created("C")),
        runs["E"]: (D("2024-07-08"), True, runs["D"], 1, "rerun_failed_partitions sensor", created("E")),
        runs["I"]: (D("2024-07-16"), True, runs["H"], 1, "re-execution", created("I")),
        runs["J"]: (D("2024-07-16"), True, runs["H"], 2, "re-execution", created("J")),
    }


def test_rows_name_the_job_the_request_and_the_requester(seed_log, seed_home, spark):
    _, _, runs, records = seed_home
    rows = {(r.run_id, str(r.position_date)): r for r in spark.table("backfill_log").collect()}
    assert len(rows) == 17  # two exports: merged, not duplicated
    f = rows[(runs["F"], "2024-07-11")]
    assert (f.job_name, f.job_id, f.backfill_job_id, f.creator_user_name) == (
        "__ephemeral_asset_job__", "__ephemeral_asset_job__", runs["F"], "alice@example.com")
    assert f.run_page_url == f"http://127.0.0.1:3000/runs/{runs['F']}"
    skipped = rows[(runs["F"], "2024-07-13")]
    assert (skipped.status, skipped.backfill_job_id, skipped.job_name) == ("SKIPPED", runs["F"], f.job_name)
    queued = rows[(runs["Q09"], "2024-07-09")]
    assert (queued.status, queued.dagster_status, queued.creator_user_name) == ("STARTED", "QUEUED", "cli")
    assert queued.backfill_job_id == records[runs["Q09"]].dagster_run.tags[tags.LAUNCH_ID]  # the chunked launch
    e = rows[(runs["E"], "2024-07-08")]
    assert (e.status, e.dagster_status, e.creator_user_name) == ("FAILED", "FAILURE", "rerun_failed_partitions")


OLD_SCHEMA = (  # the export's format before it was the seed's table
    "run_id string, position_date date, job_name string, status string, start_time timestamp, "
    "end_time timestamp, duration_s double, attempt int, error_message string, retry_metadata string, "
    "backfill_id string, requested_by string, run_page_url string"
)


def test_an_old_format_table_is_a_clear_error(seed_home, spark, tmp_path, capsys):
    settings, env, _, _ = seed_home
    data_dir = tmp_path / "old"
    env = {**env, "BACKFILL_DATA_DIR": str(data_dir)}
    old = _log_location(settings.__class__(data_dir=data_dir))
    row = ("r1", D("2024-07-01"), "job", "SUCCESS", None, None, None, 1, None, '{"a": "b"}', None, None, None)
    spark.createDataFrame([row], OLD_SCHEMA).write.format("delta").save(old.path)
    code, out, err = run_cli(env, ["status", *RANGE, "--export-log"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{old} has the old backfill_log format" in err
    assert f"delete the directory {old.path}, then run `backfill-platform status --export-log` again" in err
    assert old.read(spark).count() == 1  # left as it was
