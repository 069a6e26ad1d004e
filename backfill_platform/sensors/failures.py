"""What a failed run of ``destination_data`` was about, and whether its failure is final.

Shared by the rerun sensor (which reruns what is not final) and the alert sensor (which alerts on
what is final), so both always agree. A failure is *final* for a date when nothing automatic will
try that date again:

- the run will not be retried by run retries (``dagster/will_retry`` is not ``true``), and
- the date failed with a logic/data error (single-date run, or a range run whose failure names
  the date as the bad one), or the run was already the last sensor rerun allowed
  (``rerun_attempt >= BACKFILL_RERUN_MAX_ATTEMPTS``), or the rerun sensor is not running, or the
  failure was canceled (``canceled``: never retried, never rerun, whatever the run's dates).

The class is read from the failure's ``FAILURE_CLASS_KEY`` metadata (``classification.py``), the
same key whether the asset or the Databricks launcher raised it.

A failed range run (a backfill chunk) is not final for its dates: the rerun sensor splits it into
one run per date, so one bad date cannot keep its chunk-mates from landing.
"""

from __future__ import annotations

import dataclasses
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
    classification_of_failure,
    classify_text,
)
from backfill_platform.partitions import BusinessDays
from backfill_platform.settings import Settings
from backfill_platform.tags import DESTINATION, DESTINATION_JOB

RERUN_SENSOR_NAME = "rerun_failed_partitions"


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




def _meta(metadata, key, default=None):
    value = metadata.get(key)
    return default if value is None else getattr(value, "value", value)


def describe_failed_run(
    instance: dg.DagsterInstance, run: dg.DagsterRun, timestamp: float, business_days: BusinessDays
) -> FailedRun:
    """Read the run's last step failure (or its run failure) and its lineage tags."""
    partitions = tuple(business_days.run_keys(run.tags))
    error_class, reason, message, bad = UNKNOWN.value, "run failed", "", ()
    step_failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if step_failures:
        data = step_failures[-1].dagster_event.step_failure_data
        user = data.user_failure_data
        if user is not None and user.metadata and FAILURE_CLASS_KEY in user.metadata:
            error_class = str(_meta(user.metadata, FAILURE_CLASS_KEY))
            reason = str(_meta(user.metadata, FAILURE_REASON_KEY, ""))
            bad = tuple(_meta(user.metadata, BAD_DATES_KEY, []) or [])
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


def final_dates(failed: FailedRun, settings: Settings, rerun_sensor_running: bool) -> tuple[list[str], str]:
    """The dates this failure is final for, and why ([] when something will retry them)."""
    if failed.will_retry or not failed.partitions:
        return [], "a run retry will follow"
    if failed.error_class == CANCELED:
        return list(failed.partitions), "canceled"
    several = len(failed.partitions) > 1
    if failed.error_class == LOGIC:
        if not several or not rerun_sensor_running:
            return list(failed.partitions), "logic/data error (not retried)"
        if failed.bad_dates:
            return list(failed.bad_dates), "logic/data error (not retried)"
        return [], "range run: its dates are rerun one per run"
    if not rerun_sensor_running:
        return list(failed.partitions), "retries exhausted (the rerun sensor is not running)"
    if several:
        return [], "range run: its dates are rerun one per run"
    if failed.rerun_attempt >= settings.retries.rerun_max_attempts:
        return list(failed.partitions), f"gave up after {failed.rerun_attempt} sensor rerun(s)"
    return [], "the rerun sensor will rerun it"


def sensor_is_running(instance: dg.DagsterInstance, default_running: bool, name: str = RERUN_SENSOR_NAME) -> bool:
    """Whether the rerun sensor is on (its stored state, else its default status in code)."""
    stored = dagster_internals.sensor_is_running(instance, name)
    return default_running if stored is None else stored


def failed_runs_since(
    instance: dg.DagsterInstance, after_timestamp: float, limit: int = 500
) -> Sequence[tuple[dg.DagsterRun, float, float]]:
    """Failed runs of destination_data updated after a timestamp, oldest first."""
    import datetime as dt


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
