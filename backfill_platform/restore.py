"""Roll ``destination_data`` back to an earlier Delta version or timestamp (the seed's rollback).

Delta's ``RESTORE`` does the work (``DeltaTable.restoreToVersion``): it is one new commit, so the
restore itself can be undone by restoring the version before it. This module adds what a person
needs around it: the target is checked first (a bad version or timestamp changes nothing and says
which versions exist), and the report says what changed: versions, rows before/after, and every
business date whose content differs (rows per date before -> after), computed by time travel.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from backfill_platform.assets.tables_schema import POSITION_COLUMNS, POSITION_DATE
from backfill_platform.resources.tables import DeltaLocation


class RestoreError(ValueError):
    """The restore cannot be done as asked; nothing was changed. The message says what to do."""


@dataclasses.dataclass(frozen=True)
class DateChange:
    day: str
    rows_before: int
    rows_after: int


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    table: str
    version_before: int
    restored_to: int  # the version whose content the table now has
    version_after: int | None  # the new commit (None on a dry run)
    rows_before: int
    rows_after: int
    changed_dates: list[DateChange]
    dry_run: bool

    def lines(self) -> list[str]:
        verb = "Would restore" if self.dry_run else "Restored"
        out = [
            f"{verb} {self.table} to the content of version {self.restored_to} "
            f"(was version {self.version_before}"
            + (f", now version {self.version_after})" if self.version_after is not None else ")"),
            f"  rows before: {self.rows_before}",
            f"  rows after:  {self.rows_after}",
            f"  dates affected: {len(self.changed_dates)}",
        ]
        out += [f"    {c.day}: {c.rows_before} -> {c.rows_after} rows" for c in self.changed_dates]
        if not self.dry_run:
            out.append(f"Undo with: backfill-platform restore --version {self.version_before}")
        return out


def _history(spark, location: DeltaLocation) -> list[tuple[int, dt.datetime]]:
    rows = location.delta_table(spark).history().select("version", "timestamp").collect()
    return sorted((int(row[0]), row[1]) for row in rows)


def resolve_version(history: list[tuple[int, dt.datetime]], version: int | None, timestamp: str | None) -> int:
    available = ", ".join(f"{v} ({t:%Y-%m-%d %H:%M:%S})" for v, t in history[-10:])
    if version is not None:
        if version not in {v for v, _ in history}:
            raise RestoreError(
                f"Version {version} is not in the table's history. Latest versions: {available}."
            )
        return version
    try:
        when = dt.datetime.fromisoformat(str(timestamp).strip())
    except ValueError:
        raise RestoreError(
            f"--timestamp {timestamp!r} is not a timestamp: use e.g. 2025-11-20T14:30:00 (local time of the "
            "Spark session, UTC here) or 2025-11-20."
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    candidates = [v for v, t in history if t <= when]
    if not candidates:
        raise RestoreError(f"The table did not exist yet at {when}. Versions: {available}.")
    return candidates[-1]


def _rows_per_date(frame) -> dict[str, tuple[int, int]]:
    from pyspark.sql import functions as F

    # order-independent content fingerprint; pmod keeps the sum far from overflow (ANSI mode)
    fingerprint = F.pmod(F.xxhash64(*(F.col(c) for c in POSITION_COLUMNS)), F.lit(2_147_483_647))
    rows = frame.groupBy(POSITION_DATE).agg(F.count("*"), F.sum(fingerprint)).collect()
    return {row[0].isoformat(): (int(row[1]), int(row[2] or 0)) for row in rows}


def restore_destination(
    spark, location: DeltaLocation, *, version: int | None = None, timestamp: str | None = None, dry_run: bool = False
) -> RestoreReport:
    if (version is None) == (timestamp is None):
        raise RestoreError("Give exactly one of --version N or --timestamp T.")
    if not location.exists(spark):
        raise RestoreError(f"{location} is not a Delta table yet: there is nothing to restore.")
    history = _history(spark, location)
    current = history[-1][0]
    target = resolve_version(history, version, timestamp)
    if target == current:
        raise RestoreError(f"{location} is already at version {current}: nothing to restore.")

    reader = spark.read.format("delta")
    before = _rows_per_date(location.read(spark))
    if location.path:
        target_frame = reader.option("versionAsOf", target).load(location.path)
    else:
        target_frame = spark.sql(f"SELECT * FROM {location.name} VERSION AS OF {int(target)}")
    after = _rows_per_date(target_frame)
    changed = [
        DateChange(day, before.get(day, (0, 0))[0], after.get(day, (0, 0))[0])
        for day in sorted(set(before) | set(after))
        if before.get(day) != after.get(day)
    ]
    version_after = None
    if not dry_run:
        location.delta_table(spark).restoreToVersion(target)
        version_after = location.latest_version(spark)
    return RestoreReport(
        table=str(location),
        version_before=current,
        restored_to=target,
        version_after=version_after,
        rows_before=sum(n for n, _ in before.values()),
        rows_after=sum(n for n, _ in after.values()),
        changed_dates=changed,
        dry_run=dry_run,
    )
