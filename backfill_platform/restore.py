"""Roll ``destination_data`` back to an earlier Delta version or timestamp, whole or for some dates.

Two ways (both one new Delta commit, so a restore can itself be undone by restoring the version
before it):

- the whole table: Delta's ``RESTORE TABLE ... TO VERSION AS OF n``;
- some business dates (``dates=``): the rows of exactly those dates as they were at version n (time
  travel, ``VERSION AS OF n``) replace those dates now (``replaceWhere position_date IN (...)``); a date
  without rows at version n is emptied, every other date stays as it is.

Everything here is Delta SQL or DataFrame calls, never Delta's Python ``DeltaTable`` API, so it runs
on a classic session and on a Spark Connect session (``BACKFILL_SPARK_REMOTE``) alike. On the
Databricks deployment it runs on the cluster, by table name (:func:`restore_request`, ``cli/restore.py``).

Commit times are compared as epoch milliseconds (``unix_millis(timestamp)`` in SQL): collecting
``DESCRIBE HISTORY``'s ``timestamp`` column would give naive datetimes in the Python process's local
zone, which picked the wrong version on any machine not on UTC. A ``--timestamp`` without an offset
is UTC.

The target is checked first (a bad version or timestamp changes nothing and says which versions
exist), and the report says what changed: versions, rows before/after, and every business date whose
content differs (rows per date before -> after), computed by time travel.

:func:`plan_restore` says what a restore changes (a dry run), :func:`commit_restore` does it.
Dagster is told too (:func:`plan_dagster_update`, :func:`apply_dagster_update`), so ``status``,
``plan``, ``backfill --reprocess missing`` and the UI agree with the table after a restore; and
:func:`destination_work_in_flight` finds the runs and backfills that would overwrite a restore.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Collection, Iterator, Sequence

import dagster as dg

from backfill_platform.assets.tables_schema import POSITION_COLUMNS, POSITION_DATE
from backfill_platform.partitions import BusinessDays
from backfill_platform.reports.history import pending_backfill_keys
from backfill_platform.resources.tables import DeltaLocation
from backfill_platform.sensors.failures import targets_destination
from backfill_platform.tags import DESTINATION, partition_range

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class RestoreError(ValueError):
    """The restore cannot be done as asked; nothing was changed. The message says what to do."""


# ------------------------------------------------------------------------------ target version


@dataclasses.dataclass(frozen=True, order=True)
class Commit:
    version: int
    time: dt.datetime  # the commit's instant, timezone-aware UTC

    def label(self) -> str:
        return f"{self.version} ({self.time.isoformat(timespec='seconds')})"


@dataclasses.dataclass(frozen=True)
class Target:
    version: int
    instant: dt.datetime | None = None  # the --timestamp, as the UTC instant it was compared at
    committed: dt.datetime | None = None  # when the chosen version was committed (for --timestamp)

    def line(self) -> str | None:
        if self.instant is None:
            return None
        return (
            f"Version current at {self.instant.isoformat()}: {self.version} "
            f"(committed {self.committed.isoformat(timespec='milliseconds')})"
        )


def table_history(spark, location: DeltaLocation) -> list[Commit]:
    """Every version of the table with its commit instant, oldest first. The instants are read as
    epoch milliseconds in SQL, so neither the session's nor the Python process's zone applies."""
    rows = (
        spark.sql(f"DESCRIBE HISTORY {location.sql_name}")
        .selectExpr("version", "unix_millis(timestamp) AS millis")
        .collect()
    )
    return sorted(Commit(int(row[0]), EPOCH + dt.timedelta(milliseconds=int(row[1]))) for row in rows)


def parse_instant(timestamp: str) -> dt.datetime:
    """``--timestamp`` as a UTC instant: ISO 8601, with an offset (``+01:00``, ``Z``) or without one
    (then it is UTC); a bare date is its midnight UTC."""
    try:
        when = dt.datetime.fromisoformat(str(timestamp).strip())
    except ValueError:
        raise RestoreError(
            f"--timestamp {timestamp!r} is not a timestamp: use e.g. 2025-11-20T14:30:00+00:00 (without an "
            "offset it is taken as UTC) or 2025-11-20 (midnight UTC)."
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def resolve_target(history: Sequence[Commit], version: int | None, timestamp: str | None) -> Target:
    """The version to restore: ``version`` itself, or the latest version committed at or before
    ``timestamp`` (what Delta's ``TIMESTAMP AS OF`` reads)."""
    available = ", ".join(commit.label() for commit in history[-10:])
    if version is not None:
        if version not in {commit.version for commit in history}:
            raise RestoreError(f"Version {version} is not in the table's history. Latest versions: {available}.")
        return Target(version)
    instant = parse_instant(timestamp)
    candidates = [commit for commit in history if commit.time <= instant]
    if not candidates:
        raise RestoreError(
            f"The table did not exist yet at {instant.isoformat()}. Versions (UTC): {available}."
        )
    return Target(candidates[-1].version, instant, candidates[-1].time)


# ------------------------------------------------------------------------------------ restore


@dataclasses.dataclass(frozen=True)
class DateChange:
    day: str
    rows_before: int
    rows_after: int


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    table: str
    version_before: int
    target: Target
    version_after: int | None  # the new commit (None on a dry run)
    rows_before: int  # the whole table's, or the chosen dates'
    rows_after: int
    changed_dates: list[DateChange]
    dry_run: bool
    dates: tuple[str, ...] | None = None  # the business dates restored; None: the whole table

    @property
    def restored_to(self) -> int:
        """The version whose content the table (or the chosen dates) now has."""
        return self.target.version

    @property
    def emptied_dates(self) -> list[str]:
        return [change.day for change in self.changed_dates if change.rows_after == 0]

    def lines(self) -> list[str]:
        verb = "Would restore" if self.dry_run else "Restored"
        what = (
            self.table
            if self.dates is None
            else f"{len(self.dates)} business date(s) {self.dates[0]}..{self.dates[-1]} of {self.table}"
        )
        out = [line for line in [self.target.line()] if line]
        out += [
            f"{verb} {what} to the content of version {self.restored_to} "
            f"(was version {self.version_before}"
            + (f", now version {self.version_after})" if self.version_after is not None else ")"),
            f"  rows before: {self.rows_before}",
            f"  rows after:  {self.rows_after}",
            f"  dates affected: {len(self.changed_dates)}",
        ]
        out += [f"    {c.day}: {c.rows_before} -> {c.rows_after} rows" for c in self.changed_dates]
        if self.dates is not None:
            out.append("  every other date is unchanged")
        if not self.dry_run:
            scope = "" if self.dates is None else f"--from {self.dates[0]} --to {self.dates[-1]} "
            out.append(f"Undo with: backfill-platform restore {scope}--version {self.version_before}")
        return out


def _rows_per_date(frame) -> dict[str, tuple[int, int]]:
    from pyspark.sql import functions as F

    # order-independent content fingerprint; pmod keeps the sum far from overflow (ANSI mode)
    fingerprint = F.pmod(F.xxhash64(*(F.col(c) for c in POSITION_COLUMNS)), F.lit(2_147_483_647))
    rows = frame.groupBy(POSITION_DATE).agg(F.count("*"), F.sum(fingerprint)).collect()
    return {row[0].isoformat(): (int(row[1]), int(row[2] or 0)) for row in rows}


def _only_dates(frame, dates: Collection[str] | None):
    from pyspark.sql import functions as F

    if dates is None:
        return frame
    return frame.where(F.col(POSITION_DATE).isin([dt.date.fromisoformat(day) for day in dates]))


def plan_restore(
    spark,
    location: DeltaLocation,
    *,
    version: int | None = None,
    timestamp: str | None = None,
    dates: Sequence[str] | None = None,
) -> RestoreReport:
    """What restoring the whole table (``dates=None``) or exactly the business-date keys ``dates`` to
    their content at ``version`` (or at the version current at ``timestamp``) changes; changes nothing
    (a dry run's report). :func:`commit_restore` then does it."""
    if (version is None) == (timestamp is None):
        raise RestoreError("Give exactly one of --version N or --timestamp T.")
    if dates is not None and not dates:
        raise RestoreError("No business date to restore: give --from and --to around at least one business day.")
    if not location.exists(spark):
        raise RestoreError(f"{location} is not a Delta table yet: there is nothing to restore.")
    history = table_history(spark, location)
    current = history[-1].version
    target = resolve_target(history, version, timestamp)
    if dates is None and target.version == current:
        raise RestoreError(f"{location} is already at version {current}: nothing to restore.")

    before = _rows_per_date(_only_dates(location.read(spark), dates))
    with _explained_time_travel_errors(history, target.version):
        after = _rows_per_date(_only_dates(_at_version(spark, location, target.version), dates))
    changed = [
        DateChange(day, before.get(day, (0, 0))[0], after.get(day, (0, 0))[0])
        for day in sorted(set(before) | set(after))
        if before.get(day) != after.get(day)
    ]
    if dates is not None and not changed:
        raise RestoreError(
            f"Business dates {dates[0]}..{dates[-1]} already have their content of version {target.version}: "
            "nothing to restore."
        )
    return RestoreReport(
        table=str(location),
        version_before=current,
        target=target,
        version_after=None,
        rows_before=sum(n for n, _ in before.values()),
        rows_after=sum(n for n, _ in after.values()),
        changed_dates=changed,
        dry_run=True,
        dates=None if dates is None else tuple(dates),
    )


def commit_restore(spark, location: DeltaLocation, planned: RestoreReport) -> RestoreReport:
    """Do the restore ``planned`` describes, in one Delta commit: Delta's RESTORE for the whole table,
    else one ``replaceWhere`` overwrite of exactly its dates with their rows at the target version."""
    version = int(planned.restored_to)
    if planned.dates is None:
        with location.exclusive_commit():
            spark.sql(f"RESTORE TABLE {location.sql_name} TO VERSION AS OF {version}").collect()
    else:
        # Reading version n of the table while overwriting it is safe: Delta only marks the replaced
        # files removed. Dates without rows at version n end up empty.
        rows = _only_dates(_at_version(spark, location, version), planned.dates)
        predicate = f"{POSITION_DATE} IN ({', '.join(repr(day) for day in planned.dates)})"
        location.save(rows.write.format("delta").mode("overwrite").option("replaceWhere", predicate))
    return dataclasses.replace(planned, dry_run=False, version_after=location.latest_version(spark))


def _at_version(spark, location: DeltaLocation, version: int):
    """The table's rows (the declared columns) at ``version``, by time travel."""
    columns = ", ".join(POSITION_COLUMNS)
    return spark.sql(f"SELECT {columns} FROM {location.sql_name} VERSION AS OF {int(version)}")


@contextlib.contextmanager
def _explained_time_travel_errors(history: Sequence[Commit], version: int) -> Iterator[None]:
    """Delta refuses to read a version older than the table keeps removed files: say so, and what to do."""
    from pyspark.errors import AnalysisException

    try:
        yield
    except AnalysisException as error:
        if "TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION" not in str(error):
            raise
        committed = next(commit.time for commit in history if commit.version == version)
        raise RestoreError(
            f"Version {version} was committed at {committed.isoformat(timespec='seconds')}, longer ago than the "
            "table keeps removed data files (delta.deletedFileRetentionDuration, 7 days by default), so Delta "
            "refuses to read it. Choose a newer version; to keep older versions restorable, raise "
            "delta.deletedFileRetentionDuration (ALTER TABLE ... SET TBLPROPERTIES) before you need them."
        ) from None


# ------------------------------------------------------------------- on a Databricks cluster


def report_to_json(report: RestoreReport) -> dict:
    data = dataclasses.asdict(report)
    data["target"] = {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in data["target"].items()}
    return data


def report_from_json(data: dict) -> RestoreReport:
    target = {k: dt.datetime.fromisoformat(v) if k != "version" and v else v for k, v in data["target"].items()}
    return RestoreReport(**{
        **data, "target": Target(**target), "changed_dates": [DateChange(**c) for c in data["changed_dates"]],
        "dates": None if data["dates"] is None else tuple(data["dates"]),
    })


def restore_request(spark, request: dict) -> dict:
    """One step of a restore on the Databricks deployment, run on the cluster (``cli/restore.py``
    submits it): ``plan`` (:func:`plan_restore`) or ``commit`` (:func:`commit_restore` of the plan) for
    the table ``request["table"]`` (its Unity Catalog name); the answer is JSON (report or error)."""
    location = DeltaLocation(request["table"], request.get("path"))
    try:
        if request["action"] == "plan":
            report = plan_restore(spark, location, version=request.get("version"),
                                  timestamp=request.get("timestamp"), dates=request.get("dates"))
        else:
            report = commit_restore(spark, location, report_from_json(request["planned"]))
    except RestoreError as error:
        return {"error": str(error)}
    return {"report": report_to_json(report)}


# --------------------------------------------------------------------------------- Dagster side

IN_FLIGHT_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,  # still running until its worker stops: it can still commit
)


