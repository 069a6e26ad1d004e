import datetime as dt

import dagster as dg

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
