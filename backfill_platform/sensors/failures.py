"""What a failed run of ``destination_data`` was about, and whether its failure is final.

Shared by the rerun sensor (which reruns what is not final) and the alert sensor (which alerts on
what is final): both ask :func:`finality`, so they always agree. A failure is *final* for a date
when nothing automatic will try that date again:

- the run will not be retried by run retries (``dagster/will_retry`` is not ``true``), and
- the date failed with a logic/data error (single-date run, or a range run whose failure names
  the date as a bad one), or the run failed with a *range-wide* logic/data error (a range run whose
  logic failure names no bad date: source schema drift, a missing table, bad configuration; every
  date fails the same way, so all of them are final at once), or the run was already the last
  sensor rerun allowed (``rerun_attempt >= BACKFILL_RERUN_MAX_ATTEMPTS``), or the rerun sensor is
  not running, or the failure was canceled (``canceled``: never retried, never rerun, whatever the
  run's dates).

The class is read from the failure's ``FAILURE_CLASS_KEY`` metadata (``classification.py``), the
same key whether the asset or the Databricks launcher raised it; the bad dates from ``BAD_DATES_KEY``.

A range run (a backfill chunk) that failed otherwise (transient, unknown, or a logic error that
names its bad dates) is not final for its other dates: the rerun sensor splits them into one run
per date, so one bad date cannot keep its chunk-mates from landing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import dagster as dg

from backfill_platform import dagster_internals, tags
from backfill_platform.classification import (
    BAD_DATES_KEY,
    CANCELED,
    FAILURE_CLASS_KEY,
    FAILURE_REASON_KEY,
    LOGIC,
    TRANSIENT,
    UNKNOWN,
    class_in_text,
    classification_of_failure,
    classify_text,
)
from backfill_platform.partitions import BusinessDays
from backfill_platform.settings import Settings
from backfill_platform.tags import DESTINATION, DESTINATION_JOB

RERUN_SENSOR_NAME = "rerun_failed_partitions"

# The rerun sensor records each give-up as an AssetObservation of the date with these metadata keys.
# GIVE_UP_KIND says who alerts: "final" give-ups are alerted by the alert sensor from the failed run
# itself (final_dates); "expired" (a run retry that never came) and "undecidable" (deleted run, a date
# that is no longer a partition, an error while deciding) exist only as observations, so the alert
# sensor alerts on those observations.
GIVE_UP_REASON_KEY = "rerun_gave_up_reason"
GIVE_UP_KIND_KEY = "give_up_kind"
GIVE_UP_RUN_KEY = "failed_run_id"  # the failed run given up on
GIVE_UP_DATE_KEY = "date"  # on an unpartitioned give-up observation: a date that is no longer a partition
GIVE_UP_FINAL, GIVE_UP_EXPIRED, GIVE_UP_UNDECIDABLE = "final", "expired", "undecidable"
ALERTED_FROM_OBSERVATIONS = frozenset({GIVE_UP_EXPIRED, GIVE_UP_UNDECIDABLE})

# Which of a failed run's dates its failure is final for (:func:`finality`).
ALL_DATES, BAD_DATES_ONLY, NO_DATES = "all dates", "bad dates only", "no date"
LOGIC_FINAL = "logic/data error (not retried)"
RANGE_WIDE_LOGIC_FINAL = "range-wide logic/data error (not retried)"


@dataclasses.dataclass(frozen=True)
class FailedRun:
    run_id: str
    partitions: tuple[str, ...]
    error_class: str  # a classification.FailureClass value: transient, logic, canceled or unknown
    reason: str
    message: str  # first lines of the error, for alerts and rerun tags
    bad_dates: tuple[str, ...]  # dates a logic error names (subset of partitions)
    rerun_attempt: int  # 0 for a first run, N for the Nth sensor rerun
    will_retry: bool  # run retries will start another run of it
    timestamp: float  # when the run was created (orders the failures of one date)


def targets_destination(run: dg.DagsterRun, instance: dg.DagsterInstance | None = None) -> bool:
    if run.job_name == DESTINATION_JOB:
        return True
    if run.asset_selection:
        return DESTINATION in run.asset_selection
    if instance is not None and run.execution_plan_snapshot_id:  # a job of all its assets
        plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        return any(step.key == "destination_data" for step in plan.steps)
    return False


def run_dates(run_tags, business_days: BusinessDays) -> tuple[str, ...]:
    """The dates a run processed: its partition keys; or, when its range no longer resolves to
    partitions (the calendar or the start date changed since it ran), the business days between its
    ends by today's calendar, so that its failed dates still get a decision (the rerun sensor gives
    up on the ones that are no longer partitions) instead of vanishing unseen."""
    keys = business_days.run_keys(run_tags)
    if keys:
        return tuple(keys)
    covered = tags.partition_range(run_tags)
    if covered is None:
        return ()
    try:
        first, last = (dt.date.fromisoformat(end) for end in covered)
    except ValueError:
        return tuple(sorted(set(covered)))  # not dates at all: name them as they are
    days = (first + dt.timedelta(days=offset) for offset in range((last - first).days + 1))
    return tuple(day.isoformat() for day in days if business_days.calendar.explain(day).is_business_day)


def metadata_value(metadata, key, default=None):
    """The plain value of a metadata entry (``MetadataValue`` or raw), or ``default``."""
    value = metadata.get(key)
    return default if value is None else getattr(value, "value", value)


def dates_label(dates, shown: int = 3) -> str:
    """``2024-03-04, 2024-03-05`` for up to ``shown`` dates, ``2024-03-04..2024-05-24 (60 dates)`` for
    more, ``(no date)`` for none: how give-ups and alerts name the dates they are about."""
    unique = sorted(set(dates))
    if not unique:
        return "(no date)"
    if len(unique) <= shown:
        return ", ".join(unique)
    return f"{unique[0]}..{unique[-1]} ({len(unique)} dates)"


def _first_classified_message(error) -> str | None:
    """The message in an error's cause chain that states its class (the useful one)."""
    while error is not None:
        if class_in_text(error.message or ""):
            return error.message
        error = error.cause
    return None


