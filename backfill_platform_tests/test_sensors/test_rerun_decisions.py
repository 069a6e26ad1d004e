"""Issue 11: the rerun sensor decides every failed date once, never wedges, never silently forgets.

Real failed runs of ``destination_data`` (really materialized on the session's local Spark + Delta, in
a real test instance) and the real ``rerun_failed_partitions`` sensor, evaluated tick after tick as
the daemon does: ``evaluate_tick`` on a ``build_sensor_context`` with the previous tick's cursor, and
the tick's observations stored with ``report_runless_asset_event`` (what the sensor daemon does with
them). No daemon: the run requests are asserted, not launched (one is executed to show it does what
the failed run did).

The runs fail for real: a source without the table, a source whose schema drifted (range-wide logic
errors: no bad date named), and a seeded source that lacks a date (a per-date logic error naming it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time

import dagster as dg
import pytest

from backfill_platform import tags
from backfill_platform.definitions import build_defs
from backfill_platform.partitions import BusinessDays
from backfill_platform.resources import local_resources
from backfill_platform.sensors.failures import (
    GIVE_UP_EXPIRED,
    GIVE_UP_FINAL,
    GIVE_UP_KIND_KEY,
    GIVE_UP_REASON_KEY,
    GIVE_UP_UNDECIDABLE,
    RANGE_WIDE_LOGIC_FINAL,
    RERUN_SENSOR_NAME,
    describe_failed_run,
    final_dates,
)
from backfill_platform.sensors.rerun import RerunCursor, decide_reruns
from backfill_platform.sensors.rerun_requests import request_label
from backfill_platform.settings import CalendarSettings, RetrySettings, Settings

from ..faults import FaultInjector
from ..helpers import destination_data, materialize_destination, seed_source

SETTINGS = Settings()  # the sensor's settings: 3 reruns per date at most, batches of 20, 7 days back
BUSINESS_DAYS = BusinessDays.from_settings(SETTINGS.calendar)
SEEDED_FIRST, SEEDED_LAST = "2024-03-04", "2024-03-15"  # the seeded source's dates (10 business days)
RANGE = BUSINESS_DAYS.between(SEEDED_FIRST, SEEDED_LAST)
MISSING_DAY = "2024-03-01"  # a business day the seeded source lacks


@pytest.fixture(scope="module")
def sources(spark, tmp_path_factory):
    """Resources of three local deployments: a seeded source, a source whose ``value`` column
    drifted to STRING, and no source table at all."""
    root = tmp_path_factory.mktemp("rerun_decisions")
    # no step retries: a run that fails here fails at once (the product waits 60 s before a retry)
    seeded_settings = Settings(data_dir=root / "seeded", retries=RetrySettings(step_max_retries=0))
    seeded = local_resources(seeded_settings)
    seed_source(seeded, first_day=SEEDED_FIRST, last_day=SEEDED_LAST, rows_per_date=2)
    drifted = local_resources(Settings(data_dir=root / "drifted"))
    rows = spark.createDataFrame(
        [(dt.date(2024, 3, 4), 0, "12.5", "A")], "position_date DATE, id BIGINT, value STRING, category STRING"
    )
    drifted["tables"].source.save(rows.write.format("delta").mode("overwrite"))
    return {
        "seeded": seeded,
        "drifted": drifted,
        "no table": local_resources(Settings(data_dir=root / "empty")),
        "seeded_settings": seeded_settings,
    }


def _sensor(settings: Settings = SETTINGS):
    """The deployment's rerun sensor and the definitions it is evaluated against."""
    defs = build_defs(settings)
    return defs.resolve_sensor_def(RERUN_SENSOR_NAME), defs


def _with_grace(seconds: float) -> Settings:
    return SETTINGS.replace(retries=dataclasses.replace(SETTINGS.retries, rerun_retry_grace_seconds=seconds))


def _tick(instance, sensor_and_defs, cursor):
    """One tick, as the sensor daemon evaluates it (the observations are stored as it stores them)."""
    sensor, defs = sensor_and_defs
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    for event in data.asset_events:
        instance.report_runless_asset_event(event)
    return data


def _give_ups(instance) -> list[tuple[str | None, dict]]:
    """(partition, metadata values) of every give-up observation of destination_data, oldest first."""
    records = instance.fetch_observations(tags.DESTINATION, limit=1000).records
    found = [
        (record.partition_key, {key: getattr(value, "value", value) for key, value in
                                record.asset_observation.metadata.items()})
        for record in records
        if GIVE_UP_REASON_KEY in record.asset_observation.metadata
    ]
    return list(reversed(found))


