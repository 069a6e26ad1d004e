"""The three assets: ``business_calendar`` (calendar.py), ``source_data`` (source.py) and the
partitioned ``destination_data`` (destination.py). ``build_assets`` makes them for one deployment."""

import dagster as dg

from backfill_platform.assets.calendar import build_calendar_asset
from backfill_platform.assets.destination import build_destination_asset
from backfill_platform.assets.source import source_data
from backfill_platform.partitions import BusinessDays
from backfill_platform.settings import Settings


def build_assets(settings: Settings, business_days: BusinessDays) -> list[dg.AssetsDefinition]:
    return [
        build_calendar_asset(business_days.calendar),
        source_data,
        build_destination_asset(settings, business_days),
    ]
