"""Alerts about ``destination_data``, by email and/or webhook, that are never lost.

``alert_on_final_failure`` is a cursor-based sensor. Each tick it collects what is new since its
cursor, adds it to an *outbox* (kept in the cursor), and sends every channel ONE digest of that
channel's outbox:

- **final failures**: failed runs of destination_data (``failures.failed_runs_since``) whose failure
  is final for some date (``failures.final_dates``: a logic/data error, the last rerun the rerun
  sensor allows, a cancel, and no run retry pending), so a date that fails twice and then lands
  produces no alert. A run whose run-retry decision is not made yet (run retries on, no
  ``dagster/will_retry`` tag) is read again once the daemon tags it (the tag bumps its update time);
- **ERROR-severity asset check failures** of destination_data (``business_days_complete`` is WARN: a
  gap is a backfill still to run, not an alert), read from the instance's check execution history;
- **give-ups that exist only as observations**: ``AssetObservation`` s of destination_data whose
  ``GIVE_UP_KIND_KEY`` is in ``ALERTED_FROM_OBSERVATIONS`` (sensors/failures.py).

A channel whose send fails (SMTP or webhook down, HTTP 500...) keeps its outbox and retries it on the
next ticks; the other channel is not sent again what it already got. The outbox holds at most
``OUTBOX_LIMIT`` alerts per channel: beyond that the oldest are dropped, which the log says at once and
the next digest delivered on that channel says too. Nothing older than ``BACKFILL_RERUN_DAYS_BACK``
days is alerted (the window the rerun sensor watches). With no channel configured, each tick logs a
warning with what it would have sent.

Channels (settings.py, ``AlertSettings``): SMTP email when ``BACKFILL_ALERT_SMTP_HOST`` and
``BACKFILL_ALERT_EMAIL_TO`` are set (STARTTLS or SMTPS with certificate verification; never a login
without TLS); a Slack-compatible webhook (``{"text": ...}`` POST) when ``BACKFILL_ALERT_WEBHOOK_URL`` is
set. The SMTP password and the webhook URL are secrets: the resource reads them with ``dg.EnvVar``,
and they never appear in logs, messages or metadata (errors are redacted before they are logged).

The cursor is JSON: ``{"runs_after": <update timestamp of the last failed run read>, "alerted_runs":
{run id: created}, "checks_after": <every check execution id up to this was read>, "checks_seen":
[ids above it already read], "observations_after": <storage id>, "alerts": {alert id: alert},
"outbox": {channel: [alert id]}, "dropped": {channel: {"count", "dates"}}}``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence

import dagster as dg

from backfill_platform import checks, tags
from backfill_platform.partitions import BusinessDays
from backfill_platform.sensors.failures import (
    ALERTED_FROM_OBSERVATIONS,
    GIVE_UP_DATE_KEY,
    GIVE_UP_KIND_KEY,
    GIVE_UP_REASON_KEY,
    GIVE_UP_RUN_KEY,
    dates_label,
    describe_failed_run,
    failed_runs_since,
    final_dates,
    metadata_value,
    sensor_is_running,
)
from backfill_platform.sensors.notifier import AlertNotifier
from backfill_platform.settings import Settings
from backfill_platform.tags import DESTINATION

ALERT_SENSOR_NAME = "alert_on_final_failure"
OUTBOX_LIMIT = 200  # undelivered alerts kept per channel (the cursor stays small); the oldest are dropped
DIGEST_MAX_CHARS = 12_000  # body of one digest; sections beyond it are counted, with their dates
PAGE = 200  # records read per query
DATES_SHOWN = 10  # dates listed one by one; more are shown as first..last (N dates)
REPAIR_HINT = (
    "Repair: fix the cause, then re-execute the run from failure or backfill the failed partitions "
    "(docs/repair.md)."
)


def dates_text(dates: Iterable[str]) -> str:
    return dates_label(dates, shown=DATES_SHOWN)


def _alert(alert_id: str, dates: Sequence[str], title: str, lines: Sequence[str]) -> dict:
    return {"id": alert_id, "dates": sorted(set(dates)), "title": title, "text": "\n".join(lines)}


def _run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.ui_url.rstrip('/')}/runs/{run_id}"


@dataclasses.dataclass
class AlertCursor:
    runs_after: float = 0.0
    alerted_runs: dict[str, float] = dataclasses.field(default_factory=dict)  # run id -> created
    checks_after: int = 0
    checks_seen: list[int] = dataclasses.field(default_factory=list)
    observations_after: int | None = None
    alerts: dict[str, dict] = dataclasses.field(default_factory=dict)
    outbox: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    dropped: dict[str, dict] = dataclasses.field(default_factory=dict)  # channel -> {count, dates}

    @classmethod
    def load(cls, raw: str | None) -> AlertCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def dump(self, window_start: float) -> str:
        waiting = {alert_id for ids in self.outbox.values() for alert_id in ids}
        self.alerts = {alert_id: alert for alert_id, alert in self.alerts.items() if alert_id in waiting}
        self.alerted_runs = {run_id: at for run_id, at in self.alerted_runs.items() if at >= window_start}
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def collect_final_failures(
    instance: dg.DagsterInstance, cursor: AlertCursor, settings: Settings, business_days: BusinessDays,
    window_start: float,
) -> list[dict]:
    """Failed runs updated since the cursor whose failure is final for some date (one alert per run)."""
    found: list[dict] = []
    rerun_on: bool | None = None
    for run, updated, created in failed_runs_since(instance, max(cursor.runs_after, window_start)):
        cursor.runs_after = max(cursor.runs_after, updated)
        # A run is read again whenever its tags change (e.g. the rerun sensor tags a give-up): once
        # alerted, never again.
        if created < window_start or run.run_id in cursor.alerted_runs:
            continue
        if instance.run_retries_enabled and tags.WILL_RETRY not in run.tags:
            continue  # run retries have not decided yet; the tag they add makes the run new again
        failed = describe_failed_run(instance, run, created, business_days)
        if rerun_on is None:
            rerun_on = sensor_is_running(instance, settings.automation.running)
        dates, why = final_dates(failed, settings, rerun_on)
        if not dates:
            continue
        cursor.alerted_runs[run.run_id] = created
        found.append(_alert(f"run:{run.run_id}", dates, f"destination_data failed for {dates_text(dates)}", [
            f"destination_data has finally failed for business date(s): {dates_text(dates)}",
            f"Why it is final: {why}",
            f"Error: {failed.message or '(no error message)'}",
            f"Run: {_run_url(settings, run.run_id)}",
        ]))
    return found


def collect_check_failures(
    instance: dg.DagsterInstance, cursor: AlertCursor, settings: Settings, business_days: BusinessDays,
    window_start: float, check_names: Sequence[str],
) -> list[dict]:
    """Failed ERROR-severity checks of destination_data evaluated since the cursor (one alert each).

    Check executions are numbered when they are *planned* (at the start of their run) and updated when
    evaluated, so a run that started earlier can report a failure with a lower number than one already
    read: the cursor stays below the lowest execution still planned in a running run, and remembers
    the executions above it that it already read."""
    storage = instance.event_log_storage
    seen = set(cursor.checks_seen)
    newest = cursor.checks_after
    planned = []
    found: list[dict] = []
    for name in check_names:
        key = dg.AssetCheckKey(DESTINATION, name)
        before = None
        while True:  # newest first
            page = storage.get_asset_check_execution_history(key, limit=PAGE, cursor=before)
            fresh = [r for r in page if r.id > cursor.checks_after and r.create_timestamp >= window_start]
            for record in fresh:
                newest = max(newest, record.id)
                if record.id in seen:
                    continue
                if record.status.value == "PLANNED":
                    planned.append(record)
                    continue
                seen.add(record.id)
                evaluation = record.event.asset_check_evaluation if record.event else None
                if (
                    record.status.value == "FAILED"
                    and evaluation is not None
                    and evaluation.severity == dg.AssetCheckSeverity.ERROR
                ):
                    found.append(_check_alert(instance, settings, business_days, record, evaluation))
            if len(fresh) < len(page) or len(page) < PAGE:
                break
            before = page[-1].id
    in_flight = []
    if planned:
        runs = {
            run.run_id: run
            for run in instance.get_runs(dg.RunsFilter(run_ids=sorted({r.run_id for r in planned})))
        }
        for record in planned:
            run = runs.get(record.run_id)
            if run is not None and not run.is_finished:
                in_flight.append(record.id)
            else:
                seen.add(record.id)  # its run ended without evaluating it: nothing to alert
    cursor.checks_after = min(in_flight) - 1 if in_flight else newest
    cursor.checks_seen = sorted(i for i in seen if i > cursor.checks_after)
    return found


def _check_alert(instance, settings: Settings, business_days: BusinessDays, record, evaluation) -> dict:
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    if evaluation.partition:
        dates = [evaluation.partition]
    elif checks.FAILED_DATES in evaluation.metadata:
        dates = [str(day) for day in metadata_value(evaluation.metadata, checks.FAILED_DATES) or []]
    else:  # about the whole table, or a check that does not say: the run's dates
        dates = list(business_days.run_keys(run.tags)) if run is not None else []
    details = {key: metadata_value(evaluation.metadata, key) for key in evaluation.metadata}
    lines = [
        f"Asset check {evaluation.check_name} of destination_data FAILED (severity ERROR) for business "
        f"date(s): {dates_text(dates)}",
        f"Check: {evaluation.description or '(no description)'}",
        f"Details: {json.dumps(details, default=str)[:500]}",
    ]
    if record.run_id:
        lines.append(f"Run: {_run_url(settings, record.run_id)}")
    title = f"check {evaluation.check_name} failed for {dates_text(dates)}"
    return _alert(f"check:{record.id}", dates, title, lines)


def collect_give_ups(
    instance: dg.DagsterInstance, cursor: AlertCursor, settings: Settings, window_start: float
) -> list[dict]:
    """Observations of destination_data recording a give-up that only exists as an observation. The
    rerun sensor records one observation per date (unpartitioned, naming it under ``date``, when the
    date is no longer a partition): the dates of one give-up (same run, kind and reason) make one alert."""
    give_ups: dict[tuple, dict] = {}
    while True:  # oldest first
        result = instance.fetch_observations(
            dg.AssetRecordsFilter(
                asset_key=DESTINATION, after_storage_id=cursor.observations_after, after_timestamp=window_start
            ),
            limit=PAGE,
            ascending=True,
        )
        for record in result.records:
            cursor.observations_after = max(cursor.observations_after or 0, record.storage_id)
            metadata = record.asset_observation.metadata if record.asset_observation else {}
            kind = metadata_value(metadata, GIVE_UP_KIND_KEY)
            if kind not in ALERTED_FROM_OBSERVATIONS:
                continue
            reason = str(metadata_value(metadata, GIVE_UP_REASON_KEY, "(no reason recorded)"))
            run_id = metadata_value(metadata, GIVE_UP_RUN_KEY)
            day = record.partition_key or metadata_value(metadata, GIVE_UP_DATE_KEY)
            give_up = give_ups.setdefault(
                (kind, reason, run_id), {"id": f"give_up:{record.storage_id}", "dates": []}
            )
            give_up["dates"].extend([str(day)] if day else [])
        if not result.has_more:
            break
    found = []
    for (kind, reason, run_id), give_up in give_ups.items():
        dates = give_up["dates"]
        lines = [
            f"The rerun sensor gave up on business date(s) {dates_text(dates)} ({kind}): nothing will retry them.",
            f"Reason: {reason}",
            f"Failed run: {run_id or '(none recorded)'}",
        ]
        if run_id:
            lines.append(f"Run: {_run_url(settings, run_id)}")
        found.append(_alert(give_up["id"], dates, f"rerun sensor gave up on {dates_text(dates)} ({kind})", lines))
    return found


# ------------------------------------------------------------------------------------- delivery


def digest(alerts: Sequence[dict], dropped: dict | None) -> tuple[str, str]:
    """One message for a channel: subject with the count and the dates, one section per alert."""
    all_dates = [day for alert in alerts for day in alert["dates"]] + list((dropped or {}).get("dates", []))
    if len(alerts) == 1 and not dropped:
        subject = f"[backfill_platform] {alerts[0]['title']}"
    else:
        count = len(alerts) + (dropped or {}).get("count", 0)
        subject = f"[backfill_platform] {count} destination_data alerts for {dates_text(all_dates)}"
    parts = []
    if dropped:
        parts.append(
            f"WARNING: {dropped['count']} older undelivered alert(s) were dropped (outbox limit {OUTBOX_LIMIT} "
            f"while this channel was failing), for business date(s): {dates_text(dropped['dates'])}. "
            "Check those dates in the Dagster UI."
        )
    used = sum(len(part) for part in parts)
    for shown, alert in enumerate(alerts):
        section = f"{shown + 1}. {alert['text']}" if len(alerts) > 1 else alert["text"]
        if shown and used + len(section) > DIGEST_MAX_CHARS:
            rest = alerts[shown:]
            parts.append(
                f"... and {len(rest)} more alert(s), not shown (message size limit), for business date(s): "
                f"{dates_text(day for alert in rest for day in alert['dates'])}."
            )
            break
        parts.append(section)
        used += len(section)
    parts.append(REPAIR_HINT)
    return subject, "\n\n".join(parts)


def _queue(context, cursor: AlertCursor, channel: str, new: Sequence[dict]) -> None:
    box = cursor.outbox.setdefault(channel, [])
    box.extend(alert["id"] for alert in new)
    if len(box) > OUTBOX_LIMIT:
        gone, cursor.outbox[channel] = box[:-OUTBOX_LIMIT], box[-OUTBOX_LIMIT:]
        dates = [day for alert_id in gone for day in cursor.alerts[alert_id]["dates"]]
        record = cursor.dropped.setdefault(channel, {"count": 0, "dates": []})
        record["count"] += len(gone)
        record["dates"] = sorted(set(record["dates"]) | set(dates))
        context.log.error(
            f"Alert outbox of {channel} is full ({OUTBOX_LIMIT}): dropped the {len(gone)} oldest undelivered "
            f"alert(s), for {dates_text(dates)}; the next {channel} digest will say so."
        )


def deliver(context, notifier: AlertNotifier, cursor: AlertCursor, new: Sequence[dict]) -> list[str]:
    """Queue ``new`` on every configured channel and send each channel one digest; returns a summary."""
    channels = notifier.channels
    for alert in new:
        cursor.alerts[alert["id"]] = alert
    for channel in sorted(set(cursor.outbox) - set(channels)):
        stale = cursor.outbox.pop(channel)
        cursor.dropped.pop(channel, None)
        if stale:
            context.log.warning(
                f"The {channel} channel is no longer configured: {len(stale)} undelivered alert(s) for "
                f"{dates_text(d for i in stale for d in cursor.alerts[i]['dates'])} will not be sent on it."
            )
    if not channels:
        if new:
            subject, text = digest(new, None)
            context.log.warning(
                "No alert channel configured (BACKFILL_ALERT_SMTP_HOST + BACKFILL_ALERT_EMAIL_TO, or "
                f"BACKFILL_ALERT_WEBHOOK_URL); would have sent:\n{subject}\n{text}"
            )
        return [f"{len(new)} new alert(s), no alert channel configured"]
    summary = [f"{len(new)} new alert(s)" + (f" ({dates_text(d for a in new for d in a['dates'])})" if new else "")]
    for channel in channels:
        _queue(context, cursor, channel, new)
        waiting = [cursor.alerts[alert_id] for alert_id in cursor.outbox[channel]]
        dropped = cursor.dropped.get(channel)
        if not waiting and not dropped:
            continue
        subject, text = digest(waiting, dropped)
        try:
            notifier.send(channel, subject, text)
        except Exception as error:  # any failure: keep the outbox, retry next tick
            problem = notifier.redact(f"{type(error).__name__}: {error}")
            context.log.warning(
                f"Alert {channel} failed ({problem}); {len(waiting)} alert(s) kept, retried next tick."
            )
            summary.append(f"{channel}: FAILED ({problem}), {len(waiting)} alert(s) kept for the next tick")
            continue
        context.log.info(f"Alerted {channel}: {subject}")
        summary.append(f"{channel}: sent {len(waiting)} alert(s) in one digest")
        cursor.outbox[channel] = []
        cursor.dropped.pop(channel, None)
    return summary


def build_alert_sensor(settings: Settings, business_days: BusinessDays) -> dg.SensorDefinition:
    default_status = (
        dg.DefaultSensorStatus.RUNNING if settings.automation.running else dg.DefaultSensorStatus.STOPPED
    )
    check_names = [spec.name for spec in checks.destination_check_specs()]

    @dg.sensor(
        name=ALERT_SENSOR_NAME,
        minimum_interval_seconds=settings.alerts.interval_seconds,
        default_status=default_status,
        description=(
            "Email / webhook digest when a destination_data date has finally failed (after its retries), an "
            "ERROR-severity check failed, or the rerun sensor gave up; undelivered alerts are retried."
        ),
    )
    def alert_on_final_failure(context: dg.SensorEvaluationContext, alerts: AlertNotifier):
        started = time.perf_counter()
        window_start = time.time() - settings.retries.rerun_days_back * 86400
        cursor = AlertCursor.load(context.cursor)
        instance = context.instance
        new = [
            *collect_final_failures(instance, cursor, settings, business_days, window_start),
            *collect_check_failures(instance, cursor, settings, business_days, window_start, check_names),
            *collect_give_ups(instance, cursor, settings, window_start),
        ]
        summary = deliver(context, alerts, cursor, new)
        summary.append(f"tick took {(time.perf_counter() - started) * 1000:.0f} ms")
        return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(summary)), cursor=cursor.dump(window_start))

    return alert_on_final_failure
