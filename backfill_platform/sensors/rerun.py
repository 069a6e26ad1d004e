"""``rerun_failed_partitions``: the seed's ``05_retry_failed_jobs`` notebook, as a Dagster sensor.

Each tick:

1. reads only the failed runs of ``destination_data`` that changed since its cursor (the first tick
   looks back ``BACKFILL_RERUN_DAYS_BACK`` days, the seed's ``retry_days_back``) and remembers, per
   date, the latest failure: run id, error class, sensor attempt number;
2. asks Dagster's asset status cache (one incremental query for all ~1,750 partitions) which of
   those dates are still failed and have no run queued or in progress (a date that a later run
   materialized, or that is queued/running again, is left alone); runs that run retries will
   retry (``dagster/will_retry=true``) are left to run retries;
3. requests at most ``BACKFILL_RERUN_BATCH_SIZE`` reruns, one run per date (a failed range run is
   thereby split into single dates), each tagged with its lineage: ``rerun_of_run_id``,
   ``rerun_attempt`` (1, 2, ...), ``rerun_reason``, ``requested_by``;
4. gives up on a date whose failure is a logic/data error or was canceled, or whose failed run was already attempt
   ``BACKFILL_RERUN_MAX_ATTEMPTS``: it tags that run ``backfill_platform/rerun_gave_up=true`` (plus
   ``..._reason``), logs it, and names it in the tick's message. A status report finds every
   give-up with ``instance.get_runs(RunsFilter(tags={GAVE_UP: "true"}))`` (``tags.GAVE_UP``), and
   the sensor records an ``AssetObservation`` of the partition with metadata
   ``rerun_gave_up_reason``, ``failed_run_id``, ``rerun_attempts`` (``instance.fetch_observations``,
   and in the UI on the partition's page).

The cursor is JSON: ``{"after": <update timestamp of the last failed run read>, "runs": {run id:
failure}, "pending": {date: run id}, "given_up": {date: {run_id, why, ...}}}``; ``pending`` holds only
dates still waiting for a decision, ``runs`` only the failures they point at (one entry per run, not
per date: a failed 1,700-date range run costs one entry plus 1,700 short date keys).
"""

from __future__ import annotations

import dataclasses
import json
import time

import dagster as dg

from backfill_platform import tags
from backfill_platform.classification import CANCELED, LOGIC
from backfill_platform.partitions import BusinessDays
from backfill_platform.sensors.failures import (
    DESTINATION,
    RERUN_SENSOR_NAME,
    FailedRun,
    describe_failed_run,
    failed_runs_since,
)
from backfill_platform.settings import Settings

GIVEN_UP_KEPT = 500  # give-ups remembered in the cursor (the run tags keep all of them)


@dataclasses.dataclass
class RerunCursor:
    after: float  # update timestamp of the last failed run read
    runs: dict[str, dict]  # run id -> its failure (compact: no per-date copies)
    pending: dict[str, str]  # date -> id of its latest failed run, still waiting for a decision
    given_up: dict[str, dict]  # date -> {run_id, why, timestamp, rerun_attempt}

    @classmethod
    def load(cls, raw: str | None, default_after: float) -> RerunCursor:
        if not raw:
            return cls(default_after, {}, {}, {})
        data = json.loads(raw)
        return cls(
            float(data.get("after", default_after)),
            data.get("runs", {}),
            data.get("pending", {}),
            data.get("given_up", {}),
        )

    def dump(self) -> str:
        given_up = dict(sorted(self.given_up.items())[-GIVEN_UP_KEPT:])
        runs = {run_id: self.runs[run_id] for run_id in set(self.pending.values()) if run_id in self.runs}
        return json.dumps(
            {"after": self.after, "runs": runs, "pending": self.pending, "given_up": given_up}, sort_keys=True
        )


@dataclasses.dataclass(frozen=True)
class RerunDecision:
    reruns: list[dg.RunRequest]
    gave_up: dict[str, str]  # date -> why
    waiting: int  # failed dates left for later ticks (batch limit, or a run in flight)
    cursor: RerunCursor


def _compact(failed: FailedRun) -> dict:
    return {
        "error_class": failed.error_class,
        "reason": failed.reason,
        "message": failed.message[:300],
        "bad_dates": list(failed.bad_dates),
        "several": len(failed.partitions) > 1,
        "rerun_attempt": failed.rerun_attempt,
        "will_retry": failed.will_retry,
        "timestamp": failed.timestamp,
    }


