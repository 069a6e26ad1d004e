"""``rerun_failed_partitions``: the seed's ``05_retry_failed_jobs`` notebook, as a Dagster sensor.

Each tick:

1. reads the failed runs of ``destination_data`` that changed since its cursor (the first tick
   looks back ``BACKFILL_RERUN_DAYS_BACK`` days, the seed's ``retry_days_back``), each run once, and
   remembers, per date, the latest failure: run id, error class, bad dates, sensor attempt number;
2. asks Dagster's asset status cache (one incremental query for all ~1,750 partitions) which of
   those dates are still failed and have no run queued or in progress (a date that a later run
   materialized is dropped; one that is queued/running again waits);
3. decides each date on its own (``failures.finality``, the rule the alert sensor uses too):

   - *rerun*: at most ``BACKFILL_RERUN_BATCH_SIZE`` runs per tick, with the failed run's run config
     and user tags, and tagged with its lineage: ``rerun_of_run_id``, ``rerun_attempt`` (1, 2, ...),
     ``rerun_reason``, ``requested_by``. A failed single-date run is rerun as is. A failed range run
     (a backfill chunk) is **bisected** (``rerun_requests.rerun_ranges``): when its failure names the bad dates
     (a data gate), its other dates are rerun as the ranges of consecutive business days between
     them, which should pass; otherwise (transient, unknown) each range of its dates is rerun as two
     halves, and a half that fails again is halved again. A bad date in a 500-date chunk thus costs
     about 2 x log2(500) = 18 reruns, not 499, and a chunk whose failure was passing costs 2;
   - *give up, final*: a logic/data error (the bad dates of a range run that names them; every date
     of a range run whose logic error names none, a *range-wide* error: schema drift, missing table,
     bad configuration), a canceled failure, or a date whose failed run was already attempt
     ``BACKFILL_RERUN_MAX_ATTEMPTS``;
   - *give up, expired*: the failed run said a run retry would follow (``dagster/will_retry=true``)
     but no run with ``dagster/parent_run_id`` equal to it started within ``BACKFILL_RERUN_RETRY_GRACE_SECONDS``
     of the failure (the backfill was canceled, run retries were turned off...), or its retry ended
     without materializing the date, or the date is still waiting at the look-back window's edge;
   - *give up, undecidable*: the date is no longer a partition (the calendar or the start date
     changed), its failed run was deleted, or deciding it raised. One date that cannot be decided
     never keeps the others of the tick from being decided.

4. records each give-up: one ``backfill_platform/rerun_gave_up=true`` tag set on the failed run
   (plus ``..._dates``, ``..._reason``; a status report finds every give-up with
   ``instance.get_runs(RunsFilter(tags={GAVE_UP: "true"}))``), one log line per run and kind naming
   its dates (a range-wide error of a 60-date chunk is *one* give-up naming the range), and an
   ``AssetObservation`` of each date with metadata ``rerun_gave_up_reason``, ``give_up_kind``
   (final / expired / undecidable: the alert sensor alerts on expired and undecidable ones, and on
   final failures from the failed run itself), ``failed_run_id``, ``rerun_attempts`` and
   ``give_up_dates`` (all the dates of that give-up). A date that is no longer a partition gets an
   unpartitioned observation of the asset with the date under ``date``.

The cursor is JSON: ``{"after": <update timestamp of the last failed run read>, "seen": {run id:
creation time}, "runs": {run id: failure}, "pending": {date: run id}, "given_up": {date: {run_id,
why, kind, ...}}}``; ``seen`` holds the failed runs already read in the look-back window (a run
re-read because a tag changed, e.g. the sensor's own give-up tags, is not decided again), ``pending``
only dates still waiting for a decision, ``runs`` only the failures they point at (one entry per
run, not per date: a failed 1,700-date range run costs one entry plus 1,700 short date keys).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence

import dagster as dg

from backfill_platform import tags
from backfill_platform.classification import CANCELED, LOGIC, UNKNOWN
from backfill_platform.partitions import BusinessDays, InvalidPartitionDateError
from backfill_platform.sensors.failures import (
    ALL_DATES,
    BAD_DATES_ONLY,
    DESTINATION,
    GIVE_UP_EXPIRED,
    GIVE_UP_FINAL,
    GIVE_UP_UNDECIDABLE,
    RERUN_SENSOR_NAME,
    FailedRun,
    GiveUp,
    describe_failed_run,
    failed_runs_since,
    finality,
    give_up_observations,
    run_dates,
)
from backfill_platform.sensors.rerun_requests import request_label, rerun_ranges, rerun_request
from backfill_platform.settings import Settings

GIVEN_UP_KEPT = 500  # give-ups remembered in the cursor (the run tags keep all of them)


@dataclasses.dataclass
class RerunCursor:
    after: float  # update timestamp of the last failed run read
    runs: dict[str, dict]  # run id -> its failure (compact: no per-date copies)
    pending: dict[str, str]  # date -> id of its latest failed run, still waiting for a decision
    given_up: dict[str, dict]  # date -> {run_id, why, kind, timestamp, rerun_attempt}
    seen: dict[str, float]  # run id -> creation time, for every failed run read in the look-back window

    @classmethod
    def load(cls, raw: str | None, default_after: float) -> RerunCursor:
        if not raw:
            return cls(default_after, {}, {}, {}, {})
        data = json.loads(raw)
        return cls(
            float(data.get("after", default_after)),
            data.get("runs", {}),
            data.get("pending", {}),
            data.get("given_up", {}),
            data.get("seen", {}),
        )

    def dump(self) -> str:
        given_up = dict(sorted(self.given_up.items())[-GIVEN_UP_KEPT:])
        runs = {run_id: self.runs[run_id] for run_id in set(self.pending.values()) if run_id in self.runs}
        return json.dumps(
            {"after": self.after, "seen": self.seen, "runs": runs, "pending": self.pending, "given_up": given_up},
            sort_keys=True,
        )


@dataclasses.dataclass(frozen=True)
class RerunDecision:
    reruns: list[dg.RunRequest]
    give_ups: list[GiveUp]
    waiting: int  # failed dates left for later ticks (batch limit, a run in flight, a run retry due)
    cursor: RerunCursor


@dataclasses.dataclass(frozen=True)
class _Verdict:
    action: str  # "rerun", "give up", "wait" or "drop" (materialized since)
    kind: str = ""  # of a give-up
    why: str = ""


def _compact(failed: FailedRun, will_retry: bool, failed_at: float) -> dict:
    return {
        "error_class": failed.error_class,
        "reason": failed.reason,
        "message": failed.message[:300],
        "bad_dates": list(failed.bad_dates),
        "several": len(failed.partitions) > 1,
        "rerun_attempt": failed.rerun_attempt,
        "will_retry": will_retry,
        "timestamp": failed.timestamp,
        "failed_at": failed_at,
    }


def _unreadable(run: dg.DagsterRun, created: float, failed_at: float, error: Exception) -> dict:
    """The failure record of a run whose failure could not be read: its dates are given up."""
    return {
        "error_class": UNKNOWN.value, "reason": "failure unreadable", "message": "", "bad_dates": [],
        "several": True, "rerun_attempt": 0,
        "will_retry": False, "timestamp": created, "failed_at": failed_at,
        "undecidable": f"could not read the failure of run {run.run_id}: {type(error).__name__}: {error}"[:300],
    }


def _awaits_run_retry(run: dg.DagsterRun, run_retries_enabled: bool) -> bool:
    """Run retries announced a retry (``dagster/will_retry=true``), or have not decided yet."""
    decided = run.tags.get(tags.WILL_RETRY)
    return decided == "true" or (decided is None and run_retries_enabled)


def _read_failures(
    instance: dg.DagsterInstance, cursor: RerunCursor, window_start: float, business_days: BusinessDays, log
) -> None:
    """Step 1: remember the latest failure of each date, from the failed runs not read yet."""
    retries_on = instance.run_retries_enabled
    for run, updated, created in failed_runs_since(instance, max(cursor.after, window_start)):
        cursor.after = max(cursor.after, updated)
        if created < window_start:
            continue  # created before the look-back window (read again only because a tag changed)
        will_retry = _awaits_run_retry(run, retries_on)
        if run.run_id in cursor.seen:  # read before: only run retries' decision may have changed
            if run.run_id in cursor.runs:
                cursor.runs[run.run_id]["will_retry"] = will_retry
            continue
        cursor.seen[run.run_id] = created
        try:
            failed = describe_failed_run(instance, run, created, business_days)
            days, failure = failed.partitions, _compact(failed, will_retry, updated)
        except Exception as error:  # noqa: BLE001 - one unreadable run must not stop the others
            log.exception(f"Could not read the failure of run {run.run_id}; its dates will be given up")
            days, failure = run_dates(run.tags, business_days), _unreadable(run, created, updated, error)
        cursor.runs[run.run_id] = failure
        for day in days:
            given_up = cursor.given_up.get(day)
            if given_up and given_up["timestamp"] >= failure["timestamp"]:
                continue  # a later run of this date was already given up
            pending = cursor.runs.get(cursor.pending.get(day, ""))
            if pending and pending["timestamp"] > failure["timestamp"]:
                continue  # a later run of this date already failed
            cursor.given_up.pop(day, None)
            cursor.pending[day] = run.run_id


def _is_partition(business_days: BusinessDays, day: str) -> bool:
    try:
        return business_days.partitions_def.has_partition_key(day)
    except Exception:  # noqa: BLE001 - a key the definition cannot even parse is not a partition
        return False


def _not_a_partition(business_days: BusinessDays, day: str) -> str:
    try:
        business_days.parse_date(day)
    except InvalidPartitionDateError as error:
        return f"no longer a partition of destination_data: {error}"
    return f"{day} is not a partition key of destination_data"


def _partition_status(
    instance: dg.DagsterInstance, days: Sequence[str], business_days: BusinessDays, log
) -> tuple[dict[str, dg.AssetPartitionStatus | None], dict[str, str]]:
    """Step 2: status of each date (one query), and the dates whose status could not be read."""
    partitions_def = business_days.partitions_def
    try:
        return dict(instance.get_status_by_partition(DESTINATION, list(days), partitions_def) or {}), {}
    except Exception:  # noqa: BLE001 - fall back to one query per date, to find the dates at fault
        log.exception("Reading the status of the failed dates at once failed; reading them one by one")
    status: dict[str, dg.AssetPartitionStatus | None] = {}
    errors: dict[str, str] = {}
    for day in days:
        try:
            status.update(instance.get_status_by_partition(DESTINATION, [day], partitions_def) or {})
        except Exception as error:  # noqa: BLE001
            errors[day] = f"{type(error).__name__}: {error}"[:300]
    return status, errors


class _Decider:
    """Step 3: the verdict on one pending date. Each verdict reads only what this tick already
    loaded, plus (for a run retry that is due) the failed run's retries."""

    def __init__(self, instance, settings, business_days, now, window_start, grace_seconds, live, status,
                 status_errors):
        self.instance, self.settings, self.business_days = instance, settings, business_days
        self.now, self.window_start, self.grace_seconds = now, window_start, grace_seconds
        self.live: dict[str, dg.DagsterRun] = live
        self.status, self.status_errors = status, status_errors
        self._retries: dict[str, list[dg.DagsterRun]] = {}

    def verdict(self, day: str, run_id: str, failure: dict | None, partitioned: bool) -> _Verdict:
        if not partitioned:
            return _Verdict("give up", GIVE_UP_UNDECIDABLE, _not_a_partition(self.business_days, day))
        if day in self.status_errors:
            return _Verdict("give up", GIVE_UP_UNDECIDABLE,
                            f"its partition status could not be read: {self.status_errors[day]}")
        state = self.status.get(day)
        if state == dg.AssetPartitionStatus.MATERIALIZED:
            return _Verdict("drop")  # repaired by some later run
        if state == dg.AssetPartitionStatus.IN_PROGRESS:
            return _Verdict("wait")
        if failure is None:
            return _Verdict("give up", GIVE_UP_UNDECIDABLE, f"the sensor lost the failure record of run {run_id}")
        if failure.get("undecidable"):
            return _Verdict("give up", GIVE_UP_UNDECIDABLE, failure["undecidable"])
        if run_id not in self.live:
            return _Verdict("give up", GIVE_UP_UNDECIDABLE,
                            f"its failed run {run_id} was deleted, so its failure and config are unknown; "
                            "backfill the date again if it is still needed")
        if failure["will_retry"]:
            return self._run_retry_verdict(run_id, failure)
        scope, why = finality(
            failure["error_class"], failure["several"], bool(failure["bad_dates"]), failure["rerun_attempt"],
            False, self.settings, rerun_sensor_running=True,
        )
        if scope == ALL_DATES or (scope == BAD_DATES_ONLY and day in failure["bad_dates"]):
            if failure["error_class"] == LOGIC:
                first_line = failure["message"].splitlines()[0] if failure["message"] else failure["reason"]
                why = f"{why}: {first_line}"
            elif failure["error_class"] != CANCELED:  # the attempt limit
                why = f"{why} (limit {self.settings.retries.rerun_max_attempts})"
            return _Verdict("give up", GIVE_UP_FINAL, why)
        return _Verdict("rerun")

    def _run_retry_verdict(self, run_id: str, failure: dict) -> _Verdict:
        """A run retry was announced: wait for it, or give the date up as expired."""
        if run_id not in self._retries:
            self._retries[run_id] = list(
                self.instance.get_runs(dg.RunsFilter(tags={tags.PARENT_RUN_ID: run_id}), limit=5)
            )
        retries = self._retries[run_id]
        if any(not retry.is_finished for retry in retries):
            return _Verdict("wait")
        if retries:  # a failed retry is read as a newer failure of the date; this one ended otherwise
            retry = retries[0]
            return _Verdict("give up", GIVE_UP_EXPIRED,
                            f"its run retry {retry.run_id} ended {retry.status.value} without materializing it")
        waited = self.now - failure.get("failed_at", failure["timestamp"])
        if waited >= self.grace_seconds:
            return _Verdict("give up", GIVE_UP_EXPIRED,
                            f"run {run_id} was to be retried by run retries (dagster/will_retry=true) but no "
                            f"retry started within {self.grace_seconds:.0f} s (backfill canceled, or run "
                            "retries turned off?)")
        if failure["timestamp"] < self.window_start:
            return _Verdict("give up", GIVE_UP_EXPIRED,
                            f"still waiting for a run retry of run {run_id} at the edge of the "
                            f"{self.settings.retries.rerun_days_back}-day look-back window")
        return _Verdict("wait")


