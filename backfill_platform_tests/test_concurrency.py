"""Date slots of the run coordinator, the business-day schedule, and the instance config."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from backfill_platform.concurrency import PartitionSlotRunCoordinator, date_slot_tags
from backfill_platform.schedules import SCHEDULE_NAME
from backfill_platform.settings import Settings
from backfill_platform.tags import DATE_SLOT_PREFIX, DATE_SLOTS_STATUS, REQUESTED_BY
from backfill_platform_tests.helpers import BUSINESS_DAYS, TEST_DEFS

from .conftest import make_dagster_home

RANGE = {"dagster/asset_partition_range_start": "2024-03-01", "dagster/asset_partition_range_end": "2024-03-12"}


def _shared_pairs(a: dict, b: dict) -> set:
    return set(a.items()) & set(b.items())


def test_overlapping_runs_share_a_date_slot_and_disjoint_runs_do_not():
    chunk = date_slot_tags(RANGE, 128, BUSINESS_DAYS)
    assert sorted(chunk.values()) == [
        "2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08",
        "2024-03-11", "2024-03-12",
    ]  # business days only
    assert all(key.startswith(DATE_SLOT_PREFIX) for key in chunk)
    overlapping = date_slot_tags(
        {"dagster/asset_partition_range_start": "2024-03-12", "dagster/asset_partition_range_end": "2024-03-20"},
        128,
        BUSINESS_DAYS,
    )
    single_inside = date_slot_tags({"dagster/partition": "2024-03-06"}, 128, BUSINESS_DAYS)
    next_day = date_slot_tags({"dagster/partition": "2024-03-13"}, 128, BUSINESS_DAYS)
    # 2024-03-01 + 128 + ... days
    same_slot_later = date_slot_tags({"dagster/partition": "2024-07-08"}, 128, BUSINESS_DAYS)
    assert _shared_pairs(chunk, overlapping) == {(next(k for k, v in chunk.items() if v == "2024-03-12"), "2024-03-12")}
    assert _shared_pairs(chunk, single_inside)
    assert not _shared_pairs(chunk, next_day)
    assert not _shared_pairs(chunk, same_slot_later)
    # 60 business days (the largest backfill chunk) fit in 128 slots; a longer hand-made range is flagged
    long = {"dagster/asset_partition_range_start": "2024-01-02", "dagster/asset_partition_range_end": "2024-12-31"}
    assert date_slot_tags(long, 128, BUSINESS_DAYS) == {DATE_SLOTS_STATUS: "unprotected"}
    assert date_slot_tags({"dagster/backfill": "x"}, 128, BUSINESS_DAYS) == {}


def test_project_instance_config(tmp_path):
    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, PartitionSlotRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        slot_limits = [limit for limit in queue.tag_concurrency_limits if limit["key"].startswith(DATE_SLOT_PREFIX)]
        assert len(slot_limits) == 128 and all(limit["limit"] == 1 for limit in slot_limits)
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 3
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 1800
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 4


def test_schedule_requests_the_latest_completed_business_day():
    defs = TEST_DEFS
    schedule = defs.get_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "0 6 * * 1-5" and schedule.execution_timezone == "America/New_York"
    ny = ZoneInfo("America/New_York")
    expected = {
        dt.datetime(2024, 7, 8, 6, tzinfo=ny): "2024-07-05",  # Monday -> Friday
        dt.datetime(2024, 7, 5, 6, tzinfo=ny): "2024-07-03",  # after Independence Day -> the day before it
        dt.datetime(2024, 11, 27, 6, tzinfo=ny): "2024-11-26",
        dt.datetime(2024, 12, 2, 6, tzinfo=ny): "2024-11-29",  # after Thanksgiving weekend
    }
    for when, key in expected.items():
        with dg.build_schedule_context(
            scheduled_execution_time=when, repository_def=defs.get_repository_def()
        ) as context:
            request = schedule.evaluate_tick(context).run_requests[0]
        assert request.partition_key == key and request.run_key == key
        assert request.tags[REQUESTED_BY] == SCHEDULE_NAME


def test_schedule_time_and_timezone_are_settings():
    from backfill_platform.definitions import build_defs

    settings = Settings.from_env(
        {"BACKFILL_SCHEDULE_CRON": "30 7 * * 1-5", "BACKFILL_SCHEDULE_TIMEZONE": "Europe/London"}
    )
    schedule = build_defs(settings).get_schedule_def(SCHEDULE_NAME)
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 7 * * 1-5", "Europe/London")
