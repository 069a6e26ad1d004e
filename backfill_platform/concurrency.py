"""At most one in-flight run per business date, for single-date and range runs alike, among the runs
the queue launches (``dagster asset materialize`` runs in-process and bypasses it); a run spanning more
calendar days than the date slots is refused at submission.

Dagster's run queue can hold at most one run per unique value of a tag
(``tag_concurrency_limits`` with ``applyLimitPerUniqueValue``). ``dagster/partition`` covers only
single-partition runs: a range run (a backfill chunk) carries ``dagster/asset_partition_range_start``
and ``_end`` instead, and two overlapping ranges have different values for those.

This coordinator is Dagster's ``QueuedRunCoordinator`` plus one step at submission: it tags every
run of a date-partitioned job with one *date slot* per business date it processes::

    backfill_platform/date_slot/<date.toordinal() % partition_slots> = <date>

and adds a per-unique-value limit of 1 for each of the ``partition_slots`` slot keys. Two runs that
share a date share that date's slot key *and* value, so the queue starts only one of them; runs with
disjoint dates never share a (key, value) pair as long as each run spans fewer than
``partition_slots`` calendar days (a date's slot is unique within any such window), so they still
run in parallel. Default 4096 slots, about eleven years: every chunk size, the default 500-day
chunks and ``BACKFILL_MAX_PARTITIONS_PER_RUN=all`` over a decade included. A run spanning more
calendar days than that could not be kept apart from the runs of its dates, so it is refused at
submission (FAILURE with the reason, a logic error) and never starts. (4096 limits cost the queue
daemon a few milliseconds per dequeue; measured in issue 12's note.)

At submission it also refuses a run whose config configures the deployment's resources
(``resources/guard.py``): the run ends FAILURE with the reason (a logic error) and never starts.
``explain_partition_key`` says why a key is not a partition, for the guard that ``instance.py``
installs against holiday keys in asset backfills.

Everything else (``max_concurrent_runs``, other tag limits, pools) is the queued coordinator's own.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import Field, IntSource

from backfill_platform.partitions import BusinessDays, InvalidPartitionDateError
from backfill_platform.resources.guard import overridden_resources, override_message
from backfill_platform.settings import SettingsError, load_settings
from backfill_platform.tags import DATE_SLOT_PREFIX

DEFAULT_PARTITION_SLOTS = 4096


def slot_key(day: dt.date, slots: int) -> str:
    return f"{DATE_SLOT_PREFIX}{day.toordinal() % slots:04d}"


class RunTooLong(ValueError):
    """A run spans more calendar days than there are date slots."""


def date_slot_tags(tags: Mapping[str, str], slots: int, business_days: BusinessDays) -> dict[str, str]:
    """One slot tag per business date of the run ({} for a run without dates); ``RunTooLong`` when
    two of its dates would share a slot key."""
    dates = business_days.run_dates(tags)
    if not dates:
        return {}
    span = (dates[-1] - dates[0]).days + 1
    if span > slots:
        raise RunTooLong(
            f"[logic: run spans more calendar days than the date slots] This run covers {dates[0]}..{dates[-1]}, "
            f"{span} calendar days, and the run queue can keep runs of the same date apart only for runs of at "
            f"most partition_slots={slots} calendar days (dagster.yaml, run_coordinator). Split the range "
            "(backfill-platform backfill --chunk-size, BACKFILL_MAX_PARTITIONS_PER_RUN) or raise "
            "partition_slots. Nothing was written."
        )
    return {slot_key(day, slots): day.isoformat() for day in dates}


@functools.cache
def _business_days() -> BusinessDays:
    return BusinessDays.from_settings(load_settings().calendar)


def explain_partition_key(key: str) -> str | None:
    """Why ``key`` is not a business-day partition ("2024-07-04 (Thursday): holiday: Independence Day:
    not a business day, ..."), or None when this process cannot tell."""
    try:
        _business_days().parse_date(key)
    except InvalidPartitionDateError as reason:
        return str(reason)
    except SettingsError:
        return None
    return None


class PartitionSlotRunCoordinator(dg.QueuedRunCoordinator):
    """``QueuedRunCoordinator`` + at most one queued-and-started run per business date."""

    def __init__(self, partition_slots: int | None = None, **kwargs: Any):
        self._partition_slots = int(partition_slots or DEFAULT_PARTITION_SLOTS)
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls):
        schema = dict(dg.QueuedRunCoordinator.config_type())
        schema["partition_slots"] = Field(
            IntSource,
            is_required=False,
            description="Date-slot tag keys: the longest run, in calendar days, that the queue keeps apart "
            "from other runs of its dates; longer runs are refused (default 4096, about 11 years).",
        )
        return schema

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        return cls(
            inst_data=inst_data,
            partition_slots=config_value.get("partition_slots"),
            max_concurrent_runs=config_value.get("max_concurrent_runs"),
            tag_concurrency_limits=config_value.get("tag_concurrency_limits"),
            dequeue_interval_seconds=config_value.get("dequeue_interval_seconds"),
            dequeue_use_threads=config_value.get("dequeue_use_threads"),
            dequeue_num_workers=config_value.get("dequeue_num_workers"),
            max_user_code_failure_retries=config_value.get("max_user_code_failure_retries"),
            user_code_failure_retry_delay=config_value.get("user_code_failure_retry_delay"),
            block_op_concurrency_limited_runs=config_value.get("block_op_concurrency_limited_runs"),
        )

    @property
    def partition_slots(self) -> int:
        return self._partition_slots

    @property
    def business_days(self) -> BusinessDays:
        """The calendar of this instance's code location (the daemon's / webserver's environment),
        built on the first submission, not when the instance loads."""
        return _business_days()

    @functools.cached_property
    def _slot_limits(self) -> list[dict[str, Any]]:
        return [
            {"key": f"{DATE_SLOT_PREFIX}{slot:04d}", "limit": 1, "value": {"applyLimitPerUniqueValue": True}}
            for slot in range(self._partition_slots)
        ]

    def get_run_queue_config(self):
        config = super().get_run_queue_config()
        return config._replace(tag_concurrency_limits=[*config.tag_concurrency_limits, *self._slot_limits])

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        overridden = overridden_resources(run.run_config)
        if overridden:  # refused: the run ends here, before any process starts (resources/guard.py)
            self._instance.report_run_failed(run, message=override_message(overridden))
            return self._instance.get_run_by_id(run.run_id) or run
        try:
            extra = date_slot_tags(run.tags, self._partition_slots, self.business_days)
        except RunTooLong as refused:  # refused like the resource override above: never starts
            self._instance.report_run_failed(run, message=str(refused))
            return self._instance.get_run_by_id(run.run_id) or run
        if extra:
            self._instance.add_run_tags(run.run_id, extra)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = dg.SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
