"""Every setting of backfill_platform, read from the environment in this one place.

Nothing else in the package reads ``os.environ`` for configuration: ``definitions.py`` calls
:func:`load_settings` once and builds the code location from that one value
(``build_defs(settings)``); everything else takes a :class:`Settings` (or one of its sections), so
tests build their own. :class:`Settings` has one section per concern: ``tables``, ``calendar``,
``spark`` (local Spark), ``retries``, ``automation`` (sensors and schedule), ``alerts`` and
``databricks``.

| variable | default | meaning |
| --- | --- | --- |
| ``BACKFILL_DEPLOYMENT`` | ``local`` | ``local`` (embedded Spark + Delta) or ``databricks`` |
| ``BACKFILL_DATA_DIR`` | ``<repo>/.data`` | local warehouse (Delta tables) and Spark scratch space |
| ``BACKFILL_CATALOG`` | ``demos`` | catalog of the tables (used on Databricks / Unity Catalog) |
| ``BACKFILL_SCHEMA`` | ``backfill_demo`` | schema of the tables |
| ``BACKFILL_SOURCE_TABLE`` | ``source_data`` | table the destination is computed from |
| ``BACKFILL_DESTINATION_TABLE`` | ``destination_data`` | the business-day partitioned Delta table |
| ``BACKFILL_CALENDAR_TABLE`` | ``calendar`` | the business calendar table |
| ``BACKFILL_TABLE_LAYOUT`` | ``partitioned`` | how a new destination table is laid out: ``partitioned`` (by ``position_date``) or ``clustered`` (Delta liquid clustering on it) |
| ``BACKFILL_START_DATE`` | ``2024-01-01`` | first day of the partitions |
| ``BACKFILL_HOLIDAY_CALENDAR`` | ``pandas.tseries.holiday:USFederalHolidayCalendar`` | pandas holiday calendar class |
| ``BACKFILL_EXTRA_CLOSURES`` | (none) | extra closed days: ``2025-01-09=National Day of Mourning,...`` |
| ``BACKFILL_MAX_PARTITIONS_PER_RUN`` | ``500`` | business days one backfill run processes at most; ``all``: one run per backfill (``BackfillPolicy.single_run()``, which ``dagster asset materialize --partition-range`` requires) |
| ``BACKFILL_MIN_KEPT_SHARE`` | ``0.5`` | share (0, 1] of a date's source rows that must survive the 'drop' expectations, else the run fails before writing |
| ``BACKFILL_SPARK_MASTER`` | ``local[2]`` | Spark master of the local deployment |
| ``BACKFILL_SPARK_SERVER`` | ``shared`` | ``shared``: local runs attach to one warm Spark Connect server per data dir, started by the first run that needs it and stopped after ``BACKFILL_SPARK_SERVER_IDLE_SECONDS`` with no run attached (``resources/shared_spark.py``); ``embedded``: a JVM in each run's process. ``Settings()`` built in code defaults to ``embedded`` (a Connect client switches its whole process to Connect mode) |
| ``BACKFILL_SPARK_SERVER_IDLE_SECONDS`` | ``900`` | how long the shared server stays up with no run attached |
| ``BACKFILL_SPARK_REMOTE`` | (none) | ``sc://127.0.0.1:PORT`` of a warm Spark Connect server (``backfill-platform spark-server``) that local runs use instead of starting a JVM each; a ``token`` parameter is refused (urls.py) |
| ``BACKFILL_SPARK_JARS`` | (none) | local Delta jars instead of resolving them from Maven Central |
| ``BACKFILL_SPARK_CONF`` | (none) | extra Spark settings for the local session: ``key=value;key=value`` |
| ``BACKFILL_JAR_CACHE`` | ``~/.cache/backfill_platform/jars`` | where Delta's jars are cached after the first start |
| ``BACKFILL_STEP_MAX_RETRIES`` | ``3`` | step retries of ``destination_data`` for transient errors |
| ``BACKFILL_STEP_RETRY_DELAY_SECONDS`` | ``60`` | base delay of those retries (exponential backoff, full jitter) |
| ``BACKFILL_RERUN_MAX_ATTEMPTS`` | ``3`` | reruns ``rerun_failed_partitions`` requests per partition before it gives up |
| ``BACKFILL_RERUN_DAYS_BACK`` | ``7`` | the sensor looks at failures of the last N days (the seed's ``retry_days_back``) |
| ``BACKFILL_RERUN_BATCH_SIZE`` | ``20`` | reruns requested per sensor tick at most |
| ``BACKFILL_RERUN_INTERVAL_SECONDS`` | ``300`` | minimum seconds between ticks of the rerun sensor |
| ``BACKFILL_RERUN_RETRY_GRACE_SECONDS`` | ``300`` | a failed run marked ``dagster/will_retry`` whose retry has not started after this long is given up ("expired") and alerted |
| ``BACKFILL_RUN_TIMEOUT_SECONDS`` | ``1800`` | the seed's ``timeout_seconds``: a run's maximum runtime (``dagster/max_runtime``); Databricks runs time out slightly earlier |
| ``BACKFILL_ALERT_INTERVAL_SECONDS`` | ``30`` | minimum seconds between ticks of the alert sensor |
| ``BACKFILL_AUTOMATION`` | ``stopped`` | default status of the sensors and the schedule: ``running`` or ``stopped`` |
| ``BACKFILL_SCHEDULE_CRON`` | ``0 6 * * 1-5`` | when the daily schedule materializes the latest completed business day |
| ``BACKFILL_SCHEDULE_TIMEZONE`` | ``America/New_York`` | timezone of that cron |
| ``BACKFILL_UI_URL`` | ``http://127.0.0.1:3000`` | base URL of the Dagster UI, for links in alerts |
| ``BACKFILL_ALERT_SMTP_HOST`` / ``_PORT`` | (none) / ``25`` | SMTP server for alert emails (email is off without a host) |
| ``BACKFILL_ALERT_SMTP_USER`` | (none) | SMTP login; the password is read as ``EnvVar("BACKFILL_ALERT_SMTP_PASSWORD")`` |
| ``BACKFILL_ALERT_SMTP_STARTTLS`` | ``false`` | STARTTLS (certificate verified) before login; a login requires STARTTLS or SMTPS |
| ``BACKFILL_ALERT_SMTP_SSL`` | ``false`` | SMTPS (TLS from the first byte, usually port 465) instead of STARTTLS |
| ``BACKFILL_ALERT_SMTP_CA_FILE`` | (none) | PEM CA bundle that verifies the SMTP server's certificate (default: system CAs) |
| ``BACKFILL_ALERT_EMAIL_FROM`` / ``_TO`` | ``backfill-platform@localhost`` / (none) | sender; comma-separated recipients |
| ``BACKFILL_ALERT_WEBHOOK_URL`` | (none) | Slack-compatible incoming webhook; a secret, read as ``EnvVar`` |
| ``BACKFILL_DATABRICKS_POOL`` | ``databricks_runs`` | Dagster pool of steps that launch Databricks runs (limit: ``dagster.yaml``) |
| ``BACKFILL_LOG_TABLE`` | ``backfill_log`` | table ``status --export-log`` writes the run history to |

Databricks deployment (read here, checked when the step launcher starts, see ``resources/databricks.py``
and ``docs/databricks.md``). Secrets are never stored in :class:`Settings`: the token and the OAuth
client secret are read with ``dagster.EnvVar`` when the launcher starts.

| variable | default | meaning |
| --- | --- | --- |
| ``BACKFILL_DATABRICKS_HOST`` | (none) | workspace URL, e.g. ``https://adb-123.4.azuredatabricks.net`` |
| ``BACKFILL_DATABRICKS_TOKEN`` | (none) | personal access token (secret) |
| ``BACKFILL_DATABRICKS_CLIENT_ID`` | (none) | OAuth service principal client id (instead of a token) |
| ``BACKFILL_DATABRICKS_CLIENT_SECRET`` | (none) | OAuth service principal secret (secret) |
| ``BACKFILL_DATABRICKS_CLUSTER_ID`` | (none) | run on this existing (shared) cluster ... |
| ``BACKFILL_DATABRICKS_SPARK_VERSION`` | (none) | ... or on a new job cluster per step: runtime, e.g. ``15.4.x-scala2.12`` |
| ``BACKFILL_DATABRICKS_NODE_TYPE`` | (none) | new job cluster: node type, e.g. ``i3.xlarge`` |
| ``BACKFILL_DATABRICKS_NUM_WORKERS`` | (none) | new job cluster: fixed number of workers ... |
| ``BACKFILL_DATABRICKS_AUTOSCALE`` | (none) | ... or autoscaling ``MIN-MAX`` workers, e.g. ``2-8`` |
| ``BACKFILL_DATABRICKS_LIBRARIES`` | (none) | extra libraries, comma-separated: ``pypi:pkg==1.0``, ``whl:dbfs:/x.whl``, ``jar:dbfs:/x.jar`` |
| ``BACKFILL_DATABRICKS_STAGING_PREFIX`` | ``/dagster_staging/backfill_platform`` | DBFS folder for the launcher's uploads |
| ``BACKFILL_DATABRICKS_POLL_INTERVAL_S`` | ``5`` | how often the launcher polls ``runs/get`` |
| ``BACKFILL_DATABRICKS_VIEWER_GROUPS`` | (none) | groups granted CAN_VIEW on each submitted run, comma-separated |
"""  # noqa: E501 - the settings tables above are one row a line

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from backfill_platform.urls import spark_remote_problem, webhook_url_problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEPLOYMENTS = ("local", "databricks")
AUTOMATION_STATUSES = ("running", "stopped")


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the variable to fix."""


# ------------------------------------------------------------------------------------- parsing


def _parse_date(name: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a date in YYYY-MM-DD form.") from None


def _number_parser(kind: type, least: float, what: str, *, strictly_above: bool = False):
    """A parser of a finite ``kind`` (int or float) >= ``least`` (> with ``strictly_above``); nan, inf
    and anything else are a SettingsError that says ``what`` is expected."""

    def parse(name: str, value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number < least or (strictly_above and number == least):
            raise SettingsError(f"{name}={value!r} must be {what}.")
        return number

    return parse


_parse_positive_int = _number_parser(int, 1, "a whole number of at least 1 (or 'all')")
_parse_non_negative_int = _number_parser(int, 0, "a whole number (0 or more)")
_parse_non_negative_float = _number_parser(float, 0, "a number of seconds (0 or more)")
_parse_positive_float = _number_parser(float, 0, "a number of seconds greater than 0", strictly_above=True)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} must be true or false.")


def _parse_closures(name: str, value: str) -> dict[dt.date, str]:
    """``2025-01-09=National Day of Mourning,2025-12-24`` -> {date: reason}."""
    closures: dict[dt.date, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        day, _, reason = item.partition("=")
        closures[_parse_date(name, day)] = reason.strip() or "extra closure"
    return closures


def _parse_spark_conf(name: str, value: str) -> dict[str, str]:
    conf = {}
    for item in filter(None, (part.strip() for part in value.split(";"))):
        key, sep, setting = item.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise SettingsError(f"{name}: {item!r} is not of the form spark.some.key=value.")
        conf[key.strip()] = setting.strip()
    return conf


def _parse_list(_name: str, value: str) -> tuple[str, ...]:
    return tuple(filter(None, (part.strip() for part in value.split(","))))


def _parse_lower(name: str, value: str) -> str:
    return value.lower()


def _parse_path(_name: str, value: str) -> Path:
    return Path(value).expanduser().resolve()


def _parse_spark_remote(name: str, value: str) -> str:
    if problem := spark_remote_problem(value):
        raise SettingsError(f"{name}: {problem}.")
    return value


# ------------------------------------------------------------------------------------ sections


@dataclasses.dataclass(frozen=True)
class TableSettings:
    """Where the tables are: names (Unity Catalog on Databricks; folders under the data dir locally)."""

    catalog: str = "demos"
    schema: str = "backfill_demo"
    source_table: str = "source_data"
    destination_table: str = "destination_data"
    calendar_table: str = "calendar"
    log_table: str = "backfill_log"
    table_layout: str = "partitioned"

    def __post_init__(self) -> None:
        if self.table_layout not in TABLE_LAYOUTS:
            raise SettingsError(f"BACKFILL_TABLE_LAYOUT={self.table_layout!r}: use {' or '.join(TABLE_LAYOUTS)}.")
        for name, variable in TABLE_NAME_VARIABLES.items():
            value = getattr(self, name)
            if not IDENTIFIER.fullmatch(value):
                raise SettingsError(
                    f"{variable}={value!r} is not a table identifier: use letters, digits and underscores, "
                    "starting with a letter or underscore (e.g. destination_data)."
                )


TABLE_LAYOUTS = ("partitioned", "clustered")
SPARK_SERVER_MODES = ("shared", "embedded")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # no dots, quotes, slashes or spaces
TABLE_NAME_VARIABLES = {
    "catalog": "BACKFILL_CATALOG",
    "schema": "BACKFILL_SCHEMA",
    "source_table": "BACKFILL_SOURCE_TABLE",
    "destination_table": "BACKFILL_DESTINATION_TABLE",
    "calendar_table": "BACKFILL_CALENDAR_TABLE",
    "log_table": "BACKFILL_LOG_TABLE",
}


@dataclasses.dataclass(frozen=True)
class CalendarSettings:
    """Which days are partitions of destination_data (partitions.py)."""

    start_date: dt.date = dt.date(2024, 1, 1)
    holiday_calendar: str = "pandas.tseries.holiday:USFederalHolidayCalendar"
    extra_closures: Mapping[dt.date, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SparkSettings:
    """The local deployment's Spark (resources/spark.py)."""

    master: str = "local[2]"
    remote: str = ""  # sc://host:port of a warm Spark Connect server someone else runs (wins over `server`)
    server: str = "embedded"  # from_env's default is "shared"; the module docstring says why they differ
    server_idle_seconds: float = 900.0
    jars: str = ""
    conf: Mapping[str, str] = dataclasses.field(default_factory=dict)
    jar_cache_dir: Path = Path.home() / ".cache" / "backfill_platform" / "jars"

    def __post_init__(self) -> None:
        if self.server not in SPARK_SERVER_MODES:
            raise SettingsError(f"BACKFILL_SPARK_SERVER={self.server!r}: use {' or '.join(SPARK_SERVER_MODES)}.")


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """Step retries (``RetryRequested`` raised by the step, retrying.py) and the rerun sensor's bounds
    (classification.py, sensors/)."""

    step_max_retries: int = 3
    step_retry_delay_seconds: float = 60.0
    rerun_max_attempts: int = 3
    rerun_days_back: int = 7
    rerun_batch_size: int = 20
    rerun_interval_seconds: int = 300
    rerun_retry_grace_seconds: float = 300.0  # a run marked will_retry whose retry never starts: given up after
    # The seed's timeout_seconds: a run's maximum runtime (tag dagster/max_runtime, ended by run
    # monitoring, then retried by run retries); a Databricks run gets a slightly shorter
    # timeout_seconds, so Databricks reports TIMEDOUT first (a transient failure, retried).
    run_timeout_seconds: float = 1800.0


