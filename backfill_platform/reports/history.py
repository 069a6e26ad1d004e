"""The backfill history of ``destination_data``, read from Dagster's own run and event storage.

This replaces the seed's hand-kept ``backfill_log`` table and its SQL:

- **state per business day** comes from the instance's asset partition status (what the UI's
  partition health bar shows): materialized / failed / in flight, else missing; dates targeted by a
  backfill that has not launched their run yet are in flight too;
- **attempts per date** are the runs that targeted the date (``dagster/partition`` or
  ``dagster/asset_partition_range_start``/``_end`` tags), oldest first, with their status, times,
  error (the step failure, else the run failure), step retries (``STEP_UP_FOR_RETRY`` events) and
  retry lineage tags (Dagster run retries: ``dagster/retry_number``, ``dagster/parent_run_id``,
  ``dagster/root_run_id``; the rerun sensor: ``tags.RERUN_*``; give-ups: ``tags.GAVE_UP``).

*Attempt number*: the n-th run of a date since its last success (a success resets the count), so
"attempt 1" is a first try and a date that needed three runs to land has attempts 1, 2, 3. A range
run counts as one attempt for each of its dates; success rates are over date attempts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

from backfill_platform import dagster_internals
from backfill_platform import tags as platform_tags
from backfill_platform.partitions import BusinessDays
from backfill_platform.sensors.failures import targets_destination
from backfill_platform.tags import (
    BACKFILL as BACKFILL_TAG,
)
from backfill_platform.tags import (
    DESTINATION,
)
from backfill_platform.tags import (
    PARENT_RUN_ID as PARENT_RUN_TAG,
)
from backfill_platform.tags import (
    RETRY_NUMBER as RETRY_NUMBER_TAG,
)
from backfill_platform.tags import (
    ROOT_RUN_ID as ROOT_RUN_TAG,
)

FAILURE_PREFIX = re.compile(r"^[\w.]+\.Failure: ")

MATERIALIZED, FAILED, MISSING, IN_FLIGHT, NOT_BUSINESS = (
    "materialized", "failed", "missing", "in flight", "not a business day",
)
STATES = (MATERIALIZED, FAILED, MISSING, IN_FLIGHT, NOT_BUSINESS)

FINISHED_OK = {dg.DagsterRunStatus.SUCCESS}
FINISHED_BAD = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclasses.dataclass(frozen=True)
class RunAttempt:
    run_id: str
    job_name: str
    status: str  # Dagster run status: SUCCESS, FAILURE, CANCELED, QUEUED, STARTED, ...
    partition_keys: tuple[str, ...]
    created: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    error: str | None
    step_retries: int
    tags: Mapping[str, str]
    url: str

    @property
    def duration_s(self) -> float | None:
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds()
        return None

    @property
    def succeeded(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS.value

    @property
    def failed(self) -> bool:
        return self.status in {s.value for s in FINISHED_BAD}

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    @property
    def gave_up(self) -> bool:
        return self.tags.get(platform_tags.GAVE_UP) == "true"

    def gave_up_on(self, key: str) -> bool:
        """The rerun sensor gave up on ``key`` at this run (a chunk run's give-up names its dates)."""
        dates = self.tags.get(platform_tags.GAVE_UP_DATES)
        return self.gave_up and (key in dates.split(",") if dates else True)

    def lineage(self) -> dict[str, str]:
        """The retry lineage tags this run carries (empty for a first try)."""
        keys = (
            RETRY_NUMBER_TAG, PARENT_RUN_TAG, ROOT_RUN_TAG, BACKFILL_TAG,
            platform_tags.RERUN_OF_RUN_ID, platform_tags.RERUN_ATTEMPT, platform_tags.RERUN_REASON,
            platform_tags.REQUESTED_BY, platform_tags.GAVE_UP, platform_tags.GAVE_UP_REASON,
        )
        lineage = {key: self.tags[key] for key in keys if key in self.tags}
        if self.step_retries:
            lineage["step_retries"] = str(self.step_retries)
        return lineage


@dataclasses.dataclass(frozen=True)
class DateAttempt:
    number: int  # attempt number since the date's last success (1 = first try)
    run: RunAttempt


@dataclasses.dataclass(frozen=True)
class DateHistory:
    day: dt.date
    reason: str  # "business day", "weekend (Saturday)", "holiday: ..."
    state: str  # one of STATES
    attempts: tuple[DateAttempt, ...]

    @property
    def is_business_day(self) -> bool:
        return self.state != NOT_BUSINESS

    @property
    def last(self) -> RunAttempt | None:
        return self.attempts[-1].run if self.attempts else None

    @property
    def last_error(self) -> str | None:
        for attempt in reversed(self.attempts):
            if attempt.run.error:
                return attempt.run.error
        return None

    @property
    def last_duration_s(self) -> float | None:
        for attempt in reversed(self.attempts):
            if attempt.run.duration_s is not None:
                return attempt.run.duration_s
        return None

    def retries_before_landing(self) -> tuple[int, int]:
        """(failed runs, step retries) among the runs that included this date, up to and including
        its latest successful run. A step retry (``RetryRequested``, retrying.py) re-ran every date of
        its run, so it counts for each of them."""
        landed = [i for i, attempt in enumerate(self.attempts) if attempt.run.succeeded]
        if not landed:
            return 0, 0
        tries = [attempt.run for attempt in self.attempts[: landed[-1] + 1]]
        return sum(run.failed for run in tries), sum(run.step_retries for run in tries)

    @property
    def succeeded_after_retries(self) -> bool:
        """It is materialized, and a try that included it failed before its latest success: a failed
        run (followed by a run retry or a rerun-sensor rerun) or a failed step attempt that the step's
        retry policy retried."""
        return self.state == MATERIALIZED and sum(self.retries_before_landing()) > 0

    @property
    def gave_up(self) -> bool:
        """The rerun sensor stopped retrying it, and it has not landed since."""
        key = self.day.isoformat()
        return (
            self.state == FAILED
            and any(a.run.gave_up_on(key) for a in self.attempts if not a.run.succeeded)
            and not (self.last and self.last.succeeded)
        )

    def to_dict(self) -> dict[str, Any]:
        last = self.last
        return {
            "date": self.day.isoformat(),
            "weekday": f"{self.day:%a}",
            "state": self.state,
            "reason": self.reason,
            "attempts": len(self.attempts),
            "last_status": last.status if last else None,
            "last_error": self.last_error,
            "last_duration_s": None if self.last_duration_s is None else round(self.last_duration_s, 3),
            "succeeded_after_retries": self.succeeded_after_retries,
            "failed_runs_before_success": self.retries_before_landing()[0],
            "step_retries_before_success": self.retries_before_landing()[1],
            "gave_up": self.gave_up,
            "run_ids": [a.run.run_id for a in self.attempts],
            "last_run_url": last.url if last else None,
        }


@dataclasses.dataclass(frozen=True)
class History:
    first: dt.date
    last: dt.date
    days: tuple[DateHistory, ...]
    runs: tuple[RunAttempt, ...]  # every destination_data run touching [first, last], oldest first
    ui_url: str

    def business_days(self) -> list[DateHistory]:
        return [d for d in self.days if d.is_business_day]

    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for day in self.days:
            counts[day.state] += 1
        return counts

    def summary_line(self) -> str:
        c = self.counts()
        business = len(self.business_days())
        pct = 100.0 * c[MATERIALIZED] / business if business else 0.0
        return (
            f"{self.first}..{self.last}: {business} business day(s): {c[MATERIALIZED]} materialized "
            f"({pct:.1f}%), {c[FAILED]} failed, {c[MISSING]} missing, {c[IN_FLIGHT]} in flight; "
            f"{c[NOT_BUSINESS]} weekend/holiday day(s) skipped; {len(self.runs)} run(s)"
        )

    def succeeded_after_retries(self) -> list[DateHistory]:
        return [d for d in self.days if d.succeeded_after_retries]

    def give_ups(self) -> list[DateHistory]:
        return [d for d in self.days if d.gave_up]

    def success_rate_by_attempt(self) -> dict[int, dict[str, float]]:
        """attempt number -> finished date attempts, successes, rate."""
        table: dict[int, dict[str, float]] = {}
        for day in self.days:
            for attempt in day.attempts:
                if not attempt.run.finished:
                    continue
                row = table.setdefault(attempt.number, {"attempts": 0, "succeeded": 0, "rate": 0.0})
                row["attempts"] += 1
                row["succeeded"] += int(attempt.run.succeeded)
        for row in table.values():
            row["rate"] = round(row["succeeded"] / row["attempts"], 4) if row["attempts"] else 0.0
        return dict(sorted(table.items()))

    def step_retries(self) -> int:
        return sum(run.step_retries for run in self.runs)

    def run_retries(self) -> int:
        """Runs that are retries: Dagster run retries, re-executions, or rerun-sensor reruns."""
        return sum(1 for run in self.runs if _is_retry(run))

    def analytics(self) -> dict[str, Any]:
        return {
            "succeeded_after_retries": [
                {"date": d.day.isoformat(), "attempts": d.attempts[-1].number if d.attempts else 0,
                 "failed_runs": d.retries_before_landing()[0], "step_retries": d.retries_before_landing()[1],
                 "run_ids": [a.run.run_id for a in d.attempts]}
                for d in self.succeeded_after_retries()
            ],
            "success_rate_by_attempt": {str(k): v for k, v in self.success_rate_by_attempt().items()},
            "give_ups": [
                {"date": d.day.isoformat(), "run_id": d.last.run_id if d.last else None,
                 "reason": next((a.run.tags.get(platform_tags.GAVE_UP_REASON) for a in reversed(d.attempts)
                                 if a.run.gave_up_on(d.day.isoformat())), None),
                 "last_error": d.last_error}
                for d in self.give_ups()
            ],
            "retry_runs": self.run_retries(),
            "step_retries": self.step_retries(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "summary": self.summary_line(),
            "counts": self.counts(),
            "business_days": len(self.business_days()),
            "dates": [d.to_dict() for d in self.days],
            "analytics": self.analytics(),
        }


def _tags_with_lineage(run: dg.DagsterRun) -> dict[str, str]:
    """The run's tags, plus its re-execution lineage from the run itself: run retries and the UI's
    re-execution write dagster/parent_run_id and root_run_id tags, but a re-execution through
    ``dagster.execute_job(reexecution_options=...)`` only sets the run's fields."""
    tags = dict(run.tags)
    if run.parent_run_id:
        tags.setdefault(PARENT_RUN_TAG, run.parent_run_id)
    if run.root_run_id:
        tags.setdefault(ROOT_RUN_TAG, run.root_run_id)
    return tags


def _is_retry(run: RunAttempt) -> bool:
    return any(key in run.tags for key in (RETRY_NUMBER_TAG, PARENT_RUN_TAG, platform_tags.RERUN_OF_RUN_ID))


def run_url(ui_url: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/runs/{run_id}"


def planned_run_ids(instance: dg.DagsterInstance) -> set[str]:
    """Runs that planned to materialize destination_data (Dagster logs ASSET_MATERIALIZATION_PLANNED
    for each asset a run targets when the run is created, whatever the job: backfill runs,
    ``destination_data_job``, ``materialize()``'s ephemeral job, UI launches)."""
    run_ids: set[str] = set()
    cursor = None
    while True:
        result = instance.fetch_planned_materializations(
            dg.AssetRecordsFilter(asset_key=DESTINATION), limit=1000, cursor=cursor
        )
        run_ids |= {record.run_id for record in result.records}
        if not result.has_more:
            return run_ids
        cursor = result.cursor


def _as_datetime(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)


def _step_error(error) -> str:
    """The step's own error: a step that ran out of retries fails with Dagster's "Exceeded
    max_retries of N", caused by the last attempt's error, which is the one worth reporting."""
    if error.cls_name in ("RetryRequested", "RetryRequestedFromPolicy") and error.cause is not None:
        return f"{error.cause.message.strip()} (after {error.message.strip().removeprefix('Exceeded ')})"
    return error.message


def _run_events(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, int]:
    """(error message, number of step retries) of a run, from its event log."""
    events = instance.all_logs(
        run_id,
        of_type={
            dg.DagsterEventType.STEP_FAILURE,
            dg.DagsterEventType.RUN_FAILURE,
            dg.DagsterEventType.STEP_UP_FOR_RETRY,
        },
    )
    error = None
    step_retries = 0
    for entry in events:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            step_retries += 1
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            error = (_step_error(data.error) if data and data.error else event.message) or error
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and error is None:
            error = event.message
    if error:
        error = FAILURE_PREFIX.sub("", error.strip())  # "<module>.Failure: " of a serialized dg.Failure
    return error or None, step_retries


def destination_runs(
    instance: dg.DagsterInstance,
    business_days: BusinessDays,
    *,
    keys: Iterable[str] | None = None,
    ui_url: str = "http://127.0.0.1:3000",
    with_events: bool = True,
) -> list[RunAttempt]:
    """Every run of destination_data (that touches ``keys``, if given), oldest first."""
    wanted = set(keys) if keys is not None else None
    planned = planned_run_ids(instance)
    attempts = []
    for record in instance.get_run_records(filters=dg.RunsFilter(), order_by="create_timestamp", ascending=True):
        run = record.dagster_run
        if run.run_id not in planned and not targets_destination(run, instance):
            continue
        partition_keys = tuple(business_days.run_keys(run.tags))
        if not partition_keys or (wanted is not None and not wanted.intersection(partition_keys)):
            continue
        error, step_retries = _run_events(instance, run.run_id) if with_events else (None, 0)
        attempts.append(
            RunAttempt(
                run_id=run.run_id,
                job_name=run.job_name,
                status=run.status.value,
                partition_keys=partition_keys,
                created=record.create_timestamp,
                start_time=_as_datetime(record.start_time),
                end_time=_as_datetime(record.end_time),
                error=error if run.status != dg.DagsterRunStatus.SUCCESS else None,
                step_retries=step_retries,
                tags=_tags_with_lineage(run),
                url=run_url(ui_url, run.run_id),
            )
        )
    return attempts


def pending_backfill_keys(instance: dg.DagsterInstance) -> set[str]:
    """destination_data partitions that running asset backfills target but have not finished."""
    pending: set[str] = set()
    for backfill in dagster_internals.requested_backfills(instance):
        data = backfill.asset_backfill_data
        if data is None:
            continue
        done = {
            ap.partition_key
            for subset in (data.materialized_subset, data.failed_and_downstream_subset)
            for ap in subset.iterate_asset_partitions()
            if ap.asset_key == DESTINATION
        }
        pending |= {
            ap.partition_key
            for ap in data.target_subset.iterate_asset_partitions()
            if ap.asset_key == DESTINATION and ap.partition_key not in done
        }
    return pending


def partition_states(
    instance: dg.DagsterInstance, keys: Sequence[str], partitions_def: dg.PartitionsDefinition
) -> dict[str, str]:
    """Each business-day key -> materialized / failed / in flight / missing, as the UI shows them."""
    statuses = instance.get_status_by_partition(DESTINATION, list(keys), partitions_def) or {}
    pending = pending_backfill_keys(instance)
    names = {
        dg.AssetPartitionStatus.MATERIALIZED: MATERIALIZED,
        dg.AssetPartitionStatus.FAILED: FAILED,
        dg.AssetPartitionStatus.IN_PROGRESS: IN_FLIGHT,
    }
    states = {}
    for key in keys:
        state = names.get(statuses.get(key), MISSING)
        if key in pending and state != MATERIALIZED:
            state = IN_FLIGHT
        states[key] = state
    return states


def load_history(
    instance: dg.DagsterInstance,
    first: dt.date,
    last: dt.date,
    *,
    business_days: BusinessDays,
    ui_url: str = "http://127.0.0.1:3000",
    with_events: bool = True,
) -> History:
    """The history of every calendar day in [first, last] (weekends and holidays included, as such)."""
    partitions_def, calendar = business_days.partitions_def, business_days.calendar
    all_keys = set(partitions_def.get_partition_keys())
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    keys = [d.isoformat() for d in days if d.isoformat() in all_keys]
    states = partition_states(instance, keys, partitions_def)
    runs = destination_runs(instance, business_days, keys=keys, ui_url=ui_url, with_events=with_events)

    by_key: dict[str, list[DateAttempt]] = {key: [] for key in keys}
    for run in runs:
        for key in run.partition_keys:
            if key not in by_key:
                continue
            previous = by_key[key]
            number = 1 if not previous or previous[-1].run.succeeded else previous[-1].number + 1
            previous.append(DateAttempt(number=number, run=run))

    histories = []
    for day in days:
        verdict = calendar.explain(day)
        key = day.isoformat()
        if key not in all_keys:
            reason = (
                verdict.reason
                if not verdict.is_business_day
                else "not a partition (before the start date or not over yet)"
            )
            histories.append(DateHistory(day, reason, NOT_BUSINESS, ()))
        else:
            histories.append(DateHistory(day, verdict.reason, states[key], tuple(by_key[key])))
    return History(first=first, last=last, days=tuple(histories), runs=tuple(runs), ui_url=ui_url)
