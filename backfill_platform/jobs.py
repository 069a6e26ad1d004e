"""Jobs: the partitioned job that ``dagster job backfill -j destination_data_job`` drives."""

import dagster as dg

from backfill_platform import tags
from backfill_platform.settings import RetrySettings


def run_timeout_tags(settings: RetrySettings) -> dict[str, str]:
    """The run's maximum runtime (``BACKFILL_RUN_TIMEOUT_SECONDS``), as the tag run monitoring reads."""
    return {tags.MAX_RUNTIME: str(int(settings.run_timeout_seconds))}


def build_destination_job(partitions_def: dg.PartitionsDefinition, settings: RetrySettings):
    return dg.define_asset_job(
        tags.DESTINATION_JOB,
        selection=[tags.DESTINATION],
        partitions_def=partitions_def,
        tags=run_timeout_tags(settings),
        description="Materialize destination_data for one business day (or a range of them).",
    )
