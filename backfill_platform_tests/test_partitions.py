import datetime as dt
import json

import dagster as dg
import pytest

from backfill_platform import cli
from backfill_platform.definitions import build_defs
from backfill_platform.partitions import (
    BusinessCalendar,
    BusinessDays,
    InvalidPartitionDateError,
    build_business_day_partitions,
)
from backfill_platform.settings import CalendarSettings, Settings, SettingsError
from backfill_platform.tags import DESTINATION

from .calendars import EXCHANGE_CALENDAR

DAYS = BusinessDays.from_settings(CalendarSettings())
business_day_partitions, business_calendar_days = DAYS.partitions_def, DAYS.calendar

NOW = dt.datetime(2026, 11, 21, 12, tzinfo=dt.timezone.utc)


def keys_of_year(year: int) -> list[str]:
    return [k for k in business_day_partitions.get_partition_keys(current_time=NOW) if k.startswith(f"{year}-")]


def test_business_day_counts_match_the_seed_facts():
    assert len(keys_of_year(2024)) == 251
    assert len(keys_of_year(2025)) == 250
    all_keys = business_day_partitions.get_partition_keys(current_time=NOW)
    seed_range = [k for k in all_keys if "2024-01-01" <= k <= "2025-11-20"]
    assert len(seed_range) == 474


@pytest.mark.parametrize("holiday", ["2024-07-04", "2024-11-28", "2026-07-03", "2024-01-01", "2025-12-25"])
def test_holidays_are_not_partitions(holiday):
    assert holiday not in business_day_partitions.get_partition_keys(current_time=NOW)


def test_weekends_are_not_partitions_and_the_day_after_thanksgiving_is():
    keys = set(business_day_partitions.get_partition_keys(current_time=NOW))
    assert "2024-11-29" in keys
    assert "2024-06-15" not in keys and "2024-06-16" not in keys  # Saturday, Sunday
    assert business_day_partitions.timezone == "America/New_York"


def test_fridays_window_is_exactly_one_day():
    window = business_day_partitions.time_window_for_partition_key("2024-06-14")  # a Friday
    assert window.start.isoformat() == "2024-06-14T00:00:00-04:00"
    assert window.end.isoformat() == "2024-06-15T00:00:00-04:00"


def test_explain_says_why_a_day_is_not_a_business_day():
    assert business_calendar_days.explain(dt.date(2024, 7, 4)).reason == "holiday: Independence Day"
    assert business_calendar_days.explain(dt.date(2026, 7, 3)).reason == "holiday: Independence Day"
    assert business_calendar_days.explain(dt.date(2024, 6, 15)).reason == "weekend (Saturday)"
    verdict = business_calendar_days.explain(dt.date(2024, 6, 17))
    assert verdict.is_business_day and verdict.reason == "business day"


def test_start_date_and_extra_closures_are_configurable():
    settings = CalendarSettings(
        start_date=dt.date(2025, 1, 1), extra_closures={dt.date(2025, 1, 9): "National Day of Mourning"}
    )
    calendar = BusinessCalendar.from_settings(settings)
    partitions = build_business_day_partitions(settings, calendar)
    keys = partitions.get_partition_keys(current_time=NOW)
    assert keys[0] == "2025-01-02"
    assert "2025-01-09" not in keys and "2025-01-08" in keys
    assert calendar.explain(dt.date(2025, 1, 9)).reason == "closure: National Day of Mourning"


def test_another_pandas_holiday_calendar_can_be_chosen():
    """BACKFILL_HOLIDAY_CALENDAR names a different calendar (exchange-shaped: Good Friday, no Columbus Day,
    no Veterans Day): the code location's partitions follow it."""
    settings = Settings.from_env({"BACKFILL_HOLIDAY_CALENDAR": EXCHANGE_CALENDAR})
    assert settings.calendar.holiday_calendar == EXCHANGE_CALENDAR
    graph = build_defs(settings).resolve_asset_graph()
    keys = set(graph.get(DESTINATION).partitions_def.get_partition_keys(current_time=NOW))
    assert {"2024-10-14", "2024-11-11", "2025-10-13", "2025-11-11"} <= keys  # Columbus, Veterans Day: open
    assert "2024-03-29" not in keys and "2025-04-18" not in keys  # Good Friday: closed
    assert "2024-07-04" not in keys and "2024-11-28" not in keys  # holidays both calendars have
    assert len([k for k in keys if k.startswith("2024-")]) == 251 + 2 - 1
    federal = set(business_day_partitions.get_partition_keys(current_time=NOW))
    assert keys ^ federal == {
        "2024-03-29", "2024-10-14", "2024-11-11", "2025-04-18", "2025-10-13", "2025-11-11",
        "2026-04-03", "2026-10-12", "2026-11-11",
    }
    with pytest.raises(SettingsError, match="BACKFILL_HOLIDAY_CALENDAR"):
        BusinessCalendar.from_settings(CalendarSettings(holiday_calendar="pandas.tseries.holiday:NoSuchCalendar"))