def describe_failed_run(
    instance: dg.DagsterInstance, run: dg.DagsterRun, timestamp: float, business_days: BusinessDays
) -> FailedRun:
    """Read the run's last step failure (or its run failure) and its lineage tags."""
    partitions = run_dates(run.tags, business_days)
    error_class, reason, message, bad = UNKNOWN.value, "run failed", "", ()
    step_failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if step_failures:
        data = step_failures[-1].dagster_event.step_failure_data
        user = data.user_failure_data
        if user is not None and user.metadata and FAILURE_CLASS_KEY in user.metadata:
            error_class = str(metadata_value(user.metadata, FAILURE_CLASS_KEY))
            reason = str(metadata_value(user.metadata, FAILURE_REASON_KEY, ""))
            bad = tuple(metadata_value(user.metadata, BAD_DATES_KEY, []) or [])
            message = user.description or ""
        elif data.error is not None:
            message = data.error.message
            kind = classification_of_failure(data.error) or classify_text(data.error.cls_name or "", message)
            error_class = kind.value
            reason = f"step failed: {data.error.cls_name}"
    else:
        run_failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        engine = [
            event.message
            for event in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if event.message and any(word in event.message for word in ("exit", "runtime", "terminated by signal"))
        ]
        message = (run_failures[-1].message if run_failures else "") or ""
        # A run that failed before its step: its resources refused to start (resources/guard.py), or
        # the run queue refused it. The failure's error, or its message, carries the class.
        failure_data = run_failures[-1].dagster_event.event_specific_data if run_failures else None
        error = getattr(failure_data, "error", None)
        recorded = (classification_of_failure(error) if error is not None else None) or class_in_text(message)
        if recorded is not None:
            error_class, reason = recorded.value, "the run failed before its step ran"
            message = _first_classified_message(error) or message
        else:
            if engine:
                message = f"{engine[-1]} {message}".strip()
            kind = classify_text("", message)
            if kind == UNKNOWN:
                kind = TRANSIENT  # a run that died without a step failure: worker death, timeout
            error_class = kind.value
            reason = "run worker died or run timed out"
    return FailedRun(
        run_id=run.run_id,
        partitions=partitions,
        error_class=error_class,
        reason=reason,
        message="\n".join(message.strip().splitlines()[:3])[:500],
        bad_dates=tuple(day for day in bad if day in partitions),
        rerun_attempt=int(run.tags.get(tags.RERUN_ATTEMPT, "0") or 0),
        will_retry=run.tags.get(tags.WILL_RETRY) == "true",
        timestamp=timestamp,
    )


