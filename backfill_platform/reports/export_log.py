"""``status --export-log``: the run history as the seed's ``backfill_log`` Delta table, so the seed's
own SQL ("Query Backfill Log", "Retry Analytics Queries", the retry notebook's failed-jobs query)
runs on it.

Columns, the seed's first and in its order (:data:`LOG_SCHEMA`), then four extra ones:

- one row per (run, business date) — a range run gives one row per date it processed — and one
  ``SKIPPED`` row per weekend / holiday inside a request's range (see :func:`skipped_rows`);
- ``status``: the seed's words: SUCCESS; FAILED (Dagster's FAILURE or CANCELED); STARTED (a run not
  finished: queued, starting, started, canceling); SKIPPED. Dagster's own word is ``dagster_status``;
- ``job_id``: the Databricks run id when the run's step went through Databricks (the step launcher
  logs each attempt's run id and run page; the last attempt's is used), else the Dagster job name
  (Dagster jobs have no numeric id); ``run_page_url``: that Databricks run page, else the run's
  page in the Dagster UI;
- ``backfill_job_id``: what requested the run: the Dagster backfill id (``dagster/backfill``), else
  the chunked launch id of ``backfill-platform backfill`` (``tags.LAUNCH_ID``), else the run id;
- ``creator_user_name``: the requester tag (``tags.REQUESTED_BY``: cli, schedule, the rerun sensor),
  else Dagster's ``dagster/user``;
- ``retry_metadata`` (VARIANT, built with ``parse_json``): NULL for a first try; for a retry the
  seed's fields (:func:`retry_metadata`);
- extra: ``attempt`` (history.py's attempt number), ``duration_s``, ``dagster_status``,
  ``backfill_id`` (the ``dagster/backfill`` tag).

Times are UTC (the Spark session's time zone is set to UTC; Python datetimes are passed with their
zone, so the machine's zone plays no part). Written with a Delta ``MERGE`` on
``(run_id, position_date)``: exporting twice updates rows in place, never duplicates. Dagster's
storage stays the source of truth; this table is a read-only copy. A table in the export's earlier
format (``retry_metadata`` a JSON string of tags) is refused with what to do (:class:`LogFormatError`).

The rows come from the Dagster instance (:func:`history_rows`); :func:`write_log` writes them with a
Spark session. Locally that is the command's own session and a path table; on the Databricks
deployment the command has no Spark session on the workspace, so the rows travel as JSON
(:func:`rows_to_json`) to a one-off run on the cluster (``resources/cluster_task.py``), where
:func:`export_request` writes them into the Unity Catalog table by name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from backfill_platform import tags as platform_tags
from backfill_platform.reports.history import (
    BACKFILL_TAG,
    NOT_BUSINESS,
    PARENT_RUN_TAG,
    RETRY_NUMBER_TAG,
    ROOT_RUN_TAG,
    History,
    RunAttempt,
)

SEED_COLUMNS = (
    "run_id string, position_date date, job_name string, job_id string, status string, "
    "start_time timestamp, end_time timestamp, backfill_job_id string, error_message string, "
    "creator_user_name string, run_page_url string, retry_metadata variant"
)
EXTRA_COLUMNS = "attempt int, duration_s double, dagster_status string, backfill_id string"
LOG_SCHEMA = f"{SEED_COLUMNS}, {EXTRA_COLUMNS}"
# what Python hands to Spark: retry_metadata as JSON text, parsed into a VARIANT by parse_json
ROWS_SCHEMA = LOG_SCHEMA.replace("retry_metadata variant", "retry_metadata_json string")

SUCCESS, FAILED, STARTED, SKIPPED = "SUCCESS", "FAILED", "STARTED", "SKIPPED"
USER_TAG = "dagster/user"
DAGSTER_RUN_RETRY, REEXECUTION, SENSOR = "dagster_run_retry", "re-execution", "sensor"

# BackfillDatabricksStepLauncher._log_attempt's message for each Databricks attempt
_DATABRICKS_ATTEMPT = re.compile(r"Databricks run (\d+) submitted, run page (\S+) \(idempotency token")


class LogFormatError(Exception):
    """The table exists in a format the export does not write into; the message says what to do."""


def seed_status(dagster_status: str) -> str:
    """Dagster's run status in the seed's words."""
    if dagster_status == "SUCCESS":
        return SUCCESS
    if dagster_status in ("FAILURE", "CANCELED"):
        return FAILED
    return STARTED  # NOT_STARTED, MANAGED, QUEUED, STARTING, STARTED, CANCELING


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(dt.timezone.utc)


def _parent(run: RunAttempt) -> str | None:
    """The run this one retries: Dagster's parent (run retries, re-executions), else the failed run
    the rerun sensor reran (a Dagster retry of a sensor rerun carries both: its parent is nearer)."""
    return run.tags.get(PARENT_RUN_TAG) or run.tags.get(platform_tags.RERUN_OF_RUN_ID)


def retry_trigger(run: RunAttempt) -> str:
    """What requested this retry: Dagster's run retries, a re-execution (UI, ``execute_job``,
    ``backfill-platform repair``), or a sensor (the rerun sensor: "rerun_failed_partitions sensor")."""
    if RETRY_NUMBER_TAG in run.tags:
        return DAGSTER_RUN_RETRY
    if PARENT_RUN_TAG in run.tags:
        return REEXECUTION
    return f"{run.tags.get(platform_tags.REQUESTED_BY, 'rerun_failed_partitions')} {SENSOR}"


def retry_metadata(run: RunAttempt, runs_by_id: Mapping[str, RunAttempt]) -> dict[str, Any] | None:
    """The seed's retry_metadata of ``run`` (None for a first try): ``is_retry``; ``original_run_id``,
    the first run of its retry chain (walking parents: Dagster's ``parent_run_id``, the rerun sensor's
    ``rerun_of_run_id``); ``retry_count``, its place in the chain (1 = the first retry); what
    triggered it; when (the run's creation, ISO 8601 UTC); and ``parent_run_id``, the run it retries.

    A parent outside ``runs_by_id`` ends the walk: the original run is then Dagster's
    ``root_run_id`` tag if any, else that parent, and the count continues from the run's own retry
    number tag (``dagster/retry_number`` or the sensor's ``rerun_attempt``)."""
    parent_id = _parent(run)
    if not parent_id:
        return None
    count, current, seen = 0, run, {run.run_id}
    while True:
        parent_id = _parent(current)
        if not parent_id or parent_id in seen:
            original = current.run_id
            break
        count += 1
        parent = runs_by_id.get(parent_id)
        if parent is None:
            original = current.tags.get(ROOT_RUN_TAG) or parent_id
            own = current.tags.get(RETRY_NUMBER_TAG) or current.tags.get(platform_tags.RERUN_ATTEMPT) or "1"
            count += int(own) - 1 if own.isdigit() else 0
            break
        seen.add(parent_id)
        current = parent
    created = _utc(run.created)
    return {
        "is_retry": True,
        "original_run_id": original,
        "retry_count": count,
        "retry_triggered_by": retry_trigger(run),
        "retry_triggered_at": created.replace(tzinfo=None).isoformat() + "Z",
        "parent_run_id": _parent(run),
    }


def request_id(run: RunAttempt) -> str:
    """What requested the run (``backfill_job_id``): its backfill, else its chunked launch, else itself."""
    return run.tags.get(BACKFILL_TAG) or run.tags.get(platform_tags.LAUNCH_ID) or run.run_id


def creator(run: RunAttempt) -> str | None:
    return run.tags.get(platform_tags.REQUESTED_BY) or run.tags.get(USER_TAG)


@dataclasses.dataclass(frozen=True)
class DatabricksRun:
    run_id: str  # the Databricks run id of the step's last attempt
    run_page_url: str


def databricks_runs(instance: Any, run_ids: Iterable[str]) -> dict[str, DatabricksRun]:
    """Dagster run id -> the Databricks run its step ran as (the last attempt), for the runs whose
    step went through the Databricks step launcher (its attempt messages are in the run's event log)."""
    found = {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id):
            match = _DATABRICKS_ATTEMPT.search(entry.user_message or "")
            if match:
                found[run_id] = DatabricksRun(match.group(1), match.group(2).rstrip(","))
    return found


def _run_rows(history: History, databricks: Mapping[str, DatabricksRun]) -> list[tuple[Any, ...]]:
    by_id = {run.run_id: run for run in history.runs}
    rows = []
    for day in history.days:
        for attempt in day.attempts:
            run = attempt.run
            remote = databricks.get(run.run_id)
            metadata = retry_metadata(run, by_id)
            rows.append((
                run.run_id,
                day.day,
                run.job_name,
                remote.run_id if remote else run.job_name,
                seed_status(run.status),
                _utc(run.start_time),
                _utc(run.end_time),
                request_id(run),
                (run.error or None) and run.error[:4000],
                creator(run),
                remote.run_page_url if remote else run.url,
                json.dumps(metadata, sort_keys=True) if metadata else None,
                attempt.number,
                run.duration_s,
                run.status,
                run.tags.get(BACKFILL_TAG),
            ))
    return rows


def skipped_rows(history: History) -> list[tuple[Any, ...]]:
    """The seed's orchestrator walked every calendar day of the range it was asked for and logged the
    weekends and holidays as SKIPPED. Here a request is a backfill, a chunked launch or a lone run
    (``backfill_job_id``), its range spans the first to the last date of its runs, and each weekend or
    holiday inside it (and inside the exported window) gets one row: ``run_id`` and ``backfill_job_id``
    are the request's id (no run processed the day), times are when the request's first run was
    created (when it was asked for), ``error_message`` is the calendar's reason ("weekend
    (Saturday)", "holiday: Independence Day")."""
    requests: dict[str, list[RunAttempt]] = {}
    for run in history.runs:
        requests.setdefault(request_id(run), []).append(run)
    closed = [day for day in history.days if day.state == NOT_BUSINESS]
    rows = []
    for request, runs in requests.items():
        keys = sorted(key for run in runs for key in run.partition_keys)
        first, last = dt.date.fromisoformat(keys[0]), dt.date.fromisoformat(keys[-1])
        earliest = min(runs, key=lambda run: run.created)
        asked = _utc(earliest.created)
        backfill = earliest.tags.get(BACKFILL_TAG)
        url = f"{history.ui_url.rstrip('/')}/runs/b/{backfill}" if backfill else earliest.url
        for day in closed:
            if first < day.day < last:
                rows.append((
                    request, day.day, earliest.job_name, earliest.job_name, SKIPPED, asked, asked, request,
                    day.reason, creator(earliest), url, None, None, None, None, backfill,
                ))
    return rows


def log_rows(history: History, databricks: Mapping[str, DatabricksRun] | None = None) -> list[tuple[Any, ...]]:
    """The table's rows (:data:`ROWS_SCHEMA`: retry_metadata as JSON text)."""
    return _run_rows(history, databricks or {}) + skipped_rows(history)


def _check_format(spark: Any, location: Any) -> None:
    """Refuse a table the export did not write in this format (the string retry_metadata of Dagster
    tags and Dagster's statuses of earlier versions): MERGE would fail on it or mix the two."""
    from pyspark.sql.types import StructType, VariantType

    fields = {field.name: field.dataType for field in location.read(spark).schema.fields}
    wanted = StructType.fromDDL(SEED_COLUMNS).fields
    missing = [field.name for field in wanted if field.name not in fields]
    if not missing and isinstance(fields["retry_metadata"], VariantType):
        return
    remedy = f"delete the directory {location.path}" if location.path else f"DROP TABLE {location.sql_name}"
    raise LogFormatError(
        f"{location} has the old backfill_log format (missing {', '.join(missing) or 'nothing'}; "
        f"retry_metadata is {fields.get('retry_metadata', 'absent')}, not VARIANT; statuses in Dagster's words). "
        f"It is a copy of Dagster's run storage, so nothing is lost: {remedy}, then run "
        "`backfill-platform status --export-log` again (without --from/--to it exports every run)."
    )


def history_rows(history: History, instance: Any = None) -> list[tuple[Any, ...]]:
    """:func:`log_rows` of ``history``; with the Dagster ``instance``, the Databricks runs of its runs' steps."""
    databricks = databricks_runs(instance, [run.run_id for run in history.runs]) if instance is not None else {}
    return log_rows(history, databricks)


def export_log(spark: Any, location: Any, history: History, instance: Any = None) -> dict[str, int]:
    """MERGE the history into the Delta table at ``location`` (a ``DeltaLocation``: a path, or a
    Unity Catalog / metastore name); create it first if needed. ``instance`` (optional): the Dagster
    instance, to find the Databricks runs of the history's runs. Returns rows in the history and rows
    in the table afterwards."""
    return write_log(spark, location, history_rows(history, instance))


def write_log(spark: Any, location: Any, rows: list[tuple[Any, ...]]) -> dict[str, int]:
    """MERGE ``rows`` (:data:`ROWS_SCHEMA`) into the table at ``location`` on (run_id, position_date),
    in a UTC session; create the table first if needed (Delta SQL: by path, or by a Unity Catalog name,
    which open-source Delta's ``DeltaTable.createIfNotExists(...).tableName`` cannot parse). A table of
    another format: :class:`LogFormatError`. Returns rows merged and rows in the table afterwards."""
    from pyspark.sql.types import StructType

    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    try:
        if location.exists(spark):
            _check_format(spark, location)
        else:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {location.sql_name} ({LOG_SCHEMA}) USING DELTA").collect()
        columns = [field.name for field in StructType.fromDDL(LOG_SCHEMA).fields]
        updates = spark.createDataFrame(rows, ROWS_SCHEMA).selectExpr(
            *[("parse_json(retry_metadata_json) AS retry_metadata" if c == "retry_metadata" else c) for c in columns]
        )
        (
            location.delta_table(spark).alias("log")
            .merge(updates.alias("u"), "log.run_id = u.run_id AND log.position_date = u.position_date")
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )
        return {"history_rows": len(rows), "table_rows": location.read(spark).count()}
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


# ------------------------------------------------------------ on the Databricks deployment's cluster

_FROM_JSON = {"date": dt.date.fromisoformat, "timestamp": dt.datetime.fromisoformat}


def rows_to_json(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as JSON values: dates and (UTC) times in ISO 8601, everything else as it is."""
    return [[v.isoformat() if isinstance(v, dt.date) else v for v in row] for row in rows]


def rows_from_json(rows: Iterable[list[Any]]) -> list[tuple[Any, ...]]:
    """The rows :func:`rows_to_json` wrote, as they were (times keep their UTC offset)."""
    kinds = [column.split()[1] for column in ROWS_SCHEMA.split(", ")]  # "name type" pairs: no Spark needed
    parse = [_FROM_JSON.get(kind) for kind in kinds]
    return [tuple(p(v) if p and v is not None else v for p, v in zip(parse, row, strict=True)) for row in rows]


def export_request(spark: Any, request: dict[str, Any]) -> dict[str, Any]:
    """On the cluster (``resources/cluster_task.py``): :func:`write_log` of ``request["rows"]`` (JSON,
    :func:`rows_to_json`) into the table ``request["table"]`` (its Unity Catalog name). The answer:
    the counts, or the :class:`LogFormatError` message."""
    from backfill_platform.resources.tables import DeltaLocation

    try:
        counts = write_log(spark, DeltaLocation(request["table"], None), rows_from_json(request["rows"]))
    except LogFormatError as error:
        return {"error": str(error)}
    return {"counts": counts}
