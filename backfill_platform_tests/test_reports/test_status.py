"""plan / status / heatmap / backfill_log on a REAL history built in a real instance.

The history (July 2024, 4 source rows per day) is made of real runs on the shared local Spark:

- run A: 07-01..07-03 in one range run, succeeds;
- run B: 07-05 fails on real bad data (a NULL id: expectation id_not_null, policy fail); the source
  is repaired and run C, Dagster's re-execution of B from failure (``ReexecutionOptions.from_failure``:
  Dagster records B as its parent and root run), succeeds -> 07-05 "succeeded only after retries";
- run D: 07-08 fails (NULL id); run E (tagged as the rerun sensor's rerun of D) fails again, and the
  sensor's give-up tag is put on E (as the sensor does) -> a give-up;
- 07-09 and 07-10 are submitted by the chunked launcher to the instance's run queue (chunk size 1,
  newest first) with no daemon running, so they stay queued -> in flight;
- 07-11, 07-12 never ran -> missing; 07-04 (Independence Day) and the weekend are not business days.

Run E's rerun and give-up tags are written by the test, as the rerun sensor writes them (a small,
fast history for every output format). The same report over lineage that Dagster's step retries,
run retries, killed and timed-out runs and the real rerun sensor produced with a real daemon is
asserted in ``test_sensors/test_retry_acceptance.py`` (``test_status_reports_the_history_the_daemon_
and_the_sensor_made``, ``test_status_counts_run_retries_from_the_lineage_dagster_wrote``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import struct
from contextlib import contextmanager

import dagster as dg
import pytest

from backfill_platform import cli, launch, tags
from backfill_platform.assets.tables_schema import POSITION_COLUMNS
from backfill_platform.reports.heatmap import heatmap_size
from backfill_platform.resources import local_resources
from backfill_platform.settings import Settings
from backfill_platform_tests.conftest import make_dagster_home
from backfill_platform_tests.helpers import destination_data, source_data

SCHEMA = ", ".join(f"{n} {t}" for n, t in POSITION_COLUMNS.items())
RANGE = ["--from", "2024-07-01", "--to", "2024-07-12"]


@contextmanager
def environment(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def destination_job():
    """destination_data_job of this process's settings (the fixture's BACKFILL_DATA_DIR)."""
    from backfill_platform.definitions import build_defs
    from backfill_platform.settings import load_settings

    return build_defs(load_settings()).resolve_job_def(tags.DESTINATION_JOB)


def _materialize(resources, instance, tags_, **kwargs):
    return dg.materialize(
        [destination_data, source_data], selection=[destination_data], resources=resources,
        instance=instance, tags=tags_, raise_on_error=False, **kwargs,
    )


@pytest.fixture(scope="module")
def history_home(tmp_path_factory, spark):
    """(settings, dagster_home, run ids) of the history described in the module docstring."""
    root = tmp_path_factory.mktemp("history")
    settings = Settings(data_dir=root / "data")
    home = make_dagster_home(root / "dagster_home")
    resources = local_resources(settings)
    tables = resources["tables"]
    env = {"DAGSTER_HOME": str(home), "BACKFILL_DATA_DIR": str(settings.data_dir)}
    with environment(**env), dg.DagsterInstance.from_config(str(home)) as instance:
        import datetime as dt

        # the source, written directly (4 rows per weekday), with one NULL id on 07-05 and on 07-08
        weekdays = [dt.date(2024, 7, d) for d in range(1, 13) if dt.date(2024, 7, d).weekday() < 5]
        rows = [(day, i, 10.0 * i, "ABC"[i % 3]) for day in weekdays for i in range(4)]
        rows += [(dt.date(2024, 7, 5), None, 1.0, "A"), (dt.date(2024, 7, 8), None, 1.0, "A")]
        spark.createDataFrame(rows, SCHEMA).write.format("delta").save(tables.source.path)

        a = _materialize(
            resources, instance,
            {"dagster/asset_partition_range_start": "2024-07-01", "dagster/asset_partition_range_end": "2024-07-03"},
        )
        assert a.success
        job = dg.reconstructable(destination_job)  # re-execution needs a job Dagster can rebuild
        # Dagster keeps the last rebuilt job definition per process (lru_cache on ReconstructableJob): a
        # second build of this fixture in the process (test_seed_log.py imports it) needs this one's settings
        type(job).get_definition.cache_clear()
        type(job).get_repository_definition.cache_clear()
        b = dg.execute_job(job, instance, tags={tags.PARTITION: "2024-07-05"}, raise_on_error=False)
        assert not b.success
        tables.source.delta_table(spark).delete("position_date = DATE'2024-07-05' AND id IS NULL")
        c = dg.execute_job(  # execute_job does not copy the parent's tags itself (the daemon's re-execution does)
            job, instance, tags=b.dagster_run.tags,
            reexecution_options=dg.ReexecutionOptions.from_failure(b.run_id, instance),
        )
        assert c.success
        assert c.dagster_run.parent_run_id == b.run_id == c.dagster_run.root_run_id  # written by Dagster
        d = _materialize(resources, instance, {}, partition_key="2024-07-08")
        assert not d.success
        e = _materialize(
            resources, instance,
            {tags.RERUN_OF_RUN_ID: d.run_id, tags.RERUN_ATTEMPT: "1", tags.REQUESTED_BY: "rerun_failed_partitions"},
            partition_key="2024-07-08",
        )
        assert not e.success
        instance.add_run_tags(e.run_id, {tags.GAVE_UP: "true", tags.GAVE_UP_REASON: "data error: not retried"})

        # chunked launch: plan 07-09..07-10 (missing), chunk 1, newest first, into the run queue
        from backfill_platform.cli.common import CommandContext
        from backfill_platform.cli.reports import build_plan

        args = argparse.Namespace(reprocess="missing", chunk_size=1, newest_first=True, max_concurrent=None)
        plan = build_plan(CommandContext.load(), dt.date(2024, 7, 9), dt.date(2024, 7, 10), args)
        assert [(r.first, r.last) for r in plan.runs] == [("2024-07-10", "2024-07-10"), ("2024-07-09", "2024-07-09")]
        launch_id = launch.launch_chunks(instance, plan.runs, base_tags={"team": "risk"}, newest_first=True)
        queued = launch.launch_runs(instance, launch_id)
    runs = {"A": a.run_id, "B": b.run_id, "C": c.run_id, "D": d.run_id, "E": e.run_id}
    return settings, home, runs, queued, env


def run_cli(env, argv, capsys):
    with environment(**env):
        code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_chunked_launch_queues_native_range_runs(history_home):
    _, _, _, queued, _ = history_home
    assert len(queued) == 2
    by_date = {run.tags["dagster/asset_partition_range_start"]: run for run in queued}
    assert set(by_date) == {"2024-07-09", "2024-07-10"}
    for day, run in by_date.items():
        assert run.status == dg.DagsterRunStatus.QUEUED  # no daemon: the queue holds them
        assert run.job_name == "destination_data_job"
        assert run.tags["dagster/asset_partition_range_end"] == day
        assert run.tags["team"] == "risk" and run.tags[tags.REQUESTED_BY] == "cli"
    assert by_date["2024-07-10"].tags["dagster/priority"] == "2"  # newest first
    assert by_date["2024-07-09"].tags["dagster/priority"] == "1"


def test_status_reports_the_exact_history(history_home, capsys):
    _, _, runs, queued, env = history_home
    code, out, _ = run_cli(env, ["status", *RANGE, "--format", "json"], capsys)
    assert code == 1  # a business day is failed
    report = json.loads(out)
    assert report["counts"] == {
        "materialized": 4, "failed": 1, "missing": 2, "in flight": 2, "not a business day": 3,
    }
    assert report["business_days"] == 9
    dates = {d["date"]: d for d in report["dates"]}
    assert dates["2024-07-04"]["reason"] == "holiday: Independence Day"
    assert dates["2024-07-06"]["reason"] == "weekend (Saturday)"
    assert dates["2024-07-05"]["attempts"] == 2 and dates["2024-07-05"]["run_ids"] == [runs["B"], runs["C"]]
    assert dates["2024-07-05"]["succeeded_after_retries"] is True
    assert dates["2024-07-08"]["state"] == "failed" and dates["2024-07-08"]["gave_up"] is True
    assert "id_not_null (1 row(s))" in dates["2024-07-08"]["last_error"]
    assert dates["2024-07-08"]["last_run_url"] == f"http://127.0.0.1:3000/runs/{runs['E']}"
    assert dates["2024-07-01"]["run_ids"] == [runs["A"]] and dates["2024-07-03"]["run_ids"] == [runs["A"]]
    assert dates["2024-07-01"]["last_duration_s"] > 0
    assert dates["2024-07-11"]["state"] == "missing" and dates["2024-07-11"]["attempts"] == 0
    analytics = report["analytics"]
    assert analytics["succeeded_after_retries"] == [
        {"date": "2024-07-05", "attempts": 2, "failed_runs": 1, "step_retries": 0, "run_ids": [runs["B"], runs["C"]]}
    ]
    assert analytics["success_rate_by_attempt"] == {
        "1": {"attempts": 5, "succeeded": 3, "rate": 0.6},
        "2": {"attempts": 2, "succeeded": 1, "rate": 0.5},
    }
    assert analytics["give_ups"] == [{
        "date": "2024-07-08", "run_id": runs["E"], "reason": "data error: not retried",
        "last_error": dates["2024-07-08"]["last_error"],
    }]
    assert analytics["retry_runs"] == 2 and analytics["step_retries"] == 0

    code, out, _ = run_cli(env, ["status", *RANGE], capsys)
    assert code == 1
    assert (
        "2024-07-01..2024-07-12: 9 business day(s): 4 materialized (44.4%), 1 failed, 2 missing, "
        "2 in flight; 3 weekend/holiday day(s) skipped; 7 run(s)"
    ) in out
    assert "succeeded only after retries: 2024-07-05 (run attempt 2)" in out
    assert "success rate by attempt:      #1: 3/5 (60%), #2: 1/2 (50%)" in out
    assert f"rerun sensor give-ups:        2024-07-08 (run {runs['E'][:8]}: data error: not retried)" in out

    code, out, _ = run_cli(env, ["status", *RANGE, "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12 and [r["state"] for r in rows].count("materialized") == 4
    # without a range: the span of all runs (07-01..07-10)
    code, out, _ = run_cli(env, ["status", "--format", "json"], capsys)
    assert (json.loads(out)["from"], json.loads(out)["to"]) == ("2024-07-01", "2024-07-10")


def test_plan_selects_by_reprocess_and_estimates_from_past_runs(history_home, capsys):
    _, _, _, _, env = history_home
    code, out, _ = run_cli(env, ["plan", *RANGE, "--format", "json"], capsys)
    assert code == 0
    plan = json.loads(out)
    assert [d["date"] for d in plan["days"] if d["action"] == "materialize"] == ["2024-07-11", "2024-07-12"]
    assert {d["date"]: d["action"] for d in plan["days"]}["2024-07-09"] == "skip: in flight"
    assert plan["runs"] == [{"first": "2024-07-11", "last": "2024-07-12", "partitions": 2}]
    assert plan["estimate"]["past_runs"] == 2  # runs A (3 days) and C (1 day)

    code, out, _ = run_cli(
        env, ["plan", *RANGE, "--reprocess", "failed", "--chunk-size", "2", "--format", "json"], capsys
    )
    plan = json.loads(out)
    assert [(r["first"], r["last"]) for r in plan["runs"]] == [
        ("2024-07-08", "2024-07-08"), ("2024-07-11", "2024-07-12")
    ]

    code, out, _ = run_cli(env, ["plan", *RANGE, "--reprocess", "all", "--chunk-size", "2", "--newest-first"], capsys)
    assert "7 business day(s) to materialize in 4 run(s) (at most 2 per run, newest first):" in out
    assert "  run 2: 2024-07-05..2024-07-08 (2 partition(s))" in out  # 07-05 and 07-08 are consecutive partitions
    assert "  run 1: 2024-07-11..2024-07-12 (2 partition(s))" in out
    assert "  run 4: 2024-07-01..2024-07-01 (1 partition(s))" in out
    assert "2024-07-04 Thu  holiday: Independence Day" in out


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_heatmap_png_and_idempotent_log_export(history_home, capsys, spark):
    from backfill_platform.settings import PROJECT_ROOT

    settings, _, runs, _, env = history_home
    png = PROJECT_ROOT / "test-artifacts" / "coverage_heatmap.png"
    png.unlink(missing_ok=True)
    code, _, err = run_cli(env, ["status", *RANGE, "--png", str(png), "--export-log"], capsys)
    assert code == 1
    assert _png_size(png) == heatmap_size(*map(__import__("datetime").date.fromisoformat, ("2024-07-01", "2024-07-12")))
    assert png.stat().st_size > 5_000
    assert "backfill_log: 9 row(s) merged" in err and "the table has 9 row(s)" in err

    code, _, err = run_cli(env, ["status", *RANGE, "--export-log"], capsys)
    assert "the table has 9 row(s)" in err  # twice: no duplicates
    log = spark.read.format("delta").load(str(settings.data_dir / "warehouse" / "backfill_demo" / "backfill_log"))
    assert log.count() == 9
    # the seed's table (test_seed_log.py runs the seed's queries on it): retry_metadata is a VARIANT
    log = log.withColumn("retry_metadata", log.retry_metadata.cast("string"))
    retried = log.where(f"run_id = '{runs['C']}'").first()
    assert str(retried.position_date) == "2024-07-05" and retried.status == "SUCCESS" and retried.attempt == 2
    assert json.loads(retried.retry_metadata)["original_run_id"] == runs["B"]
    gave_up = log.where(f"run_id = '{runs['E']}'").first()
    assert (gave_up.status, gave_up.dagster_status) == ("FAILED", "FAILURE") and "id_not_null" in gave_up.error_message
    assert json.loads(gave_up.retry_metadata)["retry_triggered_by"] == "rerun_failed_partitions sensor"
    assert gave_up.run_page_url == f"http://127.0.0.1:3000/runs/{runs['E']}"
    assert log.where("status = 'STARTED' AND dagster_status = 'QUEUED'").count() == 2
    assert log.where(f"run_id IN ('{runs['B']}', '{runs['D']}') AND retry_metadata IS NULL").count() == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--from", "2024-07-12", "--to", "2024-07-01"], "--from 2024-07-12 is after --to 2024-07-01"),
        (["status", "--from", "07/01/2024", "--to", "2024-07-12"], "is not a date: use the form YYYY-MM-DD"),
        (
            ["plan", "--from", "2024-07-04", "--to", "2024-07-04"],
            "there is no business day between 2024-07-04 and 2024-07-04",
        ),
        (["plan", "--from", "2024-02-30", "--to", "2024-03-04"], "is not a calendar date"),
        (["plan", "--from", "2099-01-02", "--to", "2099-01-05"], "has not ended yet"),
        (["backfill", *RANGE, "--tags", "novalue"], "use KEY=VALUE"),
        (["backfill", *RANGE, "--tags", "dagster/backfill=x"], "are Dagster's own"),
        (["backfill", *RANGE, "--expect", "no_such=warn"], "unknown expectation(s) no_such"),
        (["backfill", *RANGE, "--expect", "value_in_range=ignore"], "must be one of warn, drop, fail"),
    ],
)
def test_bad_input_is_a_clear_message_and_exit_2(tmp_path, capsys, argv, message):
    home = make_dagster_home(tmp_path / "home")
    code, out, err = run_cli({"DAGSTER_HOME": str(home), "BACKFILL_DATA_DIR": str(tmp_path / "data")}, argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err + out
    assert not (tmp_path / "data").exists()  # nothing was written anywhere


def test_empty_instance_status_says_so(tmp_path, capsys):
    home = make_dagster_home(tmp_path / "home")
    env = {"DAGSTER_HOME": str(home), "BACKFILL_DATA_DIR": str(tmp_path / "data")}
    code, out, err = run_cli(env, ["status", *RANGE], capsys)
    assert code == 3
    assert "no destination_data run in this instance yet" in err and "backfill-platform backfill --from" in err
    code, out, err = run_cli(env, ["plan", *RANGE], capsys)
    assert code == 0 and "no estimate: no successful destination_data run in this instance yet" in out


def test_asset_backfill_carries_tags_and_run_config_and_its_days_are_in_flight(tmp_path, capsys):
    """The default (non-chunked) backfill stores tags and run config on the asset backfill, and the
    run config is valid for the job (the launchpad's schema); until the daemon picks the backfill
    up, plan shows its days as in flight."""
    from backfill_platform import backfills
    from backfill_platform.assets.destination_config import destination_run_config
    from backfill_platform_tests.helpers import TEST_DEFS as defs

    run_config = destination_run_config(full_refresh=True, expectation_policies={"value_in_range": "fail"})
    assert dg.validate_run_config(defs.resolve_job_def("destination_data_job"), run_config)
    home = make_dagster_home(tmp_path / "home")
    env = {"DAGSTER_HOME": str(home), "BACKFILL_DATA_DIR": str(tmp_path / "data")}
    with environment(**env), dg.DagsterInstance.from_config(str(home)) as instance:
        backfill_id = backfills.launch_destination_backfill(
            instance, defs, ["2024-07-01", "2024-07-02"], tags={"team": "risk"}, run_config=run_config
        )
        stored = instance.get_backfill(backfill_id)
        assert stored.tags == {"team": "risk"} and stored.run_config == run_config
    code, out, _ = run_cli(env, ["plan", "--from", "2024-07-01", "--to", "2024-07-03", "--format", "json"], capsys)
    actions = {d["date"]: (d["state"], d["action"]) for d in json.loads(out)["days"]}
    assert actions == {
        "2024-07-01": ("in flight", "skip: in flight"),
        "2024-07-02": ("in flight", "skip: in flight"),
        "2024-07-03": ("missing", "materialize"),
    }