@dataclasses.dataclass(frozen=True)
class AutomationSettings:
    """Default status of the sensors and the schedule, and the schedule's cron (schedules.py)."""

    status: str = "stopped"
    schedule_cron: str = "0 6 * * 1-5"
    schedule_timezone: str = "America/New_York"

    def __post_init__(self) -> None:
        if self.status not in AUTOMATION_STATUSES:
            raise SettingsError(
                f"BACKFILL_AUTOMATION={self.status!r} is not one of {', '.join(AUTOMATION_STATUSES)}."
            )

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclasses.dataclass(frozen=True)
class QualitySettings:
    """Data gates of destination_data before the write (expectations.py). ``min_kept_share``
    (``BACKFILL_MIN_KEPT_SHARE``): a date whose rows the ``drop`` expectations cut to zero, or below
    this share of its source rows, fails the run before anything is written, so an upstream change
    (e.g. renamed categories) cannot silently replace a date with almost nothing. Per run:
    ``DestinationConfig.min_kept_share``."""

    min_kept_share: float = 0.5

    def __post_init__(self) -> None:
        self.check_share("BACKFILL_MIN_KEPT_SHARE", self.min_kept_share)

    @staticmethod
    def check_share(name: str, value: object) -> float:
        """``value`` as a share in (0, 1], or a SettingsError naming ``name``."""
        try:
            share = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            share = float("nan")
        if not 0 < share <= 1:  # also refuses nan
            raise SettingsError(
                f"{name}={value!r} must be a share of the source rows in (0, 1], e.g. 0.5 "
                "(1: any dropped row fails the date)."
            )
        return share


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    """Where final failures are sent (sensors/alerts.py). Secrets are only read through ``dg.EnvVar``.

    SMTP is encrypted with ``BACKFILL_ALERT_SMTP_STARTTLS=true`` (STARTTLS, usually port 587) or
    ``BACKFILL_ALERT_SMTP_SSL=true`` (SMTPS: TLS from the first byte, usually port 465); either way the
    server's certificate is verified, against ``BACKFILL_ALERT_SMTP_CA_FILE`` (a PEM bundle, for a
    private CA) when set, else the system's CAs. A login (``BACKFILL_ALERT_SMTP_USER`` /
    ``BACKFILL_ALERT_SMTP_PASSWORD``) is refused without one of them: the password would cross the
    network in clear text. ``BACKFILL_ALERT_WEBHOOK_URL`` must be an ``http(s)://host/...`` URL; a
    malformed one is refused when the settings load, without echoing it (it is a secret).
    """

    interval_seconds: int = 30
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_starttls: bool = False
    smtp_ssl: bool = False  # SMTPS (implicit TLS)
    smtp_ca_file: str = ""  # PEM CA bundle that verifies the SMTP server (empty: the system's CAs)
    smtp_password_set: bool = False  # the value itself is only read through dg.EnvVar
    email_from: str = "backfill-platform@localhost"
    email_to: tuple[str, ...] = ()
    webhook_set: bool = False  # the URL is a secret: only read through dg.EnvVar

    PASSWORD_VAR = "BACKFILL_ALERT_SMTP_PASSWORD"  # secrets: the resource reads them with dg.EnvVar
    WEBHOOK_URL_VAR = "BACKFILL_ALERT_WEBHOOK_URL"

    def __post_init__(self) -> None:
        if self.smtp_starttls and self.smtp_ssl:
            raise SettingsError(
                "BACKFILL_ALERT_SMTP_STARTTLS and BACKFILL_ALERT_SMTP_SSL are both true: choose one "
                "(STARTTLS upgrades a plain connection, usually port 587; SMTPS is TLS from the start, usually 465)."
            )
        if (self.smtp_user or self.smtp_password_set) and not (self.smtp_starttls or self.smtp_ssl):
            raise SettingsError(
                "BACKFILL_ALERT_SMTP_USER / BACKFILL_ALERT_SMTP_PASSWORD are set but the SMTP connection is not "
                "encrypted, so the password would cross the network in clear text. Set "
                "BACKFILL_ALERT_SMTP_STARTTLS=true (usually port 587) or BACKFILL_ALERT_SMTP_SSL=true (SMTPS, "
                "usually port 465), or remove the login."
            )
        if self.smtp_ca_file and not Path(self.smtp_ca_file).is_file():
            raise SettingsError(
                f"BACKFILL_ALERT_SMTP_CA_FILE={self.smtp_ca_file!r} is not a file: give the PEM bundle of the "
                "CA that signed the SMTP server's certificate, or unset it to use the system's CAs."
            )

    @staticmethod
    def webhook_given(url: str | None) -> bool:
        """Whether a webhook URL is configured; a malformed one is a SettingsError that does not echo it."""
        if url is None or not url.strip():
            return False
        problem = webhook_url_problem(url)
        if problem:
            raise SettingsError(
                f"{AlertSettings.WEBHOOK_URL_VAR} is not a usable webhook URL: {problem}. "
                "(The value is a secret: it is not shown.)"
            )
        return True


