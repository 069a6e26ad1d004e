"""The code location: read this file first.

``build_defs(settings)`` builds everything from one :class:`~backfill_platform.settings.Settings`
value; ``defs = build_defs(load_settings())`` below is the only place that reads the environment
when the package is imported (by ``dagster dev``, the daemon, the CLI or a run worker).

- ``partitions.py``: the business-day calendar (``BusinessDays``: a pandas holiday calendar, and
  Dagster daily partitions that exclude weekends and holidays);
- ``assets/``: ``business_calendar``, ``source_data`` and the partitioned ``destination_data``;
- ``jobs.py``: ``destination_data_job`` for ``dagster job backfill``;
- ``sensors/``, ``schedules.py``: reruns of failed partitions, alerts, the business-day schedule;
- ``resources/``: Spark + Delta tables (+ step launcher) for the deployment that
  ``BACKFILL_DEPLOYMENT`` selects (``settings.py`` lists every setting).

Loading this module starts no Spark session and makes no network call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from backfill_platform.assets import build_assets
from backfill_platform.jobs import build_destination_job
from backfill_platform.partitions import BusinessDays
from backfill_platform.resources import resources_for
from backfill_platform.sensors import build_automation_defs
from backfill_platform.settings import Settings, load_settings


def build_defs(settings: Settings, resources: Mapping[str, Any] | None = None) -> dg.Definitions:
    """The whole code location for ``settings``. ``resources`` replace bindings by key (tests bind
    fault-injecting ``write_hooks`` this way)."""
    business_days = BusinessDays.from_settings(settings.calendar)
    job = build_destination_job(business_days.partitions_def, settings.retries)
    core = dg.Definitions(
        assets=build_assets(settings, business_days),
        jobs=[job],
        resources={**resources_for(settings), **(resources or {})},
        # A run has one step (destination_data) or a few: running it in the run's own process saves a
        # second Python process per run (docs/benchmark.md) and lets step retries reuse the warm Spark
        # session.
        executor=dg.in_process_executor,
    )
    return dg.Definitions.merge(core, build_automation_defs(settings, job, business_days))


defs = build_defs(load_settings())
