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
| ``BACKFILL_START_DATE`` | ``2024-01-01`` | first day of the partitions |
| ``BACKFILL_HOLIDAY_CALENDAR`` | ``pandas.tseries.holiday:USFederalHolidayCalendar`` | pandas holiday calendar class |
| ``BACKFILL_EXTRA_CLOSURES`` | (none) | extra closed days: ``2025-01-09=National Day of Mourning,...`` |
| ``BACKFILL_MAX_PARTITIONS_PER_RUN`` | ``60`` | business days one backfill run processes at most; ``all``: one run per backfill (``BackfillPolicy.single_run()``, which ``dagster asset materialize --partition-range`` requires) |
| ``BACKFILL_SPARK_MASTER`` | ``local[2]`` | Spark master of the local deployment |
| ``BACKFILL_SPARK_REMOTE`` | (none) | ``sc://127.0.0.1:PORT`` of a warm Spark Connect server (``backfill-platform spark-server``) that local runs use instead of starting a JVM each |
| ``BACKFILL_SPARK_JARS`` | (none) | local Delta jars instead of resolving them from Maven Central |
| ``BACKFILL_SPARK_CONF`` | (none) | extra Spark settings for the local session: ``key=value;key=value`` |
| ``BACKFILL_JAR_CACHE`` | ``~/.cache/backfill_platform/jars`` | where Delta's jars are cached after the first start |
| ``BACKFILL_STEP_MAX_RETRIES`` | ``3`` | step retries of ``destination_data`` for transient errors |
| ``BACKFILL_STEP_RETRY_DELAY_SECONDS`` | ``60`` | base delay of those retries (exponential backoff, full jitter) |
| ``BACKFILL_RERUN_MAX_ATTEMPTS`` | ``3`` | reruns ``rerun_failed_partitions`` requests per partition before it gives up |
| ``BACKFILL_RERUN_DAYS_BACK`` | ``7`` | the sensor looks at failures of the last N days (the seed's ``retry_days_back``) |
| ``BACKFILL_RERUN_BATCH_SIZE`` | ``20`` | reruns requested per sensor tick at most |
| ``BACKFILL_RERUN_INTERVAL_SECONDS`` | ``300`` | minimum seconds between ticks of the rerun sensor |
| ``BACKFILL_RUN_TIMEOUT_SECONDS`` | ``1800`` | the seed's ``timeout_seconds``: a run's maximum runtime (``dagster/max_runtime``); Databricks runs time out slightly earlier |
| ``BACKFILL_ALERT_INTERVAL_SECONDS`` | ``30`` | minimum seconds between ticks of the alert sensor |
| ``BACKFILL_AUTOMATION`` | ``stopped`` | default status of the sensors and the schedule: ``running`` or ``stopped`` |
| ``BACKFILL_SCHEDULE_CRON`` | ``0 6 * * 1-5`` | when the daily schedule materializes the latest completed business day |
| ``BACKFILL_SCHEDULE_TIMEZONE`` | ``America/New_York`` | timezone of that cron |
| ``BACKFILL_UI_URL`` | ``http://127.0.0.1:3000`` | base URL of the Dagster UI, for links in alerts |
| ``BACKFILL_ALERT_SMTP_HOST`` / ``_PORT`` | (none) / ``25`` | SMTP server for alert emails (email is off without a host) |
| ``BACKFILL_ALERT_SMTP_USER`` | (none) | SMTP login; the password is read as ``EnvVar("BACKFILL_ALERT_SMTP_PASSWORD")`` |
| ``BACKFILL_ALERT_SMTP_STARTTLS`` | ``false`` | STARTTLS before login |
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
| ``BACKFILL_DATABRICKS_TABLE_PATH_ROOT`` | (none) | set by the emulator's cluster only: Delta paths instead of Unity Catalog names |
"""  # noqa: E501 - the settings tables above are one row a line

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path

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


def _parse_positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise SettingsError(f"{name}={value!r} must be a whole number of at least 1 (or 'all').")
    return number


def _parse_non_negative_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:  # also refuses nan
        raise SettingsError(f"{name}={value!r} must be a number of seconds (0 or more).")
    return number


def _parse_positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not (number > 0 and number != float("inf")):  # also refuses nan and inf
        raise SettingsError(f"{name}={value!r} must be a number of seconds greater than 0.")
    return number


def _parse_non_negative_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise SettingsError(f"{name}={value!r} must be a whole number (0 or more).")
    return number


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
    remote: str = ""  # sc://host:port of a warm Spark Connect server; empty: a JVM per run
    jars: str = ""
    conf: Mapping[str, str] = dataclasses.field(default_factory=dict)
    jar_cache_dir: Path = Path.home() / ".cache" / "backfill_platform" / "jars"


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """Step retries (``RetryPolicy``) and the rerun sensor's bounds (classification.py, sensors/)."""

    step_max_retries: int = 3
    step_retry_delay_seconds: float = 60.0
    rerun_max_attempts: int = 3
    rerun_days_back: int = 7
    rerun_batch_size: int = 20
    rerun_interval_seconds: int = 300
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
class AlertSettings:
    """Where final failures are sent (sensors/alerts.py). Secrets are only read through ``dg.EnvVar``."""

    interval_seconds: int = 30
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_starttls: bool = False
    smtp_password_set: bool = False  # the value itself is only read through dg.EnvVar
    email_from: str = "backfill-platform@localhost"
    email_to: tuple[str, ...] = ()
    webhook_set: bool = False  # the URL is a secret: only read through dg.EnvVar


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
    table_path_root: str = ""
    viewer_groups: str = ""
    pool: str = "databricks_runs"


@dataclasses.dataclass(frozen=True)
class Settings:
    deployment: str = "local"
    data_dir: Path = PROJECT_ROOT / ".data"  # local warehouse and Spark scratch space
    max_partitions_per_run: int | None = 60  # None: one run per backfill
    ui_url: str = "http://127.0.0.1:3000"
    tables: TableSettings = TableSettings()
    calendar: CalendarSettings = CalendarSettings()
    spark: SparkSettings = SparkSettings()
    retries: RetrySettings = RetrySettings()
    automation: AutomationSettings = AutomationSettings()
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

        def section(kind: type, variables: Mapping[str, tuple[str, Callable[[str, str], object] | None]]):
            values = {}
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
                "catalog", "schema", "source_table", "destination_table", "calendar_table", "log_table")}),
            calendar=section(CalendarSettings, {
                "BACKFILL_START_DATE": ("start_date", _parse_date),
                "BACKFILL_HOLIDAY_CALENDAR": ("holiday_calendar", None),
                "BACKFILL_EXTRA_CLOSURES": ("extra_closures", _parse_closures),
            }),
            spark=section(SparkSettings, {
                "BACKFILL_SPARK_MASTER": ("master", None),
                "BACKFILL_SPARK_REMOTE": ("remote", None),
                "BACKFILL_SPARK_JARS": ("jars", None),
                "BACKFILL_SPARK_CONF": ("conf", _parse_spark_conf),
                "BACKFILL_JAR_CACHE": ("jar_cache_dir", _parse_path),
            }),
            retries=section(RetrySettings, {
                "BACKFILL_STEP_MAX_RETRIES": ("step_max_retries", _parse_non_negative_int),
                "BACKFILL_STEP_RETRY_DELAY_SECONDS": ("step_retry_delay_seconds", _parse_non_negative_float),
                "BACKFILL_RERUN_MAX_ATTEMPTS": ("rerun_max_attempts", _parse_non_negative_int),
                "BACKFILL_RERUN_DAYS_BACK": ("rerun_days_back", _parse_positive_int),
                "BACKFILL_RERUN_BATCH_SIZE": ("rerun_batch_size", _parse_positive_int),
                "BACKFILL_RERUN_INTERVAL_SECONDS": ("rerun_interval_seconds", _parse_positive_int),
                "BACKFILL_RUN_TIMEOUT_SECONDS": ("run_timeout_seconds", _parse_positive_float),
            }),
            automation=section(AutomationSettings, {
                "BACKFILL_AUTOMATION": ("status", _parse_lower),
                "BACKFILL_SCHEDULE_CRON": ("schedule_cron", None),
                "BACKFILL_SCHEDULE_TIMEZONE": ("schedule_timezone", None),
            }),
            alerts=dataclasses.replace(
                section(AlertSettings, {
                    "BACKFILL_ALERT_INTERVAL_SECONDS": ("interval_seconds", _parse_positive_int),
                    "BACKFILL_ALERT_SMTP_HOST": ("smtp_host", None),
                    "BACKFILL_ALERT_SMTP_PORT": ("smtp_port", _parse_positive_int),
                    "BACKFILL_ALERT_SMTP_USER": ("smtp_user", None),
                    "BACKFILL_ALERT_SMTP_STARTTLS": ("smtp_starttls", _parse_bool),
                    "BACKFILL_ALERT_EMAIL_FROM": ("email_from", None),
                    "BACKFILL_ALERT_EMAIL_TO": ("email_to", _parse_list),
                }),
                smtp_password_set=get("BACKFILL_ALERT_SMTP_PASSWORD") is not None,
                webhook_set=get("BACKFILL_ALERT_WEBHOOK_URL") is not None,
            ),
            databricks=section(DatabricksSettings, {
                f"BACKFILL_DATABRICKS_{field.upper()}": (field, None)
                for field in (f.name for f in dataclasses.fields(DatabricksSettings))
            }),
        )