@dataclasses.dataclass(frozen=True)
class WorkInFlight:
    """destination_data work that would overwrite a restore: unfinished runs, and dates that running
    backfills have not launched runs for yet."""

    runs: tuple[dg.DagsterRun, ...]
    backfill_dates: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.runs or self.backfill_dates)

    def lines(self) -> list[str]:
        out = [f"  run {run.run_id} ({run.status.value}, {_run_scope(run)})" for run in self.runs]
        if self.backfill_dates:
            out.append(
                f"  backfill(s) in progress still to launch runs for {len(self.backfill_dates)} date(s) "
                f"{self.backfill_dates[0]}..{self.backfill_dates[-1]} (UI: Overview > Backfills)"
            )
        return out


def _run_scope(run: dg.DagsterRun) -> str:
    span = partition_range(run.tags)
    if span is None:
        return "all dates"
    return span[0] if span[0] == span[1] else f"{span[0]}..{span[1]}"


def destination_work_in_flight(
    instance: dg.DagsterInstance, business_days: BusinessDays, dates: Collection[str] | None = None
) -> WorkInFlight:
    """Unfinished runs of destination_data (that touch ``dates``, if given; a run without partition
    tags touches every date), and the dates (of ``dates``) a running backfill will still launch."""
    wanted = None if dates is None else set(dates)
    runs = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=list(IN_FLIGHT_STATUSES))):
        run = record.dagster_run
        if not targets_destination(run, instance):
            continue
        keys = set(business_days.run_keys(run.tags))
        if wanted is not None and keys and not keys & wanted:
            continue
        runs.append(run)
    pending = pending_backfill_keys(instance)
    pending = pending if wanted is None else pending & wanted
    return WorkInFlight(tuple(sorted(runs, key=lambda run: run.run_id)), tuple(sorted(pending)))


