"""The Databricks deployment: every asset's step (``business_calendar``, ``source_data``, ``destination_data``)
runs on a Databricks cluster through ``dagster_databricks.databricks_pyspark_step_launcher``.

What happens per step (see ``docs/databricks.md``): the launcher zips ``backfill_platform``, uploads
it with the step's pickled context to DBFS, submits a one-time run (``jobs/runs/submit`` with a
``spark_python_task`` running ``databricks_step_main.py``), polls ``jobs/runs/get`` and reads the
step's Dagster events, stdout and stderr back from DBFS. On the cluster the same definitions load
(the launcher ships the non-secret ``BACKFILL_*`` settings as the run's environment), ``pyspark`` is
the cluster's own session (``getOrCreate``; Delta is built in) and tables are Unity Catalog names
``catalog.schema.table``. A failure Databricks causes is classified (``databricks_failures.py``) and
retried under the step retry schedule (``retrying.py``), each attempt a new Databricks run submitted
with its own idempotency token; the run's ``timeout_seconds`` derives from the one run timeout
(:func:`databricks_timeouts`). See :class:`BackfillDatabricksStepLauncher`.

Configuration comes only from environment variables (``settings.py``); the token and the OAuth
client secret are read with ``dagster.EnvVar`` when the launcher starts and never enter run config,
resource config, metadata or logs. Nothing is checked or contacted when definitions load: a bad
setting fails the first step that needs Databricks, with a message naming the variable to fix.

The seam: this module binds the resource key ``pyspark_step_launcher``
(``resources/step_launcher.py``). The launcher is marked superseded by Dagster Pipes upstream (it
warns once per process). A Pipes client cannot simply be bound at that key (Dagster picks a step
launcher by type, and Pipes needs the asset body to call the client): docs/databricks.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher
from databricks.sdk.errors import DatabricksError as SdkError

from backfill_platform.resources.databricks_launcher import BackfillDatabricksStepLauncher
from backfill_platform.resources.guard import refuse_resource_overrides
from backfill_platform.resources.spark import DeltaSparkResource
from backfill_platform.resources.step_launcher import STEP_LAUNCHER_KEY
from backfill_platform.resources.tables import DeltaTables
from backfill_platform.retrying import RetrySchedule
from backfill_platform.settings import PROJECT_ROOT, Settings, SettingsError

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
    "BACKFILL_TABLE_LAYOUT",
    "BACKFILL_START_DATE",
    "BACKFILL_HOLIDAY_CALENDAR",
    "BACKFILL_EXTRA_CLOSURES",
    "BACKFILL_MAX_PARTITIONS_PER_RUN",
    "BACKFILL_MIN_KEPT_SHARE",
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


PACKAGE_DIR = PROJECT_ROOT / "backfill_platform"
RUN_NAME = "backfill_platform"  # each step's Databricks run: "backfill_platform <step key>" (the launcher adds it)


class DatabricksConfigError(SettingsError):
    """The Databricks deployment is misconfigured; the message names the variable to fix."""


def databricks_resources(settings: Settings) -> dict[str, Any]:
    """Resources of ``BACKFILL_DEPLOYMENT=databricks``. Builds objects only: no check, no network."""
    return {
        # On the cluster: the cluster's session (getOrCreate with no settings). In the launching
        # process it is never started (the step runs remotely; DeltaSparkResource is lazy).
        "pyspark": DeltaSparkResource(spark_config={}),
        "tables": databricks_tables(settings),
        STEP_LAUNCHER_KEY: databricks_step_launcher(settings),
    }


def databricks_tables(settings: Settings) -> DeltaTables:
    """Unity Catalog names ``catalog.schema.table`` (the project's emulator serves them too: its
    cluster's Spark has a three-level catalog, ``databricks_emulator/metastore.py``)."""
    return DeltaTables.from_settings(settings, mode="catalog")


# ----------------------------------------------------------------------------- configuration


def _positive_number(name: str, value: str, kind=float) -> Any:
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise DatabricksConfigError(f"{name}={value!r} must be a positive number.")
    return number


def _cluster_config(settings: Settings) -> dict[str, Any]:
    """``run_config.cluster`` of the launcher: an existing cluster or a new job cluster spec."""
    new_spec = {
        "BACKFILL_DATABRICKS_SPARK_VERSION": settings.databricks.spark_version,
        "BACKFILL_DATABRICKS_NODE_TYPE": settings.databricks.node_type,
        "BACKFILL_DATABRICKS_NUM_WORKERS": settings.databricks.num_workers,
        "BACKFILL_DATABRICKS_AUTOSCALE": settings.databricks.autoscale,
    }
    given = [name for name, value in new_spec.items() if value]
    if settings.databricks.cluster_id:
        if given:
            raise DatabricksConfigError(
                f"BACKFILL_DATABRICKS_CLUSTER_ID is set together with {', '.join(given)}: choose an "
                "existing cluster (BACKFILL_DATABRICKS_CLUSTER_ID) or a new job cluster per step "
                "(the others), and unset the rest."
            )
        return {"existing": settings.databricks.cluster_id}
    if not given:
        raise DatabricksConfigError(
            "No cluster configured: set BACKFILL_DATABRICKS_CLUSTER_ID to an existing cluster id, or "
            "BACKFILL_DATABRICKS_SPARK_VERSION, BACKFILL_DATABRICKS_NODE_TYPE and "
            "BACKFILL_DATABRICKS_NUM_WORKERS (or BACKFILL_DATABRICKS_AUTOSCALE=MIN-MAX) for a new job cluster."
        )
    missing = [
        name
        for name in ("BACKFILL_DATABRICKS_SPARK_VERSION", "BACKFILL_DATABRICKS_NODE_TYPE")
        if not new_spec[name]
    ]
    if missing:
        raise DatabricksConfigError(
            f"Invalid new job cluster spec: {', '.join(missing)} must be set "
            "(e.g. BACKFILL_DATABRICKS_SPARK_VERSION=15.4.x-scala2.12, BACKFILL_DATABRICKS_NODE_TYPE=i3.xlarge)."
        )
    workers, autoscale = settings.databricks.num_workers, settings.databricks.autoscale
    if bool(workers) == bool(autoscale):
        raise DatabricksConfigError(
            "Invalid new job cluster spec: set exactly one of BACKFILL_DATABRICKS_NUM_WORKERS "
            "(a fixed size, e.g. 2) and BACKFILL_DATABRICKS_AUTOSCALE (MIN-MAX, e.g. 2-8)."
        )
    if workers:
        if not workers.isdigit():
            raise DatabricksConfigError(
                f"BACKFILL_DATABRICKS_NUM_WORKERS={workers!r} must be a whole number of workers (0 or more)."
            )
        size: dict[str, Any] = {"num_workers": int(workers)}
    else:
        low, _, high = autoscale.partition("-")
        if not (low.strip().isdigit() and high.strip().isdigit() and 0 < int(low) <= int(high)):
            raise DatabricksConfigError(
                f"BACKFILL_DATABRICKS_AUTOSCALE={autoscale!r} must be MIN-MAX workers with "
                "1 <= MIN <= MAX, e.g. 2-8."
            )
        size = {"autoscale": {"min_workers": int(low), "max_workers": int(high)}}
    return {
        "new": {
            "spark_version": settings.databricks.spark_version,
            "nodes": {"node_types": {"node_type_id": settings.databricks.node_type}},
            "size": size,
        }
    }


def _libraries(value: str) -> list[dict[str, Any]]:
    libraries: list[dict[str, Any]] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        kind, _, target = item.partition(":")
        if kind == "pypi" and target:
            libraries.append({"pypi": {"package": target}})
        elif kind in ("whl", "jar", "egg") and target:
            libraries.append({kind: target})
        elif kind == "maven" and target:
            libraries.append({"maven": {"coordinates": target}})
        else:
            raise DatabricksConfigError(
                f"BACKFILL_DATABRICKS_LIBRARIES item {item!r} is not one of pypi:<requirement>, "
                "whl:<dbfs path>, jar:<dbfs path>, egg:<dbfs path>, maven:<coordinates>."
            )
    return libraries


def databricks_timeouts(run_timeout_seconds: float) -> tuple[int, int]:
    """The Databricks run's ``timeout_seconds`` and the launcher's longest wait, for a run whose
    maximum runtime is ``run_timeout_seconds`` (``BACKFILL_RUN_TIMEOUT_SECONDS``, the one timeout).

    ``timeout_seconds`` is a little shorter, ``max(T - 60, 0.9 T)`` rounded down (at least 1): the
    Databricks run ends ``TIMEDOUT`` (transient: retried) before run monitoring ends the Dagster run.
    The launcher waits halfway between the two (at least 1 s more than ``timeout_seconds``), so it
    sees the ``TIMEDOUT`` rather than giving up on a run Databricks still runs."""
    timeout = max(1, math.floor(max(run_timeout_seconds - 60, 0.9 * run_timeout_seconds)))
    return timeout, max(timeout + 1, math.floor((timeout + run_timeout_seconds) / 2))


def cluster_environment(settings: Settings) -> dict[str, str]:
    """The run's environment on the cluster: the non-secret settings of the assets, and the step
    retry schedule, so that the asset's own ``RetryRequested`` on the cluster waits as it does here."""
    return {
        **remote_environment(settings),
        "BACKFILL_STEP_MAX_RETRIES": str(settings.retries.step_max_retries),
        "BACKFILL_STEP_RETRY_DELAY_SECONDS": repr(settings.retries.step_retry_delay_seconds),
    }


def launcher_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``DatabricksPySparkStepLauncher`` from the settings, without secrets.

    Raises :class:`DatabricksConfigError` naming the variable to fix.
    """
    host = settings.databricks.host
    if not host:
        raise DatabricksConfigError(
            "BACKFILL_DATABRICKS_HOST is not set: set it to the workspace URL, e.g. "
            "https://adb-1234567890123456.7.azuredatabricks.net."
        )
    parsed = urlparse(host if "://" in host else f"https://{host}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise DatabricksConfigError(f"BACKFILL_DATABRICKS_HOST={host!r} is not a workspace URL.")
    prefix = settings.databricks.staging_prefix
    if not prefix.startswith("/"):
        raise DatabricksConfigError(
            f"BACKFILL_DATABRICKS_STAGING_PREFIX={prefix!r} must be an absolute DBFS path, e.g. /dagster_staging."
        )
    timeout_seconds, max_wait = databricks_timeouts(settings.retries.run_timeout_seconds)
    run_config: dict[str, Any] = {
        "run_name": RUN_NAME,
        "cluster": _cluster_config(settings),
        "libraries": _libraries(settings.databricks.libraries),
        "timeout_seconds": timeout_seconds,
    }
    permissions: dict[str, Any] = {}
    groups = [g.strip() for g in settings.databricks.viewer_groups.split(",") if g.strip()]
    if groups:
        permissions["job_permissions"] = {"CAN_VIEW": [{"group_name": g} for g in groups]}
    return {
        "run_config": run_config,
        "permissions": permissions,
        "databricks_host": f"{parsed.scheme}://{parsed.netloc}",
        "secrets_to_env_variables": [],
        "env_variables": cluster_environment(settings),
        "storage": {},
        "staging_prefix": prefix,
        "wait_for_logs": False,
        "max_completion_wait_time_seconds": max_wait,
        "poll_interval_sec": _positive_number(
            "BACKFILL_DATABRICKS_POLL_INTERVAL_S", settings.databricks.poll_interval_s
        ),
        "verbose_logs": False,
        "add_dagster_env_variables": False,
    }


def _credentials(settings: Settings) -> dict[str, Any]:
    """The token or OAuth credentials, read with ``dagster.EnvVar`` at launcher start only."""
    has_token = secret_is_set(DATABRICKS_TOKEN_VAR)
    has_oauth = bool(settings.databricks.client_id) or secret_is_set(DATABRICKS_CLIENT_SECRET_VAR)
    if has_token and has_oauth:
        raise DatabricksConfigError(
            f"Both {DATABRICKS_TOKEN_VAR} and OAuth credentials (BACKFILL_DATABRICKS_CLIENT_ID / "
            f"{DATABRICKS_CLIENT_SECRET_VAR}) are set: keep one way to authenticate and unset the other."
        )
    if has_token:
        return {"databricks_token": dg.EnvVar(DATABRICKS_TOKEN_VAR).get_value()}
    if has_oauth:
        if not settings.databricks.client_id or not secret_is_set(DATABRICKS_CLIENT_SECRET_VAR):
            missing = (
                "BACKFILL_DATABRICKS_CLIENT_ID" if not settings.databricks.client_id else DATABRICKS_CLIENT_SECRET_VAR
            )
            raise DatabricksConfigError(
                f"OAuth needs both BACKFILL_DATABRICKS_CLIENT_ID and {DATABRICKS_CLIENT_SECRET_VAR}: set {missing}."
            )
        return {
            "oauth_credentials": {
                "client_id": settings.databricks.client_id,
                "client_secret": dg.EnvVar(DATABRICKS_CLIENT_SECRET_VAR).get_value(),
            }
        }
    raise DatabricksConfigError(
        f"No Databricks credentials: set {DATABRICKS_TOKEN_VAR} (a personal access token) or "
        f"BACKFILL_DATABRICKS_CLIENT_ID and {DATABRICKS_CLIENT_SECRET_VAR} (an OAuth service principal)."
    )


def _check_reachable(host: str, timeout_s: float = 5.0) -> None:
    parsed = urlparse(host)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as error:
        raise DatabricksConfigError(
            f"BACKFILL_DATABRICKS_HOST={host} is unreachable ({error.__class__.__name__}: {error}). "
            "Check the workspace URL and that this machine can reach it."
        ) from None


def _check_workspace(launcher: Any, settings: Settings, credential_var: str) -> None:
    """One cheap authenticated call (and the cluster, if an existing one is configured)."""
    client = launcher.databricks_runner.client.workspace_client
    try:
        client.dbfs.get_status("/")
    except SdkError as error:
        raise DatabricksConfigError(
            f"The workspace {settings.databricks.host} rejected the credentials in {credential_var} "
            f"({error.__class__.__name__}: {error}). Set a valid token / service principal."
        ) from None
    except Exception as error:  # OAuth token endpoint failures and the like
        raise DatabricksConfigError(
            f"Could not authenticate to {settings.databricks.host} with {credential_var}: "
            f"{error.__class__.__name__}: {error}"
        ) from None
    if settings.databricks.cluster_id:
        try:
            client.clusters.get(settings.databricks.cluster_id)
        except SdkError as error:
            raise DatabricksConfigError(
                f"BACKFILL_DATABRICKS_CLUSTER_ID={settings.databricks.cluster_id}: {error}. "
                "Set it to the id of a cluster in this workspace (Compute > cluster > Configuration > JSON)."
            ) from None


@contextlib.contextmanager
def _staged_package() -> Iterator[str]:
    """A folder holding only the ``backfill_platform`` package: the launcher zips the whole folder it
    is given, and the repository root also holds the virtualenv and data."""
    folder = Path(tempfile.mkdtemp(prefix="backfill_platform_code_"))
    try:
        shutil.copytree(
            PACKAGE_DIR, folder / "backfill_platform", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        yield str(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_step_launcher(settings: Settings, package_path: str) -> DatabricksPySparkStepLauncher:
    """Validate the settings, read the secret, check the workspace; the launcher or a config error."""
    config = launcher_config(settings)
    credentials = _credentials(settings)
    _check_reachable(config["databricks_host"])
    credential_var = DATABRICKS_TOKEN_VAR if "databricks_token" in credentials else (
        f"BACKFILL_DATABRICKS_CLIENT_ID/{DATABRICKS_CLIENT_SECRET_VAR}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # superseded-by-Pipes warning: documented once in docs/databricks.md
        launcher = BackfillDatabricksStepLauncher(
            **config, **credentials, local_pipeline_package_path=package_path,
            schedule=RetrySchedule.from_settings(settings.retries),
        )
    _check_workspace(launcher, settings, credential_var)
    return launcher


def databricks_step_launcher(settings: Settings) -> dg.ResourceDefinition:
    """The ``pyspark_step_launcher`` resource of the Databricks deployment."""

    def init(context: dg.InitResourceContext):
        refuse_resource_overrides(context.dagster_run)  # before the workspace is contacted
        if on_databricks_cluster():
            # Inside the step on the cluster the step already runs where it should: nothing to launch.
            yield None
            return
        with _staged_package() as package_path:
            yield build_step_launcher(settings, package_path)

    return dg.ResourceDefinition(
        resource_fn=init,
        description=(
            "dagster_databricks.databricks_pyspark_step_launcher configured from BACKFILL_DATABRICKS_* "
            "(token via EnvVar), with Databricks-side failures classified (databricks_failures.py, classification.py) "
            "and retried by the step retry schedule (retrying.py)."
        ),
    )