@dataclasses.dataclass(frozen=True)
class DatabricksSettings:
    """Raw values, validated by ``resources.databricks.launcher_config`` when the launcher starts
    (never when definitions load). No secrets here."""

    host: str = ""
    client_id: str = ""
    cluster_id: str = ""
    spark_version: str = ""
    node_type: str = ""
    num_workers: str = ""
    autoscale: str = ""
    libraries: str = ""
    staging_prefix: str = "/dagster_staging/backfill_platform"
    poll_interval_s: str = "5"
    viewer_groups: str = ""
    pool: str = "databricks_runs"


@dataclasses.dataclass(frozen=True)
class Settings:
    deployment: str = "local"
    data_dir: Path = PROJECT_ROOT / ".data"  # local warehouse and Spark scratch space
    max_partitions_per_run: int | None = 500  # None: one run per backfill
    ui_url: str = "http://127.0.0.1:3000"
    tables: TableSettings = TableSettings()
    calendar: CalendarSettings = CalendarSettings()
    spark: SparkSettings = SparkSettings()
    retries: RetrySettings = RetrySettings()
    automation: AutomationSettings = AutomationSettings()
    quality: QualitySettings = QualitySettings()
    alerts: AlertSettings = AlertSettings()
    databricks: DatabricksSettings = DatabricksSettings()

    def __post_init__(self) -> None:
        if self.deployment not in DEPLOYMENTS:
            raise SettingsError(
                f"BACKFILL_DEPLOYMENT={self.deployment!r} is not one of {', '.join(DEPLOYMENTS)}."
            )

    def replace(self, **changes) -> Settings:
        """A copy with top-level fields or whole sections replaced."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        def section(kind: type, variables: Mapping[str, tuple[str, Callable[[str, str], object] | None]],
                    defaults: Mapping[str, object] | None = None):
            values = dict(defaults or {})
            for var, (field, parse) in variables.items():
                if (value := get(var)) is not None:
                    values[field] = parse(var, value) if parse else value
            return kind(**values)

        top = {}
        if (value := get("BACKFILL_DEPLOYMENT")) is not None:
            top["deployment"] = value.lower()
        if (value := get("BACKFILL_DATA_DIR")) is not None:
            top["data_dir"] = _parse_path("BACKFILL_DATA_DIR", value)
        if (value := get("BACKFILL_UI_URL")) is not None:
            top["ui_url"] = value
        if (value := get("BACKFILL_MAX_PARTITIONS_PER_RUN")) is not None:
            top["max_partitions_per_run"] = (
                None if value.lower() == "all" else _parse_positive_int("BACKFILL_MAX_PARTITIONS_PER_RUN", value)
            )
        return cls(
            **top,
            tables=section(TableSettings, {f"BACKFILL_{field.upper()}": (field, None) for field in (
                "catalog", "schema", "source_table", "destination_table", "calendar_table", "log_table",
                "table_layout")}),
            calendar=section(CalendarSettings, {
                "BACKFILL_START_DATE": ("start_date", _parse_date),
                "BACKFILL_HOLIDAY_CALENDAR": ("holiday_calendar", None),
                "BACKFILL_EXTRA_CLOSURES": ("extra_closures", _parse_closures),
            }),
            spark=section(SparkSettings, {
                "BACKFILL_SPARK_SERVER": ("server", _parse_lower),
                "BACKFILL_SPARK_SERVER_IDLE_SECONDS": ("server_idle_seconds", _parse_positive_float),
                "BACKFILL_SPARK_MASTER": ("master", None),
                "BACKFILL_SPARK_REMOTE": ("remote", _parse_spark_remote),
                "BACKFILL_SPARK_JARS": ("jars", None),
                "BACKFILL_SPARK_CONF": ("conf", _parse_spark_conf),
                "BACKFILL_JAR_CACHE": ("jar_cache_dir", _parse_path),
            }, defaults={"server": "shared"}),  # the deployment's default; SparkSettings' own is embedded
            retries=section(RetrySettings, {
                "BACKFILL_STEP_MAX_RETRIES": ("step_max_retries", _parse_non_negative_int),
                "BACKFILL_STEP_RETRY_DELAY_SECONDS": ("step_retry_delay_seconds", _parse_non_negative_float),
                "BACKFILL_RERUN_MAX_ATTEMPTS": ("rerun_max_attempts", _parse_non_negative_int),
                "BACKFILL_RERUN_DAYS_BACK": ("rerun_days_back", _parse_positive_int),
                "BACKFILL_RERUN_BATCH_SIZE": ("rerun_batch_size", _parse_positive_int),
                "BACKFILL_RERUN_INTERVAL_SECONDS": ("rerun_interval_seconds", _parse_positive_int),
                "BACKFILL_RERUN_RETRY_GRACE_SECONDS": ("rerun_retry_grace_seconds", _parse_non_negative_float),
                "BACKFILL_RUN_TIMEOUT_SECONDS": ("run_timeout_seconds", _parse_positive_float),
            }),
            automation=section(AutomationSettings, {
                "BACKFILL_AUTOMATION": ("status", _parse_lower),
                "BACKFILL_SCHEDULE_CRON": ("schedule_cron", None),
                "BACKFILL_SCHEDULE_TIMEZONE": ("schedule_timezone", None),
            }),
            quality=section(QualitySettings, {
                "BACKFILL_MIN_KEPT_SHARE": ("min_kept_share", QualitySettings.check_share),
            }),
            alerts=dataclasses.replace(
                section(AlertSettings, {
                    "BACKFILL_ALERT_INTERVAL_SECONDS": ("interval_seconds", _parse_positive_int),
                    "BACKFILL_ALERT_SMTP_HOST": ("smtp_host", None),
                    "BACKFILL_ALERT_SMTP_PORT": ("smtp_port", _parse_positive_int),
                    "BACKFILL_ALERT_SMTP_USER": ("smtp_user", None),
                    "BACKFILL_ALERT_SMTP_STARTTLS": ("smtp_starttls", _parse_bool),
                    "BACKFILL_ALERT_SMTP_SSL": ("smtp_ssl", _parse_bool),
                    "BACKFILL_ALERT_SMTP_CA_FILE": ("smtp_ca_file", None),
                    "BACKFILL_ALERT_EMAIL_FROM": ("email_from", None),
                    "BACKFILL_ALERT_EMAIL_TO": ("email_to", _parse_list),
                }),
                smtp_password_set=get("BACKFILL_ALERT_SMTP_PASSWORD") is not None,
                webhook_set=AlertSettings.webhook_given(env.get(AlertSettings.WEBHOOK_URL_VAR)),
            ),
            databricks=section(DatabricksSettings, {
                f"BACKFILL_DATABRICKS_{field.upper()}": (field, None)
                for field in (f.name for f in dataclasses.fields(DatabricksSettings))
            }),
        )


def load_settings() -> Settings:
    """The settings of this process, from its environment."""
    return Settings.from_env()
