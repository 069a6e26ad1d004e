"""The alert sensor ``alert_on_final_failure`` against real servers on 127.0.0.1: an SMTP server
(aiosmtpd: plain, STARTTLS with a throwaway CA made here, SMTPS) and an HTTP webhook that can be told
to answer 500 or to refuse connections. Failed runs are real runs of destination_data in a real test
instance (a date missing from the source: a logic error of one date, which is final); ticks are
evaluated one after the other with ``dg.build_sensor_context``, the cursor of one tick feeding the next.
No daemon."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import smtplib
import ssl
import threading
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform.resources import local_resources
from backfill_platform.resources.write_hooks import WRITE_HOOKS_KEY, WriteHooks
from backfill_platform.sensors.alerts import build_alert_sensor
from backfill_platform.sensors.notifier import AlertNotifier
from backfill_platform.settings import Settings, SettingsError
from backfill_platform_tests.conftest import free_port
from backfill_platform_tests.helpers import BUSINESS_DAYS, SmtpSink, materialize_destination, seed_source, smtp_server

PASSWORD = "pw-Zq81-never-logged"
HOOK_PATH = "/services/T000/B000/tok3n-never-logged"
MISSING = ["2024-07-08", "2024-07-09", "2024-07-10"]  # weekdays after the source's last day (07-03)
DUPLICATED = "2024-07-03"  # written twice over: ERROR checks fail (keys not unique, rows != source)


# ---------------------------------------------------------------------------------------- servers


class Webhook:
    """A real HTTP endpoint on 127.0.0.1 that answers ``status`` and keeps the JSON bodies of the
    posts it accepted; ``stop()`` closes the port (connections are refused), ``start()`` reopens it."""

    def __init__(self):
        self.port = free_port()
        self.status = 200
        self.attempts = 0
        self.received: list[dict] = []
        self.server = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    def start(self) -> None:
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's hook name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                if hook.status == 200 and self.path == HOOK_PATH:
                    hook.received.append(json.loads(body))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backfill_platform test CA")])

    def builder(subject, public_key):
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    ca = (
        builder(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


def server_tls_context(tls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls["cert"], tls["key"])
    return context


# ------------------------------------------------------------------------------------ the sensor

SETTINGS = Settings(ui_url="http://dagster.example.test:3000")
SENSOR = build_alert_sensor(SETTINGS, BUSINESS_DAYS)


def tick(instance, cursor, notifier):
    """One evaluation of the real sensor, as the daemon does it: returns (cursor, tick message)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"alerts": notifier})
    result = SENSOR.evaluate_tick(context)
    return result.cursor, result.skip_message or ""


def body(message) -> str:
    return message.get_payload(decode=True).decode().replace("\r\n", "\n")


class DuplicateRows(WriteHooks):
    """Writes every row twice: a bug of the kind the ERROR checks exist to catch (no exception)."""

    def before_write(self, dates, frame):
        return frame.unionAll(frame)


