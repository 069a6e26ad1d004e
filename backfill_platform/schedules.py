"""``latest_business_day_schedule``: every business morning, materialize the latest completed
business day of ``destination_data`` (cron ``BACKFILL_SCHEDULE_CRON``, default 06:00 Monday-Friday,
in ``BACKFILL_SCHEDULE_TIMEZONE``, default America/New_York).

"Latest completed" is the last partition whose one-day window has closed at the scheduled time:
on a Monday that is Friday, after a holiday it is the business day before the holiday. The run key
is the partition key, so a date the schedule already requested (e.g. the morning after a weekday
holiday asks for the same date as the holiday morning) is not run twice.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from backfill_platform import tags
from backfill_platform.settings import Settings

SCHEDULE_NAME = "latest_business_day_schedule"


def latest_completed_business_day(partitions_def: dg.PartitionsDefinition, at: dt.datetime) -> str | None:
    with dg.partition_loading_context(at):
        return partitions_def.get_last_partition_key()


def build_business_day_schedule(
    settings: Settings, job, partitions_def: dg.PartitionsDefinition
) -> dg.ScheduleDefinition:
    default_status = (
        dg.DefaultScheduleStatus.RUNNING if settings.automation.running else dg.DefaultScheduleStatus.STOPPED
    )

    @dg.schedule(
        name=SCHEDULE_NAME,
        job=job,
        cron_schedule=settings.automation.schedule_cron,
        execution_timezone=settings.automation.schedule_timezone,
        default_status=default_status,
        description="Materialize the latest completed business day of destination_data every business morning.",
    )
    def latest_business_day_schedule(context: dg.ScheduleEvaluationContext):
        key = latest_completed_business_day(partitions_def, context.scheduled_execution_time)
        if key is None:
            return dg.SkipReason("no business day has completed yet")
        return dg.RunRequest(run_key=key, partition_key=key, tags={tags.REQUESTED_BY: SCHEDULE_NAME})

    return latest_business_day_schedule
