"""Every setting of backfill_platform, read from the environment in this one place.

Nothing else in the package reads ``os.environ`` for configuration: modules take a
:class:`Settings` (usually :func:`load_settings`) so tests can build their own.

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
| ``BACKFILL_SPARK_JARS`` | (none) | local Delta jars instead of resolving them from Maven Central |
| ``BACKFILL_SPARK_CONF`` | (none) | extra Spark settings for the local session: ``key=value;key=value`` |
| ``BACKFILL_JAR_CACHE`` | ``~/.cache/backfill_platform/jars`` | where Delta's jars are cached after the first start |
| ``BACKFILL_LOG_TABLE`` | ``backfill_log`` | table ``status --export-log`` writes the run history to |
| ``BACKFILL_UI_URL`` | ``http://127.0.0.1:3000`` | base URL of the Dagster UI, for run links in reports |

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
| ``BACKFILL_DATABRICKS_MAX_WAIT_S`` | ``3600`` | longest a step may take on Databricks (``timeout_seconds`` too) |
| ``BACKFILL_DATABRICKS_VIEWER_GROUPS`` | (none) | groups granted CAN_VIEW on each submitted run, comma-separated |
| ``BACKFILL_DATABRICKS_TABLE_PATH_ROOT`` | (none) | set by the emulator's cluster only: Delta paths instead of Unity Catalog names |
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEPLOYMENTS = ("local", "databricks")


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the variable to fix."""


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


@dataclasses.dataclass(frozen=True)
class Settings:
    deployment: str = "local"
    data_dir: Path = PROJECT_ROOT / ".data"
    catalog: str = "demos"
    schema: str = "backfill_demo"
    source_table: str = "source_data"
    destination_table: str = "destination_data"
    calendar_table: str = "calendar"
    start_date: dt.date = dt.date(2024, 1, 1)
    holiday_calendar: str = "pandas.tseries.holiday:USFederalHolidayCalendar"
    extra_closures: Mapping[dt.date, str] = dataclasses.field(default_factory=dict)
    max_partitions_per_run: int | None = 60  # None: single run
    spark_master: str = "local[2]"
    spark_jars: str = ""
    spark_conf: Mapping[str, str] = dataclasses.field(default_factory=dict)
    jar_cache_dir: Path = Path.home() / ".cache" / "backfill_platform" / "jars"
    log_table: str = "backfill_log"
    ui_url: str = "http://127.0.0.1:3000"
    # Databricks deployment: raw values, validated by ``resources.databricks.launcher_config`` when the launcher starts
    # (never when definitions load). No secrets here.
    databricks_host: str = ""
    databricks_client_id: str = ""
    databricks_cluster_id: str = ""
    databricks_spark_version: str = ""
    databricks_node_type: str = ""
    databricks_num_workers: str = ""
    databricks_autoscale: str = ""
    databricks_libraries: str = ""
    databricks_staging_prefix: str = "/dagster_staging/backfill_platform"
    databricks_poll_interval_s: str = "5"
    databricks_max_wait_s: str = "3600"
    databricks_table_path_root: str = ""
    databricks_viewer_groups: str = ""

    @property
    def backfill_policy(self):
        """Chunks of ``max_partitions_per_run`` business days per run, or one run for all."""
        import dagster as dg

        if self.max_partitions_per_run is None:
            return dg.BackfillPolicy.single_run()
        return dg.BackfillPolicy.multi_run(self.max_partitions_per_run)

    def __post_init__(self) -> None:
        if self.deployment not in DEPLOYMENTS:
            raise SettingsError(
                f"BACKFILL_DEPLOYMENT={self.deployment!r} is not one of {', '.join(DEPLOYMENTS)}."
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        values: dict[str, object] = {}
        plain = {
            "BACKFILL_DEPLOYMENT": "deployment",
            "BACKFILL_CATALOG": "catalog",
            "BACKFILL_SCHEMA": "schema",
            "BACKFILL_SOURCE_TABLE": "source_table",
            "BACKFILL_DESTINATION_TABLE": "destination_table",
            "BACKFILL_CALENDAR_TABLE": "calendar_table",
            "BACKFILL_HOLIDAY_CALENDAR": "holiday_calendar",
            "BACKFILL_SPARK_MASTER": "spark_master",
            "BACKFILL_SPARK_JARS": "spark_jars",
            "BACKFILL_LOG_TABLE": "log_table",
            "BACKFILL_UI_URL": "ui_url",
            **{f"BACKFILL_{name.upper()}": name for name in DATABRICKS_FIELDS},
        }
        for var, field in plain.items():
            if (value := get(var)) is not None:
                values[field] = value.lower() if field == "deployment" else value
        if (value := get("BACKFILL_DATA_DIR")) is not None:
            values["data_dir"] = Path(value).expanduser().resolve()
        if (value := get("BACKFILL_SPARK_CONF")) is not None:
            values["spark_conf"] = _parse_spark_conf("BACKFILL_SPARK_CONF", value)
        if (value := get("BACKFILL_JAR_CACHE")) is not None:
            values["jar_cache_dir"] = Path(value).expanduser().resolve()
        if (value := get("BACKFILL_START_DATE")) is not None:
            values["start_date"] = _parse_date("BACKFILL_START_DATE", value)
        if (value := get("BACKFILL_EXTRA_CLOSURES")) is not None:
            values["extra_closures"] = _parse_closures("BACKFILL_EXTRA_CLOSURES", value)
        if (value := get("BACKFILL_MAX_PARTITIONS_PER_RUN")) is not None:
            values["max_partitions_per_run"] = (
                None
                if value.lower() == "all"
                else _parse_positive_int("BACKFILL_MAX_PARTITIONS_PER_RUN", value)
            )
        return cls(**values)  # type: ignore[arg-type]


DATABRICKS_FIELDS = (
    "databricks_host",
    "databricks_client_id",
    "databricks_cluster_id",
    "databricks_spark_version",
    "databricks_node_type",
    "databricks_num_workers",
    "databricks_autoscale",
    "databricks_libraries",
    "databricks_staging_prefix",
    "databricks_poll_interval_s",
    "databricks_max_wait_s",
    "databricks_table_path_root",
    "databricks_viewer_groups",
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
