"""Date slots of the run coordinator, the business-day schedule, and the instance config."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from backfill_platform.concurrency import PartitionSlotRunCoordinator, RunTooLong, date_slot_tags
from backfill_platform.schedules import SCHEDULE_NAME
from backfill_platform.settings import Settings
from backfill_platform.tags import DATE_SLOT_PREFIX, RANGE_END, RANGE_START, REQUESTED_BY
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
    # a range longer than the slots would put two of its dates on one slot key: refused
    long = {"dagster/asset_partition_range_start": "2024-01-02", "dagster/asset_partition_range_end": "2024-12-31"}
    with pytest.raises(RunTooLong, match="365 calendar days"):
        date_slot_tags(long, 128, BUSINESS_DAYS)
    assert date_slot_tags({"dagster/backfill": "x"}, 128, BUSINESS_DAYS) == {}


def test_project_instance_config(tmp_path):
    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, PartitionSlotRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        slot_limits = [limit for limit in queue.tag_concurrency_limits if limit["key"].startswith(DATE_SLOT_PREFIX)]
        assert len(slot_limits) == 4096 and all(limit["limit"] == 1 for limit in slot_limits)
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


def _submitted(instance, tags: dict) -> dg.DagsterRun:
    """Submit a run without a code location: enough for what the coordinator decides before queueing."""
    run = instance.create_run_for_job(TEST_DEFS.resolve_job_def("destination_data_job"), tags=tags)
    return instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))


def test_the_queue_keeps_one_run_per_date_for_any_run_span(tmp_path):
    """The default 500-business-day chunks (about 700 calendar days) and years-long runs are
    protected like short ones: with the instance's own queue limits and date slots, Dagster's counter
    (what the run queue daemon evaluates) blocks a single-date run inside a long range run that is in
    flight, and not one outside it."""
    from dagster._utils.tags import TagConcurrencyLimitsCounter  # what the run queue daemon evaluates

    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        slots = instance.run_coordinator.partition_slots

    def queued(tags: dict) -> dg.DagsterRun:  # a run as the coordinator tags it at submission
        slot_tags = date_slot_tags(tags, slots, BUSINESS_DAYS)
        return dg.DagsterRun(job_name="destination_data_job", tags={**tags, **slot_tags})

    for first, last in [("2024-01-02", "2024-12-06"), ("2024-01-02", "2025-12-30")]:  # 235 and 500 business days
        long_run = queued({RANGE_START: first, RANGE_END: last})
        dates = BUSINESS_DAYS.between(first, last)
        assert len([key for key in long_run.tags if key.startswith(DATE_SLOT_PREFIX)]) == len(dates) > 230
        counter = TagConcurrencyLimitsCounter(limits, [long_run])
        for day in ["2024-01-02", "2024-07-08", last]:
            assert counter.is_blocked(queued({"dagster/partition": day})), (first, last, day)
        assert not counter.is_blocked(queued({"dagster/partition": "2026-01-02"}))


def test_a_run_longer_than_the_date_slots_is_refused_before_it_starts(tmp_path):
    """A run spanning more calendar days than there are date slots could not be kept apart from the
    runs of its dates: it is refused at submission, FAILURE with the reason, and never starts."""
    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        slots = instance.run_coordinator.partition_slots
        assert slots >= 10 * 366  # ten years of calendar days per run are protected
    home = make_dagster_home(tmp_path / "small", extra_yaml="")
    config = (home / "dagster.yaml").read_text().replace("partition_slots: 4096", "partition_slots: 300")
    (home / "dagster.yaml").write_text(config)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = _submitted(instance, {RANGE_START: "2024-01-02", RANGE_END: "2024-12-06"})
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        message = failure[0].event_log_entry.dagster_event.message
        assert "[logic: run spans more calendar days than the date slots]" in message, message
        assert "340 calendar days" in message and "partition_slots=300" in message, message
