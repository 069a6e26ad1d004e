"""Jobs: the partitioned job that ``dagster job backfill -j destination_data_job`` drives."""

import dagster as dg

from backfill_platform.assets.destination import destination_data
from backfill_platform.partitions import business_day_partitions

destination_data_job = dg.define_asset_job(
    "destination_data_job",
    selection=[destination_data],
    partitions_def=business_day_partitions,
    description="Materialize destination_data for one business day (or a range of them).",
)
