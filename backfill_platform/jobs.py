"""Jobs: the partitioned job that ``dagster job backfill -j destination_data_job`` drives."""

import dagster as dg

from backfill_platform import tags


def build_destination_job(partitions_def: dg.PartitionsDefinition):
    return dg.define_asset_job(
        tags.DESTINATION_JOB,
        selection=[tags.DESTINATION],
        partitions_def=partitions_def,
        description="Materialize destination_data for one business day (or a range of them).",
    )