def _fail(resources, first, last=None, instance=None, **run_options) -> str:
    """Really run destination_data over [first, last]; it must fail. Returns the run id."""
    if run_options:
        result = dg.materialize(
            [destination_data], resources=resources, instance=instance, raise_on_error=False,
            tags={tags.RANGE_START: first, tags.RANGE_END: last or first, **run_options.get("tags", {})},
            run_config=run_options.get("run_config"),
        )
    else:
        result = materialize_destination(resources, first, last, instance=instance, raise_on_error=False)
    assert not result.success
    return result.run_id


@pytest.mark.parametrize(
    "source, error",
    [("no table", "does not exist"), ("drifted", "does not match the declared schema")],
)
def test_a_range_wide_logic_error_is_given_up_once_for_every_date_of_the_run(sources, source, error):
    with dg.instance_for_test() as instance:
        run_id = _fail(sources[source], RANGE[0], RANGE[-1], instance=instance)
        sensor = _sensor()
        first = _tick(instance, sensor, None)

        assert first.run_requests == []  # not 10 single-date reruns that would fail the same way
        give_ups = _give_ups(instance)
        assert [partition for partition, _ in give_ups] == RANGE
        for _, metadata in give_ups:
            assert metadata[GIVE_UP_KIND_KEY] == GIVE_UP_FINAL
            assert metadata[GIVE_UP_REASON_KEY].startswith(f"{RANGE_WIDE_LOGIC_FINAL}: ")
            assert error in metadata[GIVE_UP_REASON_KEY]
            assert metadata["failed_run_id"] == run_id
            assert metadata["give_up_dates"] == f"{RANGE[0]}..{RANGE[-1]} (10 dates)"
        # one give-up naming the range: in the tick's message and on the run
        assert f"gave up on 10 date(s): {RANGE[0]}..{RANGE[-1]} (10 dates) (final: range-wide" in first.skip_message
        assert first.skip_message.count("range-wide") == 1
        run = instance.get_run_by_id(run_id)
        assert run.tags[tags.GAVE_UP] == "true" and run.tags[tags.GAVE_UP_DATES] == ",".join(RANGE)
        assert run.tags[tags.GAVE_UP_REASON].startswith(RANGE_WIDE_LOGIC_FINAL)
        # the alert sensor's rule agrees: final for all the run's dates at once (one alert naming them)
        record = instance.get_run_record_by_id(run_id)
        failed = describe_failed_run(instance, record.dagster_run, record.create_timestamp.timestamp(), BUSINESS_DAYS)
        assert final_dates(failed, SETTINGS, True) == (RANGE, RANGE_WIDE_LOGIC_FINAL)

        # decided once: the next tick reads the run again (the give-up tags changed it) and does nothing
        second = _tick(instance, sensor, first.cursor)
        assert second.run_requests == [] and list(second.asset_events) == []
        assert "gave up" not in second.skip_message and json.loads(second.cursor)["pending"] == {}
        assert instance.get_run_by_id(run_id).tags[tags.GAVE_UP_DATES] == ",".join(RANGE)


def test_bad_dates_are_given_up_and_the_other_dates_rerun_with_the_failed_runs_config_and_tags(sources, spark):
    run_config = {"ops": {"destination_data": {"config": {
        "full_refresh": True, "expectation_policies": {"value_in_range": "fail"}}}}}
    user_tags = {"team": "risk", "ticket": "OPS-11"}
    foreign = {"dagster/priority": "3", tags.LAUNCH_ID: "launch-1", tags.REQUESTED_BY: "cli"}
    with dg.instance_for_test() as instance:
        run_id = _fail(sources["seeded"], MISSING_DAY, "2024-03-06", instance=instance,
                       run_config=run_config, tags={**user_tags, **foreign})
        sensor = _sensor(sources["seeded_settings"])
        first = _tick(instance, sensor, None)

        # the run's other dates are consecutive business days: ONE rerun of their range
        reruns = {request_label(request): request for request in first.run_requests}
        assert sorted(reruns) == ["2024-03-04..2024-03-06"]
        for request in reruns.values():
            assert request.run_config == run_config
            assert {key: request.tags.get(key) for key in user_tags} == user_tags
            assert "dagster/priority" not in request.tags and tags.LAUNCH_ID not in request.tags
            assert request.tags[tags.REQUESTED_BY] == RERUN_SENSOR_NAME
            assert request.tags[tags.RERUN_OF_RUN_ID] == run_id and request.tags[tags.RERUN_ATTEMPT] == "1"
        (partition, metadata), = _give_ups(instance)
        assert partition == MISSING_DAY and metadata[GIVE_UP_KIND_KEY] == GIVE_UP_FINAL
        assert metadata[GIVE_UP_REASON_KEY].startswith("logic/data error (not retried): ")
        assert MISSING_DAY in metadata[GIVE_UP_REASON_KEY]  # the failure's own message, naming the date
        assert instance.get_run_by_id(run_id).tags[tags.GAVE_UP_DATES] == MISSING_DAY

        # what the daemon launches for a rerun runs with the failed run's config, over the range
        request = reruns["2024-03-04..2024-03-06"]
        job = sensor[1].resolve_job_def(tags.DESTINATION_JOB)
        result = job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
        assert result.success
        materialization = result.asset_materializations_for_node("destination_data")[0]
        assert materialization.metadata["full_refresh"].value is True
        assert materialization.metadata["dates"].value == 3
        assert instance.get_run_by_id(result.run_id).tags["team"] == "risk"

        second = _tick(instance, sensor, first.cursor)
        assert second.run_requests == [] and list(second.asset_events) == []


