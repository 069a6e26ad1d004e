"""Small helpers shared by tests: materialize through a real (test) Dagster instance and read
the Delta tables back."""

from __future__ import annotations

import email
from collections.abc import Sequence

import dagster as dg

from backfill_platform.assets import build_assets
from backfill_platform.definitions import build_defs
from backfill_platform.partitions import BusinessDays
from backfill_platform.settings import RetrySettings, Settings
from backfill_platform.tags import CALENDAR, DESTINATION, RANGE_END, RANGE_START, SOURCE

# What the tests materialize in-process: the product's definitions with step retries after 0.2 s
# (the product waits 60 s, 180 s, 420 s). Subprocesses get the same through the environment
# (conftest.py). Resources are passed to each materialization explicitly.
TEST_SETTINGS = Settings(retries=RetrySettings(step_retry_delay_seconds=0.2))
TEST_DEFS = build_defs(TEST_SETTINGS)
BUSINESS_DAYS: BusinessDays = BusinessDays.from_settings(TEST_SETTINGS.calendar)
# The assets without resources (each test passes its own); resolve_assets_def would bind the defs'.
_ASSETS = {asset.key: asset for asset in build_assets(TEST_SETTINGS, BUSINESS_DAYS)}
business_calendar, source_data, destination_data = _ASSETS[CALENDAR], _ASSETS[SOURCE], _ASSETS[DESTINATION]


def seed_source(resources, instance=None, **source_config) -> dg.ExecuteInJobResult:
    config = {"ops": {"source_data": {"config": source_config}}} if source_config else None
    result = dg.materialize([source_data], resources=resources, instance=instance, run_config=config)
    assert result.success
    return result


def materialize_destination(resources, first: str, last: str | None = None, instance=None, raise_on_error=True):
    """One run of destination_data over the partition range [first, last] (a single key if no last)."""
    tags = {RANGE_START: first, RANGE_END: last or first}
    return dg.materialize(
        [destination_data],
        resources=resources,
        instance=instance,
        tags=tags,
        raise_on_error=raise_on_error,
    )


def rows_per_date(spark, location) -> dict[str, int]:
    frame = location.read(spark)
    return {str(row[0]): int(row[1]) for row in frame.groupBy("position_date").count().collect()}


def table_rows(spark, location) -> list[tuple]:
    return sorted(tuple(row) for row in location.read(spark).collect())


def delta_version(spark, location) -> int | None:
    return location.latest_version(spark) if location.exists(spark) else None


class SmtpSink:
    """An aiosmtpd handler that keeps what it receives (a real SMTP server: :func:`smtp_server`)."""

    def __init__(self):
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def smtp_server(sink: SmtpSink, port: int, **kwargs):
    """A started aiosmtpd server on 127.0.0.1:port (stop it with ``.stop()``)."""
    from aiosmtpd.controller import Controller

    controller = Controller(sink, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller


__all__: Sequence[str] = [
    "BUSINESS_DAYS",
    "SmtpSink",
    "TEST_DEFS",
    "TEST_SETTINGS",
    "business_calendar",
    "destination_data",
    "source_data",
    "delta_version",
    "materialize_destination",
    "rows_per_date",
    "seed_source",
    "smtp_server",
    "table_rows",
]
