"""The code location: read this file first.

- ``partitions.py``: the business-day calendar (``business_day_partitions``);
- ``assets/``: ``business_calendar``, ``source_data`` and the partitioned ``destination_data``;
- ``jobs.py``: ``destination_data_job`` for ``dagster job backfill``;
- ``resources/``: Spark + Delta tables (+ step launcher) for the deployment that
  ``BACKFILL_DEPLOYMENT`` selects (``settings.py`` lists every setting).

Loading this module starts no Spark session and makes no network call.
"""

import dagster as dg

from backfill_platform.assets import business_calendar, destination_data, source_data
from backfill_platform.jobs import destination_data_job
from backfill_platform.resources import resources_for
from backfill_platform.sensors import automation
from backfill_platform.settings import load_settings

_automation = automation(load_settings(), destination_data_job)  # sensors/, schedules.py: retries, alerts

defs = dg.Definitions(
    assets=[business_calendar, source_data, destination_data],
    jobs=[destination_data_job],
    sensors=_automation["sensors"],
    schedules=_automation["schedules"],
    resources={**resources_for(load_settings()), **_automation["resources"]},
    # A run has one step (destination_data) or a few: running it in the run's own process saves a
    # second Python process per run (docs/benchmark.md) and lets step retries reuse the warm Spark session.
    executor=dg.in_process_executor,
)