@pytest.fixture(scope="module")
def failures(tmp_path_factory, spark):
    """A test instance holding: three final failures (07-08, 07-09, 07-10 are missing from the
    source), a run on 07-03 that wrote its rows twice (ERROR checks fail), a gap 07-02 (the WARN
    completeness check fails: no alert), and give-up observations of each kind."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("alerts") / "data")
    resources = local_resources(settings)
    with dg.instance_for_test() as instance:
        seed_source(resources, instance, first_day="2024-07-01", last_day="2024-07-03", rows_per_date=2)
        assert materialize_destination(resources, "2024-07-01", instance=instance).success
        duplicated = materialize_destination(
            {**resources, WRITE_HOOKS_KEY: DuplicateRows()}, DUPLICATED, instance=instance, raise_on_error=False
        )  # fails when ERROR checks are blocking (then it is a final failure of 07-03 too)
        failed_runs = {}
        for day in MISSING:
            result = materialize_destination(resources, day, instance=instance, raise_on_error=False)
            assert not result.success
            failed_runs[day] = result.run_id
        for day, kind in [("2024-07-11", "expired"), ("2024-07-12", "final"), ("2024-07-15", None)]:
            metadata = {"rerun_gave_up_reason": f"why {day}", "failed_run_id": f"run-of-{day}"}
            if kind:
                metadata["give_up_kind"] = kind
            instance.report_runless_asset_event(
                dg.AssetObservation(asset_key="destination_data", partition=day, metadata=metadata)
            )
        yield instance, failed_runs, duplicated


# ------------------------------------------------------------------------------------------ tests


def test_outage_loses_nothing_and_recovery_delivers_once_per_channel(resources, webhook):
    """SMTP down and the webhook answering 500 when a date finally fails: nothing is lost. SMTP comes
    back first: email gets it once; the webhook then refuses connections, then recovers: it gets it
    once, and email is not sent it again."""
    sink, smtp_port = SmtpSink(), free_port()
    notifier = AlertNotifier(
        smtp_host="127.0.0.1", smtp_port=smtp_port, email_to=["oncall@example.test"], webhook_url=webhook.url
    )
    with dg.instance_for_test() as instance:
        cursor, _ = tick(instance, None, notifier)  # nothing failed yet
        seed_source(resources, instance, first_day="2024-07-01", last_day="2024-07-03", rows_per_date=2)
        assert not materialize_destination(resources, "2024-07-08", instance=instance, raise_on_error=False).success

        webhook.status = 500  # and nothing listens on smtp_port
        cursor, message = tick(instance, cursor, notifier)
        assert not webhook.received and not sink.messages
        cursor, _ = tick(instance, cursor, notifier)  # still down

        smtp = smtp_server(sink, smtp_port)
        try:
            cursor, _ = tick(instance, cursor, notifier)  # email recovers, the webhook still answers 500
            subjects = [m["Subject"] for m in sink.messages]
            assert subjects == ["[backfill_platform] destination_data failed for 2024-07-08"]
            assert "logic/data error" in body(sink.messages[0]) and "2024-07-08" in body(sink.messages[0])
            assert webhook.attempts == 3 and not webhook.received  # each tick tried the webhook too
            assert "FAILED" in message and HOOK_PATH not in message and webhook.url not in message

            webhook.stop()  # connections refused
            cursor, message = tick(instance, cursor, notifier)
            assert "webhook: FAILED" in message and HOOK_PATH not in message
            webhook.status = 200
            webhook.start()
            cursor, _ = tick(instance, cursor, notifier)
            assert len(webhook.received) == 1 and "2024-07-08" in webhook.received[0]["text"]
            cursor, _ = tick(instance, cursor, notifier)  # nothing new: nothing sent again
            assert len(sink.messages) == 1 and len(webhook.received) == 1
        finally:
            smtp.stop()


def test_many_alerts_make_one_digest_per_channel_and_each_is_sent_once(failures, webhook):
    instance, failed_runs, duplicated = failures
    sink, smtp_port = SmtpSink(), free_port()
    smtp = smtp_server(sink, smtp_port)
    notifier = AlertNotifier(
        smtp_host="127.0.0.1", smtp_port=smtp_port, email_to=["oncall@example.test"], webhook_url=webhook.url
    )
    try:
        cursor, message = tick(instance, None, notifier)
        cursor, _ = tick(instance, cursor, notifier)
    finally:
        smtp.stop()
    assert len(sink.messages) == 1 and len(webhook.received) == 1, message
    subject, text = sink.messages[0]["Subject"].replace("\r\n", ""), body(sink.messages[0])  # unfolded
    # 3 final failures (+ the duplicated date's run, if its failed checks failed it) + 2 failed ERROR
    # checks of the duplicated date + 1 "expired" give-up
    count = 6 + (not duplicated.success)
    assert subject.startswith(f"[backfill_platform] {count} destination_data alerts for ")
    for day in [*MISSING, DUPLICATED, "2024-07-11"]:
        assert day in subject
    assert "2024-07-12" not in text and "2024-07-15" not in text  # "final" / no kind: alerted from runs
    assert "2024-07-02" not in text  # the WARN completeness check failed: no alert
    for day, run_id in failed_runs.items():
        assert f"finally failed for business date(s): {day}" in text
        assert f"http://dagster.example.test:3000/runs/{run_id}" in text
    assert "Asset check unique_position_date_id of destination_data FAILED (severity ERROR)" in text
    assert "Asset check rows_match_source of destination_data FAILED (severity ERROR)" in text
    assert f"/runs/{duplicated.run_id}" in text
    assert "gave up on business date(s) 2024-07-11 (expired)" in text and "why 2024-07-11" in text
    assert "Failed run: run-of-2024-07-11" in text
    assert f"\n\n{count}. " in text and f"\n\n{count + 1}. " not in text  # one numbered section per alert
    assert webhook.received[0]["text"].startswith(f"*{subject}*")


def test_error_check_failures_are_alerted_and_warn_ones_are_not(failures, webhook):
    """The run on 07-03 succeeded but wrote its rows twice: its two failed ERROR checks are alerted, with
    their details; the WARN completeness check that failed on the gap 07-02 is not."""
    instance, _, duplicated = failures
    _, message = tick(instance, None, AlertNotifier(webhook_url=webhook.url))
    text = webhook.received[0]["text"]
    assert text.count("severity ERROR") == 2 and "business_days_complete" not in text, message
    for check in ("unique_position_date_id", "rows_match_source"):
        section = text[text.index(f"Asset check {check} "):]
        assert section.startswith(f"Asset check {check} of destination_data FAILED (severity ERROR) for business "
                                  f"date(s): {DUPLICATED}")
        assert "Details: {" in section and f"/runs/{duplicated.run_id}" in section


def test_give_up_observations_are_alerted_once(failures, webhook):
    """A give-up the rerun sensor only records as observations (one per date; a date that is no longer a
    partition is named under ``date``) is one alert, sent once."""
    instance, _, _ = failures
    notifier = AlertNotifier(webhook_url=webhook.url)
    cursor, _ = tick(instance, None, notifier)
    metadata = {"rerun_gave_up_reason": "run deleted", "failed_run_id": "gone-run", "give_up_kind": "undecidable"}
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key="destination_data", partition="2024-07-16", metadata=metadata)
    )
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key="destination_data", metadata={**metadata, "date": "2023-12-29"})
    )
    cursor, _ = tick(instance, cursor, notifier)
    cursor, _ = tick(instance, cursor, notifier)
    assert len(webhook.received) == 2
    second = webhook.received[1]["text"]
    assert second.startswith("*[backfill_platform] rerun sensor gave up on 2023-12-29, 2024-07-16 (undecidable)*")
    assert "Reason: run deleted" in second and "Failed run: gone-run" in second
    assert "http://dagster.example.test:3000/runs/gone-run" in second


def test_without_a_channel_each_tick_logs_what_it_would_send(failures, capfd):
    instance, _, _ = failures
    _, message = tick(instance, None, AlertNotifier())
    log = capfd.readouterr().err  # the sensor's context.log (dagster's logger writes to stderr)
    assert "no alert channel configured" in message
    assert "WARNING" in log and "would have sent" in log and "2024-07-08" in log


def test_a_long_outage_caps_the_outbox_and_the_next_digest_says_what_was_dropped(webhook, capfd):
    """More alerts than the outbox holds while the webhook is down: the oldest are dropped, the log says
    so at once, and the first digest delivered names them; the body stays under its size limit."""
    from backfill_platform.sensors.alerts import DIGEST_MAX_CHARS, OUTBOX_LIMIT, AlertCursor, deliver

    context = dg.build_sensor_context()
    notifier = AlertNotifier(webhook_url=webhook.url)
    days = BUSINESS_DAYS.partitions_def.get_partition_keys()[: OUTBOX_LIMIT + 50]
    alerts = [
        {"id": f"run:{n}", "dates": [day], "title": f"t {day}", "text": f"failed for {day}\n" + "x" * 300}
        for n, day in enumerate(days)
    ]
    cursor = AlertCursor()
    webhook.status = 500
    deliver(context, notifier, cursor, alerts)
    log = capfd.readouterr().err
    assert "ERROR - Alert outbox of webhook is full" in log and "dropped the 50 oldest undelivered alert(s)" in log
    assert f"{days[0]}..{days[49]} (50 dates)" in log and HOOK_PATH not in log
    assert len(cursor.outbox["webhook"]) == OUTBOX_LIMIT and not webhook.received
    webhook.status = 200
    deliver(context, notifier, cursor, [])
    text = webhook.received[0]["text"]
    assert f"{OUTBOX_LIMIT + 50} destination_data alerts for {days[0]}..{days[-1]}" in text
    assert f"50 older undelivered alert(s) were dropped (outbox limit {OUTBOX_LIMIT}" in text
    assert f"{days[0]}..{days[49]} (50 dates)" in text
    assert len(text) < DIGEST_MAX_CHARS + 1000 and "more alert(s), not shown (message size limit)" in text
    assert cursor.outbox["webhook"] == [] and "webhook" not in cursor.dropped


def test_starttls_verifies_the_certificate_and_smtps_works(tls):
    """STARTTLS to a server whose certificate the system CAs do not trust is refused (no message, no
    login); with the CA file it works, login included. SMTPS (implicit TLS) works with the CA file."""

    def authenticator(server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        return AuthResult(success=auth_data.login == b"alerts" and auth_data.password == PASSWORD.encode())

    sink, port = SmtpSink(), free_port()
    smtp = smtp_server(
        sink, port, tls_context=server_tls_context(tls), require_starttls=True, authenticator=authenticator
    )
    login = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_user": "alerts", "smtp_password": PASSWORD,
             "smtp_starttls": True, "email_to": ["oncall@example.test"]}
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            AlertNotifier(**login).send("email", "untrusted", "never delivered")
        AlertNotifier(**login, smtp_ca_file=str(tls["ca"])).send("email", "over STARTTLS", "delivered")
        with pytest.raises(smtplib.SMTPException):  # the server itself refuses mail without STARTTLS
            AlertNotifier(smtp_host="127.0.0.1", smtp_port=port, email_to=["x@example.test"]).send("email", "p", "p")
    finally:
        smtp.stop()
    assert [m["Subject"] for m in sink.messages] == ["over STARTTLS"]

    sink, port = SmtpSink(), free_port()
    smtps = smtp_server(sink, port, ssl_context=server_tls_context(tls))
    implicit = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_ssl": True, "email_to": ["oncall@example.test"]}
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            AlertNotifier(**implicit).send("email", "untrusted", "never delivered")
        AlertNotifier(**implicit, smtp_ca_file=str(tls["ca"])).send("email", "over SMTPS", "delivered")
    finally:
        smtps.stop()
    assert [m["Subject"] for m in sink.messages] == ["over SMTPS"]


def test_login_without_tls_and_bad_webhook_urls_are_settings_errors_that_hide_the_secret(tls):
    for env in (
        {"BACKFILL_ALERT_SMTP_USER": "alerts", "BACKFILL_ALERT_SMTP_PASSWORD": PASSWORD},
        {"BACKFILL_ALERT_SMTP_PASSWORD": PASSWORD},
    ):
        with pytest.raises(SettingsError, match="not encrypted") as error:
            Settings.from_env({"BACKFILL_ALERT_SMTP_HOST": "smtp.example.test", **env})
        assert PASSWORD not in str(error.value)
    secure = Settings.from_env({
        "BACKFILL_ALERT_SMTP_USER": "alerts", "BACKFILL_ALERT_SMTP_PASSWORD": PASSWORD,
        "BACKFILL_ALERT_SMTP_SSL": "true", "BACKFILL_ALERT_SMTP_CA_FILE": str(tls["ca"]),
    }).alerts
    assert secure.smtp_ssl and secure.smtp_password_set and secure.smtp_ca_file == str(tls["ca"])
    with pytest.raises(SettingsError, match="BACKFILL_ALERT_SMTP_CA_FILE"):
        Settings.from_env({"BACKFILL_ALERT_SMTP_CA_FILE": "/no/such/ca.pem"})

    for url in (
        f"ftp://hooks.example.test{HOOK_PATH}",
        f"hooks.example.test{HOOK_PATH}",
        f"https://{HOOK_PATH}",
        f"https://hooks.example.test{HOOK_PATH} extra",
        f" https://hooks.example.test{HOOK_PATH}",
        f"https://hooks.example.test:99999{HOOK_PATH}",
    ):
        with pytest.raises(SettingsError, match="BACKFILL_ALERT_WEBHOOK_URL is not a usable webhook URL") as error:
            Settings.from_env({"BACKFILL_ALERT_WEBHOOK_URL": url})
        assert "tok3n" not in str(error.value) and error.value.__cause__ is None and error.value.__context__ is None
    assert Settings.from_env({"BACKFILL_ALERT_WEBHOOK_URL": f"https://hooks.example.test{HOOK_PATH}"}).alerts.webhook_set