@dataclasses.dataclass(frozen=True)
class DagsterUpdate:
    """How Dagster learns about a restore, per date.

    - ``materialized``: dates whose rows changed and that still have rows: a runless materialization
      (metadata ``restored_from_version``, ``delta_version``, ``rows``), so the UI's latest
      materialization of the date is the restore and the date counts as materialized;
    - ``missing``: dates left without rows that Dagster shows as materialized. Dagster's open-source
      event storage cannot forget one partition (``wipe_asset_partitions`` raises
      ``NotImplementedError`` there), so the asset's partition status is wiped (``wipe_assets``, public)
      and rebuilt: ``rerecorded`` are the dates that Dagster showed as materialized and that still
      have rows, recorded again with a runless materialization. Then the emptied dates are missing
      again, and ``backfill --reprocess missing``, ``plan`` and the UI refill them. The rebuilt status
      also forgets which dates unfinished runs are writing (their planned events predate the wipe), so
      the CLI does not rebuild it while any destination_data run is in flight (unless ``--force``).
    """

    materialized: tuple[str, ...]
    missing: tuple[str, ...]
    rerecorded: tuple[str, ...]

    @property
    def wipes(self) -> bool:
        return bool(self.missing)

    def lines(self, dry_run: bool) -> list[str]:
        will = "would" if dry_run else "now"
        out = [f"Dagster ({will}): {len(self.materialized)} date(s) materialized from the restore"
               + (f", {len(self.missing)} date(s) missing" if self.missing else "")]
        if self.missing:
            out.append(f"  missing again (no rows after the restore): {', '.join(self.missing)}")
            out.append(
                f"  destination_data's partition status was rebuilt to forget them: {len(self.rerecorded)} "
                "unchanged materialized date(s) re-recorded; its earlier materialization events and failed "
                "states no longer count (runs and their logs stay)"
            )
        return out


