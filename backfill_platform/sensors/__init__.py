"""Automation of the platform: ``rerun_failed_partitions`` (rerun.py), ``alert_on_final_failure``
(alerts.py) and the business-day schedule (``schedules.py``); ``failures.py`` holds what the two
sensors need to agree on. ``build_automation_defs`` returns them, with the ``alerts`` resource, as
one ``Definitions`` that ``definitions.build_defs`` merges in."""

from __future__ import annotations

import dagster as dg

from backfill_platform.partitions import BusinessDays
from backfill_platform.schedules import build_business_day_schedule
from backfill_platform.sensors.alerts import build_alert_sensor
from backfill_platform.sensors.notifier import alert_notifier
from backfill_platform.sensors.rerun import build_rerun_sensor
from backfill_platform.settings import Settings


def build_automation_defs(settings: Settings, job, business_days: BusinessDays) -> dg.Definitions:
    return dg.Definitions(
        sensors=[build_rerun_sensor(settings, job, business_days), build_alert_sensor(settings, business_days)],
        schedules=[build_business_day_schedule(settings, job, business_days.partitions_def)],
        resources={"alerts": alert_notifier(settings)},
    )