HOLIDAYS_IN_A_NEW_PROCESS = """
import json, sys
from backfill_platform.partitions import BusinessCalendar
from backfill_platform.settings import CalendarSettings
calendar = BusinessCalendar.from_settings(CalendarSettings())
print(json.dumps({"pandas imported": "pandas" in sys.modules,
                  "holidays": sorted((day.isoformat(), name) for day, name in calendar.holidays.items())}))
"""


def test_pandas_holiday_calendars_are_read_from_a_file_after_the_first_process(tmp_path, monkeypatch):
    """Importing pandas costs 0.5-0.9 s per process that loads the definitions: the default calendar's
    holidays are computed by pandas once, then read from ``$XDG_CACHE_HOME/backfill_platform``; a damaged
    file is computed again and rewritten; a calendar that is not pandas' own is never kept."""
    import os
    import subprocess
    import sys

    def new_process() -> dict:
        done = subprocess.run([sys.executable, "-c", HOLIDAYS_IN_A_NEW_PROCESS], capture_output=True, text=True,
                              env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)}, timeout=120, check=True)
        return json.loads(done.stdout)

    first, second = new_process(), new_process()
    assert first["pandas imported"] and not second["pandas imported"]
    assert first["holidays"] == second["holidays"] and ["2024-07-04", "Independence Day"] in first["holidays"]
    [kept] = (tmp_path / "backfill_platform").glob("holidays-*.json")
    kept.write_text('{"2024-07-04": ')  # damaged: computed again, and the file repaired
    third = new_process()
    assert third["pandas imported"] and third["holidays"] == first["holidays"]
    assert json.loads(kept.read_text()) == first["holidays"] and not new_process()["pandas imported"]
    kept.write_text("[]")  # no holidays at all over years: damaged too
    assert new_process()["holidays"] == first["holidays"]

    from backfill_platform.partitions import holiday_cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    BusinessCalendar.from_settings(CalendarSettings(holiday_calendar=EXCHANGE_CALENDAR))
    assert holiday_cache_file(EXCHANGE_CALENDAR, dt.date(2020, 1, 1), dt.date(2026, 12, 31)) is None
    assert not (tmp_path / "other").exists()


def test_explain_command_follows_the_configured_calendar(monkeypatch, capsys):
    """``backfill-platform explain DATE...`` answers from BACKFILL_HOLIDAY_CALENDAR and BACKFILL_EXTRA_CLOSURES."""
    monkeypatch.setenv("BACKFILL_HOLIDAY_CALENDAR", EXCHANGE_CALENDAR)
    monkeypatch.setenv("BACKFILL_EXTRA_CLOSURES", "2025-01-09=National Day of Mourning")
    dates = ["2024-10-14", "2024-11-11", "2024-03-29", "2024-07-04", "2025-01-09", "2024-06-15", "2023-12-29"]
    assert cli.main(["explain", *dates]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2024-10-14 (Monday): business day: a partition of destination_data",
        "2024-11-11 (Monday): business day: a partition of destination_data",
        "2024-03-29 (Friday): holiday: Good Friday: not a business day, not a partition of destination_data",
        "2024-07-04 (Thursday): holiday: Independence Day: not a business day, not a partition of destination_data",
        "2025-01-09 (Thursday): closure: National Day of Mourning: not a business day, "
        "not a partition of destination_data",
        "2024-06-15 (Saturday): weekend (Saturday): not a business day, not a partition of destination_data",
        "2023-12-29 (Friday): business day: not a partition of destination_data: "
        "2023-12-29 is before the first partition 2024-01-01 (set BACKFILL_START_DATE to go further back).",
    ]
    assert cli.main(["explain", "2024-10-14", "2024-03-29", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"date": "2024-10-14", "weekday": "Monday", "business_day": True, "partition": True,
         "reason": "business day"},
        {"date": "2024-03-29", "weekday": "Friday", "business_day": False, "partition": False,
         "reason": "holiday: Good Friday"},
    ]
    assert cli.main(["explain", "2024-13-01"]) == 2
    assert "not a calendar date" in capsys.readouterr().err