def decide_reruns(
    instance: dg.DagsterInstance,
    cursor: RerunCursor,
    settings: Settings,
    now: float,
    business_days: BusinessDays,
    log=None,
) -> RerunDecision:
    log = log or dg.get_dagster_logger()
    window_start = now - settings.retries.rerun_days_back * 86400
    _read_failures(instance, cursor, window_start, business_days, log)
    cursor.seen = {run_id: created for run_id, created in cursor.seen.items() if created >= window_start}
    if not cursor.pending:
        return RerunDecision([], [], 0, cursor)

    run_ids = sorted(set(cursor.pending.values()))
    live = {run.run_id: run for run in instance.get_runs(dg.RunsFilter(run_ids=run_ids))}
    partitioned = {day: _is_partition(business_days, day) for day in cursor.pending}
    status, status_errors = _partition_status(
        instance, sorted(day for day, ok in partitioned.items() if ok), business_days, log
    )
    decider = _Decider(instance, settings, business_days, now, window_start,
                       settings.retries.rerun_retry_grace_seconds, live, status, status_errors)

    def oldest_first(day: str) -> tuple[float, str]:
        failure = cursor.runs.get(cursor.pending[day])
        return (failure["timestamp"] if failure else 0.0, day)

    to_rerun: dict[str, list[str]] = {}  # failed run id -> its dates to rerun, oldest failure first
    given_up: dict[tuple[str, str, str, bool], list[str]] = {}  # (run id, kind, why, partitioned) -> dates
    waiting = 0
    for day in sorted(cursor.pending, key=oldest_first):
        run_id = cursor.pending[day]
        failure = cursor.runs.get(run_id)
        try:
            verdict = decider.verdict(day, run_id, failure, partitioned[day])
        except Exception as error:  # noqa: BLE001 - one date that cannot be decided must not stop the others
            log.exception(f"Could not decide what to do with {day} (failed run {run_id}); giving it up")
            verdict = _Verdict("give up", GIVE_UP_UNDECIDABLE,
                               f"deciding it failed: {type(error).__name__}: {error}"[:300])
        if verdict.action == "rerun":
            to_rerun.setdefault(run_id, []).append(day)
            continue
        if verdict.action == "wait":
            waiting += 1
            continue
        del cursor.pending[day]
        if verdict.action == "give up":
            given_up.setdefault((run_id, verdict.kind, verdict.why, partitioned[day]), []).append(day)

    reruns: list[dg.RunRequest] = []
    index = {key: at for at, key in enumerate(business_days.partitions_def.get_partition_keys())} if to_rerun else {}
    for run_id, days in to_rerun.items():
        for dates in rerun_ranges(days, cursor.runs[run_id], index):
            if len(reruns) >= settings.retries.rerun_batch_size:
                waiting += len(dates)  # left pending: requested at a later tick
                continue
            reruns.append(rerun_request(live[run_id], dates, cursor.runs[run_id]))
            for day in dates:
                del cursor.pending[day]

    give_ups = [
        GiveUp(run_id, tuple(sorted(days)), kind, why, (cursor.runs.get(run_id) or {}).get("rerun_attempt", 0),
               is_partition)
        for (run_id, kind, why, is_partition), days in given_up.items()
    ]
    for give_up in give_ups:
        timestamp = (cursor.runs.get(give_up.run_id) or {}).get("timestamp", now)
        for day in give_up.dates:
            cursor.given_up[day] = {
                "run_id": give_up.run_id, "why": give_up.why, "kind": give_up.kind, "timestamp": timestamp,
                "rerun_attempt": give_up.rerun_attempt,
            }
    _tag_give_ups(instance, live, give_ups, log)
    return RerunDecision(reruns, give_ups, waiting, cursor)