def decide_reruns(
    instance: dg.DagsterInstance, cursor: RerunCursor, settings: Settings, now: float, business_days: BusinessDays
) -> RerunDecision:
    window_start = now - settings.retries.rerun_days_back * 86400
    # 1. new failures since the cursor
    for run, updated, created in failed_runs_since(instance, max(cursor.after, window_start)):
        cursor.after = max(cursor.after, updated)
        if instance.run_retries_enabled and tags.WILL_RETRY not in run.tags:
            continue  # run retries have not decided yet; the run is read again once they have
        failed = describe_failed_run(instance, run, created, business_days)
        cursor.runs[run.run_id] = _compact(failed)
        for day in failed.partitions:
            given_up = cursor.given_up.get(day)
            if given_up and given_up["timestamp"] >= failed.timestamp:
                continue
            pending = cursor.runs.get(cursor.pending.get(day, ""))
            if pending and pending["timestamp"] > failed.timestamp:
                continue  # a later run of this date already failed
            cursor.given_up.pop(day, None)
            cursor.pending[day] = run.run_id
    cursor.pending = {
        day: run_id for day, run_id in cursor.pending.items()
        if run_id in cursor.runs and cursor.runs[run_id]["timestamp"] >= window_start
    }
    if not cursor.pending:
        return RerunDecision([], {}, 0, cursor)

    # 2. which of them are still failed, with nothing queued or running
    status = instance.get_status_by_partition(DESTINATION, sorted(cursor.pending), business_days.partitions_def) or {}
    reruns: list[dg.RunRequest] = []
    gave_up: dict[str, str] = {}
    waiting = 0
    for day in sorted(cursor.pending, key=lambda d: (cursor.runs[cursor.pending[d]]["timestamp"], d)):
        run_id = cursor.pending[day]
        failure = cursor.runs[run_id]
        state = status.get(day)
        if state == dg.AssetPartitionStatus.MATERIALIZED:
            del cursor.pending[day]  # repaired by some later run
            continue
        if state == dg.AssetPartitionStatus.IN_PROGRESS or failure["will_retry"]:
            waiting += 1
            continue
        single = not failure["several"]
        if failure["error_class"] == CANCELED:
            why = "canceled"  # never rerun, whatever the run's dates
        elif failure["error_class"] == LOGIC and (single or day in failure["bad_dates"]):
            first_line = failure["message"].splitlines()[0] if failure["message"] else failure["reason"]
            why = f"logic/data error, not retried: {first_line}"
        elif single and failure["rerun_attempt"] >= settings.retries.rerun_max_attempts:
            why = (
                f"still failing after {failure['rerun_attempt']} sensor rerun(s) "
                f"(limit {settings.retries.rerun_max_attempts})"
            )
        else:
            why = ""
        if why:
            gave_up[day] = why
            del cursor.pending[day]
            cursor.given_up[day] = {
                "run_id": run_id, "why": why, "timestamp": failure["timestamp"],
                "rerun_attempt": failure["rerun_attempt"],
            }
            _tag_give_up(instance, run_id, day, why)
            continue
        if len(reruns) >= settings.retries.rerun_batch_size:
            waiting += 1
            continue
        attempt = failure["rerun_attempt"] + 1
        reruns.append(
            dg.RunRequest(
                run_key=f"rerun:{run_id}:{day}",
                partition_key=day,
                tags={
                    tags.RERUN_OF_RUN_ID: run_id,
                    tags.RERUN_ATTEMPT: str(attempt),
                    tags.RERUN_REASON: f"{failure['error_class']}: {failure['reason']}"[:200],
                    tags.REQUESTED_BY: RERUN_SENSOR_NAME,
                },
            )
        )
        del cursor.pending[day]
    return RerunDecision(reruns, gave_up, waiting, cursor)


def _tag_give_up(instance: dg.DagsterInstance, run_id: str, day: str, why: str) -> None:
    run = instance.get_run_by_id(run_id)
    days = sorted({*filter(None, (run.tags.get(tags.GAVE_UP_DATES, "") if run else "").split(",")), day})
    instance.add_run_tags(
        run_id, {tags.GAVE_UP: "true", tags.GAVE_UP_DATES: ",".join(days), tags.GAVE_UP_REASON: why[:200]}
    )


def build_rerun_sensor(settings: Settings, job, business_days: BusinessDays) -> dg.SensorDefinition:
    default_status = (
        dg.DefaultSensorStatus.RUNNING if settings.automation.running else dg.DefaultSensorStatus.STOPPED
    )

    @dg.sensor(
        name=RERUN_SENSOR_NAME,
        job=job,
        minimum_interval_seconds=settings.retries.rerun_interval_seconds,
        default_status=default_status,
        description=(
            "Reruns destination_data dates whose latest run failed (one run per date, bounded batches, "
            f"at most {settings.retries.rerun_max_attempts} reruns per date, failures of the last "
            f"{settings.retries.rerun_days_back} days); gives up on logic errors and reports give-ups."
        ),
    )
    def rerun_failed_partitions(context: dg.SensorEvaluationContext):
        started = time.perf_counter()
        now = time.time()
        cursor = RerunCursor.load(context.cursor, now - settings.retries.rerun_days_back * 86400)
        decision = decide_reruns(context.instance, cursor, settings, now, business_days)
        elapsed_ms = (time.perf_counter() - started) * 1000
        for day, why in sorted(decision.gave_up.items()):
            context.log.warning(f"Gave up on {day}: {why}")
        summary = (
            f"{len(decision.reruns)} rerun(s) requested"
            + (f" ({', '.join(r.partition_key for r in decision.reruns)})" if decision.reruns else "")
            + (f"; gave up on {len(decision.gave_up)}: "
               + "; ".join(f"{d} ({w})" for d, w in sorted(decision.gave_up.items())) if decision.gave_up else "")
            + f"; {decision.waiting} failed date(s) waiting; tick took {elapsed_ms:.0f} ms"
        )
        context.log.info(summary)
        observations = [
            dg.AssetObservation(
                asset_key=DESTINATION,
                partition=day,
                metadata={
                    "rerun_gave_up_reason": why,
                    "failed_run_id": decision.cursor.given_up[day]["run_id"],
                    "rerun_attempts": decision.cursor.given_up[day]["rerun_attempt"],
                },
            )
            for day, why in sorted(decision.gave_up.items())
        ]
        if decision.reruns:
            return dg.SensorResult(
                run_requests=decision.reruns, asset_events=observations, cursor=decision.cursor.dump()
            )
        return dg.SensorResult(
            skip_reason=dg.SkipReason(summary), asset_events=observations, cursor=decision.cursor.dump()
        )

    return rerun_failed_partitions