DATABRICKS_TOKEN_VAR = "BACKFILL_DATABRICKS_TOKEN"
DATABRICKS_CLIENT_SECRET_VAR = "BACKFILL_DATABRICKS_CLIENT_SECRET"
DATABRICKS_SECRET_VARS = (DATABRICKS_TOKEN_VAR, DATABRICKS_CLIENT_SECRET_VAR)

# Settings of the assets themselves, which the step on the cluster must see exactly as the launching
# process does (the launcher ships them as the run's environment variables; no secrets, no local paths).
REMOTE_SETTING_VARS = (
    "BACKFILL_DEPLOYMENT",
    "BACKFILL_CATALOG",
    "BACKFILL_SCHEMA",
    "BACKFILL_SOURCE_TABLE",
    "BACKFILL_DESTINATION_TABLE",
    "BACKFILL_CALENDAR_TABLE",
    "BACKFILL_START_DATE",
    "BACKFILL_HOLIDAY_CALENDAR",
    "BACKFILL_EXTRA_CLOSURES",
    "BACKFILL_MAX_PARTITIONS_PER_RUN",
)


def remote_environment(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The non-secret settings the step on the cluster needs, as environment variables."""
    env = os.environ if environ is None else environ
    values = {name: env[name] for name in REMOTE_SETTING_VARS if env.get(name)}
    values["BACKFILL_DEPLOYMENT"] = settings.deployment
    return values


def secret_is_set(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a secret variable is set, without ever returning its value."""
    env = os.environ if environ is None else environ
    return bool((env.get(name) or "").strip())


def on_databricks_cluster(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a Databricks runtime (the runtime, and the project's emulator, set this)."""
    env = os.environ if environ is None else environ
    return bool(env.get("DATABRICKS_RUNTIME_VERSION"))


def load_settings() -> Settings:
    """The settings of this process, from its environment."""
    return Settings.from_env()
