"""The three assets: ``business_calendar`` (calendar.py), ``source_data`` (source.py) and the
partitioned ``destination_data`` (destination.py). ``build_assets`` makes them for one deployment."""

import dagster as dg

from backfill_platform.partitions import BusinessDays
from backfill_platform.settings import Settings


def build_assets(settings: Settings, business_days: BusinessDays) -> list[dg.AssetsDefinition]:
    # imported here, not with the package: the asset modules import pyspark, and the CLI's commands that
    # only need a sibling module (tables_schema, destination_config) never start Spark
    from backfill_platform.assets.calendar import build_calendar_asset
    from backfill_platform.assets.destination import build_destination_asset
    from backfill_platform.assets.source import source_data

    return [
        build_calendar_asset(business_days.calendar),
        source_data,
        build_destination_asset(settings, business_days),
    ]
