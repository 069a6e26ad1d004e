"""``backfill-platform plan`` after a calendar change: business days now that have no rows (to
backfill) and dates with rows that are no longer partitions (the user decides; nothing is deleted),
from a real local Delta table, the stored business_calendar table and a real Dagster instance."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from backfill_platform import cli
from backfill_platform.reports.delta_log import delta_partition_dates, delta_stored_calendar

from ..calendars import EXCHANGE_CALENDAR
from ..conftest import make_dagster_home
from ..helpers import business_calendar, materialize_destination, rows_per_date, seed_source


@pytest.fixture
def federal_table(settings, resources, tmp_path, monkeypatch, spark):
    """Under the default (federal) calendar: the stored calendar for 2024-09..12, and destination_data
    for 2024-10-09..2024-10-15 (Columbus Day 2024-10-14 is not a partition then)."""
    monkeypatch.setenv("DAGSTER_HOME", str(make_dagster_home(tmp_path / "home")))
    monkeypatch.setenv("BACKFILL_DATA_DIR", str(settings.data_dir))
    with dg.DagsterInstance.get() as instance:
        seed_source(resources, instance, first_day="2024-10-01", last_day="2024-10-31", rows_per_date=3)
        config = {"ops": {"business_calendar": {"config": {"first_day": "2024-09-01", "last_day": "2024-12-31"}}}}
        assert dg.materialize([business_calendar], resources=resources, instance=instance, run_config=config).success
        materialize_destination(resources, "2024-10-09", "2024-10-15", instance=instance)
    destination = resources["tables"].destination
    assert rows_per_date(spark, destination) == {"2024-10-09": 3, "2024-10-10": 3, "2024-10-11": 3, "2024-10-15": 3}
    return destination


def test_plan_lists_new_business_days_and_stale_dates_after_a_calendar_change(
    federal_table, resources, spark, monkeypatch, capsys
):
    before = rows_per_date(spark, federal_table)
    # the Delta log read (no Spark) agrees with Spark's own answers
    assert delta_partition_dates(federal_table.path) == set(before)
    calendar = resources["tables"].calendar
    stored = {r[0].isoformat(): (r[1], r[2]) for r in calendar.read(spark).select(
        "calendar_date", "us_business_or_holiday_flag", "day_reason").collect()}
    assert delta_stored_calendar(calendar.path) == stored and len(stored) == 122

    # the calendar changes: a closure on a date with rows, and the exchange calendar (Columbus Day open)
    monkeypatch.setenv("BACKFILL_HOLIDAY_CALENDAR", EXCHANGE_CALENDAR)
    monkeypatch.setenv("BACKFILL_EXTRA_CLOSURES", "2024-10-10=Hurricane Milton")
    assert cli.main(["plan", "--from", "2024-10-07", "--to", "2024-10-18", "--format", "json"]) == 0
    changes = json.loads(capsys.readouterr().out)["calendar_changes"]
    assert changes["new_business_days"] == [
        {"date": "2024-10-14", "now": "a business day", "was": "holiday: Columbus Day"}
    ]
    assert changes["stale_dates"] == [
        {"date": "2024-10-10", "now": "closure: Hurricane Milton", "was": "business day"}
    ]
    assert changes["backfill_commands"] == ["backfill-platform backfill --from 2024-10-14 --to 2024-10-14"]
    assert changes["delete_sql"] == f"DELETE FROM delta.`{federal_table.path}` WHERE position_date IN ('2024-10-10')"
    assert changes["stored_calendar"] == str(calendar)

    assert cli.main(["plan", "--from", "2024-10-07", "--to", "2024-10-18"]) == 0
    text = capsys.readouterr().out
    print(text)
    section = text[text.index("Calendar changes"):].splitlines()
    assert section == [
        "Calendar changes 2024-10-07..2024-10-18 (destination rows vs the current calendar):",
        "  New business days without rows (to backfill): 1",
        "    2024-10-14 Mon  now a business day (was: holiday: Columbus Day)",
        "    run: backfill-platform backfill --from 2024-10-14 --to 2024-10-14",
        "  No longer business days but rows in the table (to remove or keep: you decide; nothing is deleted): 1",
        "    2024-10-10 Thu  now closure: Hurricane Milton (was: business day)",
        f"    to remove them yourself: {changes['delete_sql']}",
    ]
    assert "2024-10-14 Mon" in text[:text.index("Calendar changes")]  # and the plan above selects it
    # nothing was deleted, nothing was written
    assert rows_per_date(spark, federal_table) == before
    assert delta_partition_dates(federal_table.path) == set(before)


def test_plan_without_calendar_changes_says_none(federal_table, monkeypatch, capsys):
    assert cli.main(["plan", "--from", "2024-10-07", "--to", "2024-10-18"]) == 0
    text = capsys.readouterr().out
    assert text[text.index("Calendar changes"):].splitlines()[1:] == [
        "  New business days without rows (to backfill): none",
        "  No longer business days but rows in the table (to remove or keep: you decide; nothing is deleted): none",
    ]


def test_delta_log_dates_agree_with_spark_across_a_checkpoint(spark, tmp_path):
    """The Spark-free read of a partitioned table's dates follows checkpoints, removes and empty tables."""
    path = str(tmp_path / "dates")
    assert delta_partition_dates(path) == set()  # no table yet
    spark.sql(f"CREATE TABLE delta.`{path}` (position_date date, id bigint) USING DELTA PARTITIONED BY (position_date)")
    assert delta_partition_dates(path) == set()
    for day in range(1, 13):  # versions 1..12: Delta writes a checkpoint at version 10
        spark.sql(f"INSERT INTO delta.`{path}` VALUES (DATE'2024-03-{day:02d}', {day})")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE position_date IN ('2024-03-02', '2024-03-11')")
    assert (tmp_path / "dates" / "_delta_log" / f"{10:020d}.checkpoint.parquet").exists()
    expected = {str(row[0]) for row in spark.sql(f"SELECT DISTINCT position_date FROM delta.`{path}`").collect()}
    assert len(expected) == 10
    assert delta_partition_dates(path) == expected
