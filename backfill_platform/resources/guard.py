"""The deployment's resources are the deployment's: a run's config cannot rebind them.

Dagster lets run config configure every Pythonic resource (``resources: tables: config: ...``) from
the launchpad, the GraphQL API, ``dagster job launch --config`` or ``dagster asset materialize -c``.
The platform's resources decide where data goes and what runs in the JVM: the tables (a
``destination_table: "../../x"`` would overwrite another table), Spark (``spark_config`` with
``spark.driver.extraJavaOptions``, a foreign Spark Connect ``remote``), the Databricks step launcher
(a foreign ``host`` would receive the token). They come from the deployment's settings only.

A run whose config names one of them is refused, as a logic error (never retried or rerun), before
anything is written or any remote system is contacted:

- at submission, by the instance's run coordinator (``concurrency.PartitionSlotRunCoordinator``):
  the run ends FAILURE with the reason and never starts a process;
- when each of these resources initializes (``setup_for_execution``) and when the Databricks launcher
  launches a step, for runs that never pass through the queue (in-process execution).

Run config of the assets themselves (``ops: destination_data: config: ...``) stays open: it is the
seed notebook's widgets (``full_refresh``, expectation policies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backfill_platform.resources.step_launcher import STEP_LAUNCHER_KEY
from backfill_platform.resources.write_hooks import WRITE_HOOKS_KEY

PLATFORM_RESOURCE_KEYS = frozenset({"pyspark", "tables", STEP_LAUNCHER_KEY, WRITE_HOOKS_KEY, "alerts"})


class ResourceOverrideError(ValueError):
    """A run's config tries to configure one of the deployment's resources."""


def overridden_resources(run_config: Mapping[str, Any] | None) -> list[str]:
    """The platform resources that ``run_config`` tries to configure (sorted; [] when none)."""
    resources = (run_config or {}).get("resources") or {}
    if not isinstance(resources, Mapping):
        return []
    return sorted(key for key in resources if key in PLATFORM_RESOURCE_KEYS)


def override_message(keys: list[str]) -> str:
    # The "[logic: ...]" prefix is how classification.py recognizes the class in any error chain.
    return (
        f"[logic: run config configures the deployment's resources] This run's config sets "
        f"resources {', '.join(keys)}. Where data goes and how Spark starts come from the deployment's "
        "settings (the BACKFILL_* environment of the code location), never from a run: remove the "
        "`resources:` section from the run config. Nothing was written."
    )


def refuse_resource_overrides(run: Any) -> None:
    """Raise :class:`ResourceOverrideError` when ``run`` (a ``DagsterRun`` or None) configures a
    platform resource."""
    keys = overridden_resources(getattr(run, "run_config", None))
    if keys:
        raise ResourceOverrideError(override_message(keys))
