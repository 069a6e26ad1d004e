from backfill_platform.assets.calendar import business_calendar
from backfill_platform.assets.destination import destination_data
from backfill_platform.assets.source import source_data

__all__ = ["business_calendar", "destination_data", "source_data"]
