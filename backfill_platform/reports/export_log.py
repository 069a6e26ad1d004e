"""``status --export-log``: the run history as the seed's ``backfill_log`` Delta table, for SQL users.

One row per (run, position date) — a range run gives one row per business date it processed —
with the seed's columns (``job_id``/``backfill_job_id``/``creator_user_name`` become the Dagster
backfill id and the requester tag). Written with a Delta ``MERGE`` on ``(run_id, position_date)``:
exporting twice updates rows in place (a run that finished since is updated), never duplicates.
Dagster's storage stays the source of truth; this table is a read-only copy.
"""

from __future__ import annotations

import json
from typing import Any

from backfill_platform import tags as platform_tags
from backfill_platform.reports.history import BACKFILL_TAG, History

LOG_SCHEMA = (
    "run_id string, position_date date, job_name string, status string, start_time timestamp, "
    "end_time timestamp, duration_s double, attempt int, error_message string, retry_metadata string, "
    "backfill_id string, requested_by string, run_page_url string"
)


def log_rows(history: History) -> list[tuple[Any, ...]]:
    rows = []
    for day in history.days:
        for attempt in day.attempts:
            run = attempt.run
            lineage = run.lineage()
            rows.append((
                run.run_id,
                day.day,
                run.job_name,
                run.status,
                run.start_time.replace(tzinfo=None) if run.start_time else None,
                run.end_time.replace(tzinfo=None) if run.end_time else None,
                run.duration_s,
                attempt.number,
                (run.error or None) and run.error[:4000],
                json.dumps(lineage, sort_keys=True) if lineage else None,
                run.tags.get(BACKFILL_TAG),
                run.tags.get(platform_tags.REQUESTED_BY),
                run.url,
            ))
    return rows


def export_log(spark: Any, location: Any, history: History) -> dict[str, int]:
    """MERGE the history into the Delta table at ``location`` (a ``DeltaLocation``); create it first if
    needed. Returns rows in the history and rows in the table afterwards."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import StructType

    # Timestamps are naive UTC: make Spark read them as UTC whatever the machine's zone.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    rows = log_rows(history)
    if not location.exists(spark):
        builder = DeltaTable.createIfNotExists(spark).addColumns(StructType.fromDDL(LOG_SCHEMA))
        location.builder_target(builder).execute()
    updates = spark.createDataFrame(rows, LOG_SCHEMA)
    (
        location.delta_table(spark).alias("log")
        .merge(updates.alias("u"), "log.run_id = u.run_id AND log.position_date = u.position_date")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    return {"history_rows": len(rows), "table_rows": location.read(spark).count()}
