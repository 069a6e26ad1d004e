"""Sensors of the platform: ``rerun_failed_partitions`` (rerun.py) and ``alert_on_final_failure``
(alerts.py); ``failures.py`` holds what both need to agree on. ``automation(settings, job)`` returns
them with the business-day schedule and the ``alerts`` resource, for ``definitions.py``."""

from __future__ import annotations

from typing import Any

from backfill_platform.settings import Settings


def automation(settings: Settings, job) -> dict[str, Any]:
    from backfill_platform.schedules import build_business_day_schedule
    from backfill_platform.sensors.alerts import alert_notifier, build_alert_sensor
    from backfill_platform.sensors.rerun import build_rerun_sensor

    return {
        "sensors": [build_rerun_sensor(settings, job), build_alert_sensor(settings)],
        "schedules": [build_business_day_schedule(settings, job)],
        "resources": {"alerts": alert_notifier(settings)},
    }
