"""Resources per deployment. The asset code is the same everywhere; only this wiring changes.

``BACKFILL_DEPLOYMENT=local`` (default): local Spark + Delta (the data dir's shared Spark Connect server,
or a JVM in the run's process), tables under ``BACKFILL_DATA_DIR``, and no step launcher (steps run in
the run's own process).
``BACKFILL_DEPLOYMENT=databricks``: see ``resources/databricks.py``.
"""

from __future__ import annotations

from typing import Any

from backfill_platform.resources.shared_spark import shared_server_dir
from backfill_platform.resources.step_launcher import STEP_LAUNCHER_KEY, in_process_step_launcher
from backfill_platform.resources.tables import DeltaTables
from backfill_platform.resources.write_hooks import WRITE_HOOKS_KEY, WriteHooks
from backfill_platform.settings import Settings


def local_resources(settings: Settings) -> dict[str, Any]:
    # pyspark is imported here, not with the package: commands that never start Spark (`plan`) skip it
    from backfill_platform.resources.spark import DeltaSparkResource, local_spark_config

    shared = settings.spark.server == "shared" and not settings.spark.remote
    return {
        "pyspark": DeltaSparkResource(
            spark_config=local_spark_config(settings), remote=settings.spark.remote,
            shared_server_dir=str(shared_server_dir(settings)) if shared else "",
            shared_server_idle_seconds=settings.spark.server_idle_seconds,
        ),
        "tables": DeltaTables.from_settings(settings, mode="path"),
        STEP_LAUNCHER_KEY: in_process_step_launcher(),
        WRITE_HOOKS_KEY: WriteHooks(),
    }


def resources_for(settings: Settings) -> dict[str, Any]:
    """Every resource the assets need in this deployment (``write_hooks``: nothing in production)."""
    if settings.deployment == "databricks":
        from backfill_platform.resources.databricks import databricks_resources

        return {**databricks_resources(settings), WRITE_HOOKS_KEY: WriteHooks()}
    return local_resources(settings)