def plan_dagster_update(
    instance: dg.DagsterInstance, partitions_def: dg.PartitionsDefinition, report: RestoreReport
) -> DagsterUpdate:
    keys = partitions_def.get_partition_keys()
    valid = set(keys)
    changed = {change.day: change for change in report.changed_dates if change.day in valid}
    materialized = tuple(day for day, change in sorted(changed.items()) if change.rows_after > 0)
    statuses = instance.get_status_by_partition(DESTINATION, keys, partitions_def) or {}
    missing = tuple(
        day for day in sorted(changed)
        if changed[day].rows_after == 0 and statuses.get(day) == dg.AssetPartitionStatus.MATERIALIZED
    )
    rerecorded: tuple[str, ...] = ()
    if missing:
        # what the wipe would forget and must be recorded again: every date materialized before (also
        # those a run is rewriting now, which show as in progress) that the restore leaves unchanged;
        # failed dates cannot be recorded as failed again and become missing
        ever = _materialized_partitions(instance)
        rerecorded = tuple(
            key for key in keys
            if key in ever and key not in changed and statuses.get(key) != dg.AssetPartitionStatus.FAILED
        )
    return DagsterUpdate(materialized, missing, rerecorded)


def _materialized_partitions(instance: dg.DagsterInstance) -> set[str]:
    partitions: set[str] = set()
    records_filter = dg.AssetRecordsFilter(asset_key=DESTINATION)
    cursor = None
    while True:
        result = instance.fetch_materializations(records_filter, limit=1000, cursor=cursor)
        partitions |= {record.partition_key for record in result.records if record.partition_key}
        if not result.has_more:
            return partitions
        cursor = result.cursor


def apply_dagster_update(instance: dg.DagsterInstance, update: DagsterUpdate, report: RestoreReport) -> None:
    """Record ``update`` (see :class:`DagsterUpdate`) for the restore of ``report``."""
    rows_after = {change.day: change.rows_after for change in report.changed_dates}
    how = f"backfill-platform restore of {report.table} to the content of version {report.restored_to}"

    def record(day: str, description: str, **metadata) -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=DESTINATION, partition=day, description=description,
            metadata={"delta_version": report.version_after, **metadata},
        ))

    if update.wipes:
        instance.wipe_assets([DESTINATION])
        for day in update.rerecorded:
            record(day, f"Unchanged by the {how}; recorded again after it rebuilt the partition status.",
                   unchanged_by_restore=True)
    for day in update.materialized:
        record(day, f"Rolled back by the {how}.", restored_from_version=report.restored_to, rows=rows_after[day])
