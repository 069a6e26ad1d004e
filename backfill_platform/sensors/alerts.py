"""Alerts when a date of ``destination_data`` has *finally* failed, by email and/or webhook.

``alert_on_final_failure`` is a Dagster run-failure sensor: it sees every failed run once, and
alerts only when the failure is final for some date (``failures.final_dates``: a logic/data error,
or the last rerun the rerun sensor allows, and no run retry pending), so a date that fails twice and
then lands produces no alert. The message names the date(s), the error and the run's UI URL.

Channels (settings.py): SMTP email when ``BACKFILL_ALERT_SMTP_HOST`` and ``BACKFILL_ALERT_EMAIL_TO``
are set; a Slack-compatible webhook (``{"text": ...}`` POST) when ``BACKFILL_ALERT_WEBHOOK_URL`` is
set. The SMTP password and the webhook URL are secrets: the resource reads them with ``dg.EnvVar``,
and they never appear in logs or metadata.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request
from email.message import EmailMessage

import dagster as dg
from pydantic import Field

from backfill_platform.partitions import BusinessDays
from backfill_platform.sensors.failures import describe_failed_run, final_dates, sensor_is_running, targets_destination
from backfill_platform.settings import Settings

ALERT_SENSOR_NAME = "alert_on_final_failure"


class AlertNotifier(dg.ConfigurableResource):
    """Sends an alert to every configured channel; returns which channels got it."""

    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str | None = Field(default=None, description="secret: set with dg.EnvVar")
    smtp_starttls: bool = False
    email_from: str = "backfill-platform@localhost"
    email_to: list[str] = []
    webhook_url: str | None = Field(default=None, description="secret: set with dg.EnvVar")
    timeout_seconds: float = 10.0

    @property
    def channels(self) -> list[str]:
        found = []
        if self.smtp_host and self.email_to:
            found.append("email")
        if self.webhook_url:
            found.append("webhook")
        return found

    def send(self, subject: str, text: str) -> list[str]:
        sent = []
        if "email" in self.channels:
            message = EmailMessage()
            message["Subject"] = subject
            message["From"] = self.email_from
            message["To"] = ", ".join(self.email_to)
            message.set_content(text)
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds) as smtp:
                if self.smtp_starttls:
                    smtp.starttls()
                if self.smtp_user:
                    smtp.login(self.smtp_user, self.smtp_password or "")
                smtp.send_message(message)
            sent.append("email")
        if "webhook" in self.channels:
            body = json.dumps({"text": f"*{subject}*\n{text}"}).encode()
            request = urllib.request.Request(
                self.webhook_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
            sent.append("webhook")
        return sent


def alert_notifier(settings: Settings) -> AlertNotifier:
    return AlertNotifier(
        smtp_host=settings.alerts.smtp_host,
        smtp_port=settings.alerts.smtp_port,
        smtp_user=settings.alerts.smtp_user,
        smtp_password=dg.EnvVar("BACKFILL_ALERT_SMTP_PASSWORD") if settings.alerts.smtp_password_set else None,
        smtp_starttls=settings.alerts.smtp_starttls,
        email_from=settings.alerts.email_from,
        email_to=list(settings.alerts.email_to),
        webhook_url=dg.EnvVar("BACKFILL_ALERT_WEBHOOK_URL") if settings.alerts.webhook_set else None,
    )


def alert_text(settings: Settings, run_id: str, dates: list[str], why: str, error: str) -> tuple[str, str]:
    subject = f"[backfill_platform] destination_data failed for {', '.join(dates)}"
    text = "\n".join(
        [
            f"destination_data has finally failed for business date(s): {', '.join(dates)}",
            f"Why it is final: {why}",
            f"Error: {error or '(no error message)'}",
            f"Run: {settings.ui_url.rstrip('/')}/runs/{run_id}",
            "Repair: fix the cause, then re-execute the run from failure or backfill the failed "
            "partitions (docs/repair.md).",
        ]
    )
    return subject, text


def build_alert_sensor(settings: Settings, business_days: BusinessDays) -> dg.SensorDefinition:
    default_status = (
        dg.DefaultSensorStatus.RUNNING if settings.automation.running else dg.DefaultSensorStatus.STOPPED
    )

    @dg.run_failure_sensor(
        name=ALERT_SENSOR_NAME,
        minimum_interval_seconds=settings.alerts.interval_seconds,
        default_status=default_status,
        description="Email / webhook alert when a destination_data date has finally failed (after its retries).",
    )
    def alert_on_final_failure(context: dg.RunFailureSensorContext, alerts: AlertNotifier):
        run = context.dagster_run
        if not targets_destination(run, context.instance):
            return dg.SkipReason(f"run {run.run_id} does not materialize destination_data")
        record = context.instance.get_run_record_by_id(run.run_id)
        failed = describe_failed_run(
            context.instance, record.dagster_run, record.create_timestamp.timestamp(), business_days
        )
        rerun_on = sensor_is_running(context.instance, settings.automation.running)
        dates, why = final_dates(failed, settings, rerun_on)
        if not dates:
            return dg.SkipReason(f"run {run.run_id}: not final ({why})")
        if not alerts.channels:
            context.log.warning(f"No alert channel configured; final failure of {', '.join(dates)}: {why}")
            return dg.SkipReason("no alert channel configured")
        subject, text = alert_text(settings, run.run_id, dates, why, failed.message)
        sent = alerts.send(subject, text)
        context.log.info(f"Alerted {', '.join(sent)} about {', '.join(dates)} (run {run.run_id})")
        return None

    return alert_on_final_failure