def finality(
    error_class: str,
    several: bool,
    has_bad_dates: bool,
    rerun_attempt: int,
    will_retry: bool,
    settings: Settings,
    rerun_sensor_running: bool,
) -> tuple[str, str]:
    """Which dates of a failed run its failure is final for (``ALL_DATES``, ``BAD_DATES_ONLY`` or
    ``NO_DATES``), and why: the one rule of both sensors (the rerun sensor decides with it date by
    date from its cursor, the alert sensor through :func:`final_dates`)."""
    if will_retry:
        return NO_DATES, "a run retry will follow"
    if error_class == CANCELED:
        return ALL_DATES, "canceled"
    if error_class == LOGIC:
        if not several or not rerun_sensor_running:
            return ALL_DATES, LOGIC_FINAL
        if has_bad_dates:  # per-date: the run's other dates are rerun (rerun.rerun_ranges)
            return BAD_DATES_ONLY, LOGIC_FINAL
        return ALL_DATES, RANGE_WIDE_LOGIC_FINAL  # rerunning its dates one by one would fail each the same way
    if not rerun_sensor_running:
        return ALL_DATES, "retries exhausted (the rerun sensor is not running)"
    if several:
        return NO_DATES, "range run: its dates are rerun in halves"
    if rerun_attempt >= settings.retries.rerun_max_attempts:
        return ALL_DATES, f"gave up after {rerun_attempt} sensor rerun(s)"
    return NO_DATES, "the rerun sensor will rerun it"


def final_dates(failed: FailedRun, settings: Settings, rerun_sensor_running: bool) -> tuple[list[str], str]:
    """The dates this failure is final for, and why ([] when something will retry them)."""
    if not failed.partitions:
        return [], "the run has no business date"
    scope, why = finality(
        failed.error_class, len(failed.partitions) > 1, bool(failed.bad_dates), failed.rerun_attempt,
        failed.will_retry, settings, rerun_sensor_running,
    )
    if scope == ALL_DATES:
        return list(failed.partitions), why
    if scope == BAD_DATES_ONLY:
        return list(failed.bad_dates), why
    return [], why


def sensor_is_running(instance: dg.DagsterInstance, default_running: bool, name: str = RERUN_SENSOR_NAME) -> bool:
    """Whether the rerun sensor is on (its stored state, else its default status in code)."""
    stored = dagster_internals.sensor_is_running(instance, name)
    return default_running if stored is None else stored


def failed_runs_since(
    instance: dg.DagsterInstance, after_timestamp: float, limit: int = 500
) -> Sequence[tuple[dg.DagsterRun, float, float]]:
    """Failed runs of destination_data updated after a timestamp, oldest first, each with its
    update and creation timestamps."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=dt.datetime.fromtimestamp(after_timestamp, tz=dt.timezone.utc),
        ),
        limit=limit,
        order_by="update_timestamp",
        ascending=True,
    )
    return [
        (record.dagster_run, record.update_timestamp.timestamp(), record.create_timestamp.timestamp())
        for record in records
        if targets_destination(record.dagster_run, instance)
    ]


# ----------------------------------------------------------- give-up records (rerun sensor -> alert sensor)


@dataclasses.dataclass(frozen=True)
class GiveUp:
    """One give-up decision: the dates of one failed run given up in one tick for one reason."""

    run_id: str
    dates: tuple[str, ...]
    kind: str  # failures.GIVE_UP_FINAL, GIVE_UP_EXPIRED or GIVE_UP_UNDECIDABLE
    why: str
    rerun_attempt: int
    partitioned: bool  # False: the dates are no longer partitions (unpartitioned observations)

    @property
    def label(self) -> str:
        return dates_label(self.dates)


def give_up_observations(give_ups: Sequence[GiveUp]) -> list[dg.AssetObservation]:
    """One observation per date given up; a date that is no longer a partition gets an
    unpartitioned observation naming it under ``date``."""
    observations = []
    for give_up in give_ups:
        metadata = {
            GIVE_UP_REASON_KEY: give_up.why,
            GIVE_UP_KIND_KEY: give_up.kind,
            GIVE_UP_RUN_KEY: give_up.run_id,
            "rerun_attempts": give_up.rerun_attempt,
            "give_up_dates": give_up.label,
        }
        for day in give_up.dates:
            if give_up.partitioned:
                observations.append(dg.AssetObservation(asset_key=DESTINATION, partition=day, metadata=metadata))
            else:
                unpartitioned = {**metadata, GIVE_UP_DATE_KEY: day}  # no longer a partition
                observations.append(dg.AssetObservation(asset_key=DESTINATION, metadata=unpartitioned))
    return observations
