import datetime as dt

import dagster as dg

from backfill_platform.assets import build_assets
from backfill_platform.definitions import build_defs
from backfill_platform.partitions import BusinessDays
from backfill_platform.resources import local_resources
from backfill_platform.settings import Settings
from backfill_platform.tags import CALENDAR, DESTINATION
from backfill_platform_tests.calendars import EXCHANGE_CALENDAR
from backfill_platform_tests.helpers import BUSINESS_DAYS, business_calendar, seed_source

NOW = dt.datetime(2026, 11, 21, 12, tzinfo=dt.timezone.utc)


def test_calendar_table_agrees_day_by_day_with_the_partitions(spark, resources):
    result = dg.materialize([business_calendar], resources=resources)
    assert result.success
    table = resources["tables"].calendar.read(spark)
    assert [name for name, _ in table.dtypes][:7] == [
        "calendar_date",
        "calendar_year",
        "quarter_of_the_year",
        "month_of_the_year",
        "week_of_the_month",
        "us_business_or_holiday_flag",
        "global_business_or_holiday_flag",
    ]
    rows = {row.calendar_date.isoformat(): row for row in table.collect()}
    assert len(rows) == (dt.date(2026, 12, 31) - dt.date(2020, 1, 1)).days + 1 == 2557
    partitions = set(BUSINESS_DAYS.partitions_def.get_partition_keys(current_time=NOW))
    for day, row in rows.items():
        if "2024-01-01" <= day <= "2026-11-20":
            assert (row.us_business_or_holiday_flag == "B") == (day in partitions), day
    assert rows["2024-07-04"].day_reason == "holiday: Independence Day"
    assert rows["2026-07-03"].us_business_or_holiday_flag == "H"
    assert rows["2024-11-29"].us_business_or_holiday_flag == "B"
    assert rows["2024-06-15"].day_reason == "weekend (Saturday)"
    assert rows["2024-06-17"].week_of_the_month == 3 and rows["2024-06-17"].quarter_of_the_year == 2
    assert sum(r.us_business_or_holiday_flag == "B" for d, r in rows.items() if d.startswith("2024")) == 251
    metadata = result.asset_materializations_for_node("business_calendar")[0].metadata
    assert metadata["days"].value == 2557


def test_demo_source_is_the_seeds_source_and_reproducible(spark, resources):
    seed_source(resources)
    source = resources["tables"].source
    frame = source.read(spark)
    assert dict(frame.dtypes) == {"position_date": "date", "id": "bigint", "value": "double", "category": "string"}
    rows = frame.collect()
    days = (dt.date(2024, 1, 1) + dt.timedelta(i) for i in range(690))
    weekdays = [d for d in days if d <= dt.date(2025, 11, 20) and d.weekday() < 5]
    assert len(weekdays) == 494
    assert len(rows) == 4940
    assert {r.position_date for r in rows} == set(weekdays)  # holidays included, as in the seed
    assert {r.id for r in rows} == set(range(10))
    assert all(0 <= r.value < 100 for r in rows)
    assert {r.category for r in rows} == {"A", "B", "C"}
    first = sorted(tuple(r) for r in rows)
    seed_source(resources)
    assert sorted(tuple(r) for r in source.read(spark).collect()) == first


def _materialize_calendar(spark, settings, resources, first_day="2024-01-01", last_day="2025-12-31") -> dict:
    """business_calendar of the code location built from ``settings``, materialized: its rows by date."""
    (asset,) = [a for a in build_assets(settings, BusinessDays.from_settings(settings.calendar)) if a.key == CALENDAR]
    config = {"ops": {"business_calendar": {"config": {"first_day": first_day, "last_day": last_day}}}}
    assert dg.materialize([asset], resources=resources, run_config=config).success
    return {row.calendar_date.isoformat(): row for row in resources["tables"].calendar.read(spark).collect()}


def test_a_second_holiday_calendar_and_extra_closures_reach_the_table_and_the_partitions(tmp_path, spark):
    """BACKFILL_HOLIDAY_CALENDAR set to an exchange-shaped calendar and BACKFILL_EXTRA_CLOSURES set: the
    table written by a real materialization agrees date by date with the code location's partitions,
    and a closure is an 'H' day with its name in ``holiday_name``."""
    settings = Settings.from_env({
        "BACKFILL_DATA_DIR": str(tmp_path / "data"),
        "BACKFILL_SPARK_SERVER": "embedded",  # this pytest process's JVM (conftest)
        "BACKFILL_HOLIDAY_CALENDAR": EXCHANGE_CALENDAR,
        "BACKFILL_EXTRA_CLOSURES": "2025-01-09=National Day of Mourning,2024-10-15=Hurricane",
    })
    rows = _materialize_calendar(spark, settings, local_resources(settings))
    assert len(rows) == 731
    graph = build_defs(settings).resolve_asset_graph()
    partitions = set(graph.get(DESTINATION).partitions_def.get_partition_keys(current_time=NOW))
    assert {day for day, row in rows.items() if row.us_business_or_holiday_flag == "B"} == partitions & set(rows)
    for day in ("2024-10-14", "2024-11-11", "2025-10-13", "2025-11-11"):  # Columbus Day, Veterans Day: open
        assert rows[day].us_business_or_holiday_flag == "B" and rows[day].holiday_name is None, day
        assert rows[day].day_reason == "business day"
    good_friday = rows["2024-03-29"]
    assert (good_friday.us_business_or_holiday_flag, good_friday.day_reason, good_friday.holiday_name) == (
        "H", "holiday: Good Friday", "Good Friday"
    )
    for day, name in (("2025-01-09", "National Day of Mourning"), ("2024-10-15", "Hurricane")):
        row = rows[day]
        assert (row.us_business_or_holiday_flag, row.global_business_or_holiday_flag) == ("H", "H"), day
        assert (row.holiday_name, row.day_reason) == (name, f"closure: {name}"), day
    assert rows["2024-06-15"].holiday_name is None and rows["2024-06-15"].day_reason == "weekend (Saturday)"