def test_dates_that_cannot_be_decided_are_given_up_and_the_others_proceed_in_the_same_tick(sources):
    deleted_day, closed_day = "2024-03-11", "2024-03-12"
    with dg.instance_for_test() as instance:
        # a failure waiting for a run retry; its run is deleted while the sensor waits
        deleted = _fail(sources["no table"], deleted_day, instance=instance)
        instance.add_run_tags(deleted, {tags.WILL_RETRY: "true"})
        first = _tick(instance, _sensor(), None)
        assert first.run_requests == [] and _give_ups(instance) == []
        assert json.loads(first.cursor)["pending"] == {deleted_day: deleted}
        instance.delete_run(deleted)
        # a failed date that the new calendar closes, and a chunk with one bad date
        closed = _fail(sources["no table"], closed_day, instance=instance)
        chunk = _fail(sources["seeded"], MISSING_DAY, "2024-03-05", instance=instance)
        closing = Settings(calendar=CalendarSettings(extra_closures={dt.date.fromisoformat(closed_day): "flood"}))
        sensor = _sensor(closing)

        second = _tick(instance, sensor, first.cursor)

        assert [request_label(r) for r in second.run_requests] == ["2024-03-04..2024-03-05"]
        give_ups = {partition or metadata["date"]: (partition, metadata) for partition, metadata in _give_ups(instance)}
        assert sorted(give_ups) == [MISSING_DAY, deleted_day, closed_day]
        partition, metadata = give_ups[closed_day]  # no longer a partition: an unpartitioned observation
        assert partition is None and metadata["date"] == closed_day
        assert metadata[GIVE_UP_KIND_KEY] == GIVE_UP_UNDECIDABLE and metadata["failed_run_id"] == closed
        reason = metadata[GIVE_UP_REASON_KEY]
        assert "no longer a partition" in reason and "closure: flood" in reason
        partition, metadata = give_ups[deleted_day]
        assert partition == deleted_day and metadata[GIVE_UP_KIND_KEY] == GIVE_UP_UNDECIDABLE
        assert f"failed run {deleted} was deleted" in metadata[GIVE_UP_REASON_KEY]
        assert give_ups[MISSING_DAY][1][GIVE_UP_KIND_KEY] == GIVE_UP_FINAL
        assert instance.get_run_by_id(closed).tags[tags.GAVE_UP_DATES] == closed_day
        assert instance.get_run_by_id(chunk).tags[tags.GAVE_UP_DATES] == MISSING_DAY

        third = _tick(instance, sensor, second.cursor)
        assert third.run_requests == [] and list(third.asset_events) == []
        assert json.loads(third.cursor)["pending"] == {}