def test_settings_come_from_the_environment_with_clear_errors():
    settings = Settings.from_env(
        {"BACKFILL_START_DATE": "2024-03-01", "BACKFILL_EXTRA_CLOSURES": "2025-01-09=Mourning"}
    )
    assert settings.calendar.start_date == dt.date(2024, 3, 1)
    assert settings.calendar.extra_closures == {dt.date(2025, 1, 9): "Mourning"}
    with pytest.raises(SettingsError, match="BACKFILL_DEPLOYMENT"):
        Settings.from_env({"BACKFILL_DEPLOYMENT": "cloud"})
    with pytest.raises(SettingsError, match="BACKFILL_MAX_PARTITIONS_PER_RUN"):
        Settings.from_env({"BACKFILL_MAX_PARTITIONS_PER_RUN": "0"})


@pytest.mark.parametrize(
    "value, message",
    [
        ("2024-07-04", "holiday: Independence Day"),
        ("2024-06-15", "weekend (Saturday)"),
        ("2024-13-45", "not a calendar date"),
        ("2024-06-17; DROP TABLE x", "use the form YYYY-MM-DD"),
        ("17/06/2024", "use the form YYYY-MM-DD"),
        ("2023-12-29", "before the first partition 2024-01-01"),
        ("2026-12-01", "has not ended yet"),
    ],
)
def test_bad_dates_are_rejected_with_the_reason(value, message):
    with pytest.raises(InvalidPartitionDateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DAYS.parse_date(value, now=NOW)


def test_business_days_between_takes_non_business_ends_and_rejects_reversed_ranges():
    keys = DAYS.between("2024-06-29", "2024-07-07", now=NOW)  # Saturday .. Sunday
    assert keys == ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05"]
    with pytest.raises(InvalidPartitionDateError, match="is after"):
        DAYS.between("2024-07-05", "2024-07-01", now=NOW)
    with pytest.raises(InvalidPartitionDateError, match="no business day"):
        DAYS.between("2024-07-04", "2024-07-04", now=NOW)


def test_fast_has_partition_key_agrees_with_dagsters_own_check():
    """The subclass answers has_partition_key from a set of excluded dates (speed: the rerun sensor's
    status cache validates ~1,750 keys); it must give Dagster's answer for every day and bad key."""
    start = dt.date(2023, 12, 20)  # before the first partition .. past today (future days are not partitions)
    keys = [(start + dt.timedelta(days=i)).isoformat() for i in range((dt.date.today() - start).days + 40)]
    keys += ["2024-1-5", "2024-02-30", "2024-07-04T00:00", "", "20240705", "2024-07-05 "]
    ours = {key: business_day_partitions.has_partition_key(key) for key in keys}
    dagsters = {key: dg.TimeWindowPartitionsDefinition.has_partition_key(business_day_partitions, key) for key in keys}
    assert ours == dagsters
    assert ours["2024-07-05"] and not ours["2024-07-04"] and not ours["2024-07-06"] and not ours["2024-1-5"]
    assert sum(ours.values()) == len(business_day_partitions.get_partition_keys())
    assert hash(business_day_partitions) == dg.TimeWindowPartitionsDefinition.__hash__(business_day_partitions)


def test_memoized_partition_keys_are_dagsters_a_fresh_list_each_call_and_honour_current_time():
    """get_partition_keys is memoized per last partition (plan over 10 years asks several times): the
    same keys as Dagster's own walk, a fresh list each call, and an explicit current_time still honoured."""
    business_days = BusinessDays.from_settings(CalendarSettings(start_date=dt.date(2016, 1, 1)))
    partitions_def = business_days.partitions_def
    dagsters = dg.TimeWindowPartitionsDefinition.get_partition_keys(partitions_def)
    first = partitions_def.get_partition_keys()
    assert first == dagsters and len(first) > 2500
    first.append("mutated by a caller")
    assert partitions_def.get_partition_keys() == dagsters
    then = dt.datetime(2024, 7, 8, 12, tzinfo=dt.timezone.utc)
    assert partitions_def.get_partition_keys(current_time=then)[-1] == "2024-07-05"


def test_the_table_layout_is_partitioned_or_clustered():
    assert Settings.from_env({}).tables.table_layout == "partitioned"
    assert Settings.from_env({"BACKFILL_TABLE_LAYOUT": "clustered"}).tables.table_layout == "clustered"
    with pytest.raises(SettingsError, match="BACKFILL_TABLE_LAYOUT='zorder': use partitioned or clustered"):
        Settings.from_env({"BACKFILL_TABLE_LAYOUT": "zorder"})
