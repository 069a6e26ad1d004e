"""The ``alerts`` resource: where ``alert_on_final_failure`` (alerts.py) sends its digests.

SMTP email when ``BACKFILL_ALERT_SMTP_HOST`` and ``BACKFILL_ALERT_EMAIL_TO`` are set: STARTTLS or
SMTPS, always verifying the server's certificate (against ``BACKFILL_ALERT_SMTP_CA_FILE`` when set),
and never a login over an unencrypted connection. A Slack-compatible webhook (``{"text": ...}`` POST)
when ``BACKFILL_ALERT_WEBHOOK_URL`` is set. The SMTP password and the webhook URL are secrets: they
are read with ``dg.EnvVar`` and :meth:`AlertNotifier.redact` removes them from any error before it is
logged.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.parse
import urllib.request
from email.message import EmailMessage

import dagster as dg
from pydantic import Field

from backfill_platform.settings import AlertSettings, Settings
from backfill_platform.urls import webhook_url_problem

EMAIL, WEBHOOK = "email", "webhook"


class AlertDeliveryError(RuntimeError):
    """A channel could not be used as configured; the message never contains a secret."""


class AlertNotifier(dg.ConfigurableResource):
    """Sends one message to one channel (``email`` or ``webhook``); raises when it could not."""

    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str | None = Field(default=None, description="secret: set with dg.EnvVar")
    smtp_starttls: bool = False
    smtp_ssl: bool = Field(default=False, description="SMTPS: TLS from the first byte (usually port 465)")
    smtp_ca_file: str = Field(default="", description="PEM CA bundle that verifies the server (else system CAs)")
    email_from: str = "backfill-platform@localhost"
    email_to: list[str] = []
    webhook_url: str | None = Field(default=None, description="secret: set with dg.EnvVar")
    timeout_seconds: float = 10.0

    @property
    def channels(self) -> list[str]:
        found = []
        if self.smtp_host and self.email_to:
            found.append(EMAIL)
        if self.webhook_url:
            found.append(WEBHOOK)
        return found

    def send(self, channel: str, subject: str, text: str) -> None:
        if channel == EMAIL:
            self._send_email(subject, text)
        elif channel == WEBHOOK:
            self._post_webhook(subject, text)
        else:
            raise AlertDeliveryError(f"unknown alert channel {channel!r}")

    def redact(self, message: str) -> str:
        """``message`` without the webhook URL (or its path) and the SMTP password."""
        secrets = [self.webhook_url or "", self.smtp_password or ""]
        if self.webhook_url:
            secrets.append(urllib.parse.urlsplit(self.webhook_url).path)
        for secret in sorted(filter(lambda s: len(s) > 1, secrets), key=len, reverse=True):
            message = message.replace(secret, "<redacted>")
        return message

    def _tls_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate and host name, against the CA file when one is given."""
        return ssl.create_default_context(cafile=self.smtp_ca_file or None)

    def _send_email(self, subject: str, text: str) -> None:
        if self.smtp_user and not (self.smtp_starttls or self.smtp_ssl):
            raise AlertDeliveryError(
                "refusing to log in to the SMTP server over an unencrypted connection: set smtp_starttls "
                "or smtp_ssl (BACKFILL_ALERT_SMTP_STARTTLS / BACKFILL_ALERT_SMTP_SSL)"
            )
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.email_from
        message["To"] = ", ".join(self.email_to)
        message.set_content(text)
        if self.smtp_ssl:
            connection = smtplib.SMTP_SSL(
                self.smtp_host, self.smtp_port, timeout=self.timeout_seconds, context=self._tls_context()
            )
        else:
            connection = smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds)
        with connection as smtp:
            if self.smtp_starttls:
                smtp.starttls(context=self._tls_context())
            if self.smtp_user:
                smtp.login(self.smtp_user, self.smtp_password or "")
            smtp.send_message(message)

    def _post_webhook(self, subject: str, text: str) -> None:
        problem = webhook_url_problem(self.webhook_url or "")
        if problem:
            raise AlertDeliveryError(f"the webhook URL is not usable: {problem}")
        body = json.dumps({"text": f"*{subject}*\n{text}"}).encode()
        request = urllib.request.Request(
            self.webhook_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
            response.read()


def alert_notifier(settings: Settings) -> AlertNotifier:
    alerts = settings.alerts
    return AlertNotifier(
        smtp_host=alerts.smtp_host,
        smtp_port=alerts.smtp_port,
        smtp_user=alerts.smtp_user,
        smtp_password=dg.EnvVar(AlertSettings.PASSWORD_VAR) if alerts.smtp_password_set else None,
        smtp_starttls=alerts.smtp_starttls,
        smtp_ssl=alerts.smtp_ssl,
        smtp_ca_file=alerts.smtp_ca_file,
        email_from=alerts.email_from,
        email_to=list(alerts.email_to),
        webhook_url=dg.EnvVar(AlertSettings.WEBHOOK_URL_VAR) if alerts.webhook_set else None,
    )


# --------------------------------------------------------------------------------------- alerts