def test_a_run_retry_that_never_starts_is_given_up_as_expired_after_the_grace_period(sources):
    day = "2024-03-13"
    with dg.instance_for_test() as instance:
        run_id = _fail(sources["no table"], day, instance=instance)
        instance.add_run_tags(run_id, {tags.WILL_RETRY: "true"})  # what run retries write; no retry follows

        first = _tick(instance, _sensor(_with_grace(3600)), None)
        assert first.run_requests == [] and _give_ups(instance) == []
        assert "1 failed date(s) waiting" in first.skip_message
        assert tags.GAVE_UP not in instance.get_run_by_id(run_id).tags

        sensor = _sensor(_with_grace(0))  # the grace period is over
        second = _tick(instance, sensor, first.cursor)
        assert second.run_requests == []
        (partition, metadata), = _give_ups(instance)
        assert partition == day and metadata[GIVE_UP_KIND_KEY] == GIVE_UP_EXPIRED
        reason = metadata[GIVE_UP_REASON_KEY]
        assert "dagster/will_retry=true" in reason and "no retry started" in reason
        run = instance.get_run_by_id(run_id)
        assert run.tags[tags.GAVE_UP] == "true" and run.tags[tags.GAVE_UP_DATES] == day

        third = _tick(instance, sensor, second.cursor)
        assert third.run_requests == [] and list(third.asset_events) == []


def test_a_run_retry_still_awaited_when_the_look_back_window_passes_is_given_up_not_dropped(sources):
    day = "2024-03-14"
    with dg.instance_for_test() as instance:
        run_id = _fail(sources["no table"], day, instance=instance)
        instance.add_run_tags(run_id, {tags.WILL_RETRY: "true"})
        first = _tick(instance, _sensor(), None)
        assert json.loads(first.cursor)["pending"] == {day: run_id}

        # the sensor's decision 8 days later (the window is 7): the date must not vanish unrecorded
        later = time.time() + 8 * 86400
        decision = decide_reruns(
            instance, RerunCursor.load(first.cursor, 0.0), SETTINGS, later, BUSINESS_DAYS
        )
        cursor = json.loads(decision.cursor.dump())
        assert cursor["pending"] == {}
        assert cursor["given_up"][day]["run_id"] == run_id and cursor["given_up"][day]["kind"] == GIVE_UP_EXPIRED
        assert instance.get_run_by_id(run_id).tags[tags.GAVE_UP_DATES] == day


def test_a_range_run_that_fails_without_naming_a_date_is_rerun_in_halves_until_the_bad_date_is_alone(
    sources, tmp_path
):
    """Issue 13: a chunk is not split into one run per date. 2024-03-08 fails transiently forever in a
    10-date range run: the sensor reruns halves, then halves of the failing half, and gives the date up
    once it failed alone: 6 reruns in 3 ticks land the other 9 dates (one run per date: 10 reruns, then 2
    more for the bad date)."""
    faulty = {**sources["seeded"], "write_hooks": FaultInjector(
        spec="2024-03-08=transient:99", state_dir=str(tmp_path / "faults"))}
    with dg.instance_for_test() as instance:
        failed = _fail(faulty, RANGE[0], RANGE[-1], instance=instance, tags={"team": "risk"})
        assert describe_failed_run(instance, instance.get_run_by_id(failed), 0.0, BUSINESS_DAYS).bad_dates == ()
        sensor, rounds, cursor = _sensor(), [], None
        for _ in range(5):
            tick = _tick(instance, sensor, cursor)
            cursor = tick.cursor
            if not tick.run_requests:
                break
            outcome = []
            for request in tick.run_requests:
                assert request.tags["team"] == "risk" and request.tags[tags.REQUESTED_BY] == RERUN_SENSOR_NAME
                first, _, last = request_label(request).partition("..")
                result = dg.materialize(  # what the daemon launches, with the fault injector
                    [destination_data], resources=faulty, instance=instance, raise_on_error=False,
                    tags={**{key: value for key, value in request.tags.items() if key != "dagster/partition"},
                          tags.RANGE_START: first, tags.RANGE_END: last or first},
                )
                outcome.append((request_label(request), request.tags[tags.RERUN_ATTEMPT], result.success))
            rounds.append(outcome)

        assert rounds == [
            [("2024-03-04..2024-03-08", "1", False), ("2024-03-11..2024-03-15", "1", True)],
            [("2024-03-04..2024-03-06", "2", True), ("2024-03-07..2024-03-08", "2", False)],
            [("2024-03-07", "3", True), ("2024-03-08", "3", False)],
        ], rounds
        (partition, metadata), = _give_ups(instance)
        assert partition == "2024-03-08" and metadata[GIVE_UP_KIND_KEY] == GIVE_UP_FINAL
        assert "gave up after 3 sensor rerun(s)" in metadata[GIVE_UP_REASON_KEY]
        status = instance.get_status_by_partition(tags.DESTINATION, list(RANGE), BUSINESS_DAYS.partitions_def)
        assert sorted(day for day, state in status.items() if state == dg.AssetPartitionStatus.MATERIALIZED) == sorted(
            set(RANGE) - {"2024-03-08"})