def _tag_give_ups(instance: dg.DagsterInstance, live: Mapping[str, dg.DagsterRun], give_ups: Sequence[GiveUp],
                  log) -> None:
    """One tag set per failed run and tick, naming all the dates given up at it (a deleted run has
    none to tag: its give-up is in the observations and the log)."""
    by_run: dict[str, list[GiveUp]] = {}
    for give_up in give_ups:
        by_run.setdefault(give_up.run_id, []).append(give_up)
    for run_id, decisions in by_run.items():
        run = live.get(run_id)
        if run is None:
            continue
        before = filter(None, run.tags.get(tags.GAVE_UP_DATES, "").split(","))
        days = sorted({*before, *(day for decision in decisions for day in decision.dates)})
        why = "; ".join(dict.fromkeys(decision.why for decision in decisions))
        try:
            instance.add_run_tags(
                run_id, {tags.GAVE_UP: "true", tags.GAVE_UP_DATES: ",".join(days), tags.GAVE_UP_REASON: why[:200]}
            )
        except Exception:  # noqa: BLE001 - e.g. deleted meanwhile: the observations still record the give-up
            log.exception(f"Could not tag run {run_id} with its give-up")


def build_rerun_sensor(
    settings: Settings,
    job,
    business_days: BusinessDays,
) -> dg.SensorDefinition:
    default_status = (
        dg.DefaultSensorStatus.RUNNING if settings.automation.running else dg.DefaultSensorStatus.STOPPED
    )

    @dg.sensor(
        name=RERUN_SENSOR_NAME,
        job=job,
        minimum_interval_seconds=settings.retries.rerun_interval_seconds,
        default_status=default_status,
        description=(
            "Reruns destination_data dates whose latest run failed (a failed range run in halves, with the "
            "failed run's config and tags, bounded batches, no more once a date has failed "
            f"{settings.retries.rerun_max_attempts} sensor reruns, failures of the last "
            f"{settings.retries.rerun_days_back} days); gives up on logic errors "
            "(a range-wide one once for all its dates), on run retries that never came and on dates it "
            "cannot decide, and records every give-up."
        ),
    )
    def rerun_failed_partitions(context: dg.SensorEvaluationContext):
        started = time.perf_counter()
        now = time.time()
        cursor = RerunCursor.load(context.cursor, now - settings.retries.rerun_days_back * 86400)
        decision = decide_reruns(
            context.instance, cursor, settings, now, business_days, context.log
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        for give_up in decision.give_ups:
            context.log.warning(
                f"Gave up on {give_up.label} ({give_up.kind}; failed run {give_up.run_id}): {give_up.why}"
            )
        summary = (
            f"{len(decision.reruns)} rerun(s) requested"
            + (f" ({', '.join(request_label(r) for r in decision.reruns)})" if decision.reruns else "")
            + (f"; gave up on {sum(len(g.dates) for g in decision.give_ups)} date(s): "
               + "; ".join(f"{g.label} ({g.kind}: {g.why})" for g in decision.give_ups)
               if decision.give_ups else "")
            + f"; {decision.waiting} failed date(s) waiting; tick took {elapsed_ms:.0f} ms"
        )
        context.log.info(summary)
        observations = give_up_observations(decision.give_ups)
        if decision.reruns:
            return dg.SensorResult(
                run_requests=decision.reruns, asset_events=observations, cursor=decision.cursor.dump()
            )
        return dg.SensorResult(
            skip_reason=dg.SkipReason(summary), asset_events=observations, cursor=decision.cursor.dump()
        )

    return rerun_failed_partitions
