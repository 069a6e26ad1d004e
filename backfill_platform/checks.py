"""Data quality of ``destination_data`` after the write: its asset checks (the expectations and data
gates before the write are in ``expectations.py``).

**Asset checks** run inside the same step right after every materialization (they are declared as
``check_specs`` of the asset, so the Dagster UI shows them on the asset's Checks tab and next to each
materialization):

- ``rows_match_source`` — destination rows per date == source rows for that date (minus the rows a
  ``drop`` expectation removed, which the metadata lists);
- ``schema_matches_declaration`` — the destination's columns and types are exactly ``POSITION_COLUMNS``;
- ``unique_position_date_id`` — no duplicate ``(position_date, id)`` in the run's dates;
- ``no_null_keys`` — no NULL ``position_date`` (whole table) or ``id`` (run's dates);
- ``business_days_complete`` — every business day between the first and last date in the table is
  present (severity WARN: a gap is a backfill still to run, not corrupt data).

The four ERROR-severity checks are *blocking*: a failure fails the step after the materialization is
recorded (the data is written by then: the table shows what happened), as a logic error that names
the dates it is about, or none when the whole table is wrong (schema, a NULL ``position_date``).
See :func:`blocking_check_failure` for why the asset raises this itself.

Every function here takes Spark DataFrames and returns plain results, so tests can feed crafted data.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import dagster as dg

from backfill_platform.expectations import (
    POSITION_DATE,
    UNIQUE_KEYS,
    DataQualityFailure,
    ExpectationOutcome,
    duplicate_keys,
    listed,
)

CHECK_ROWS = "rows_match_source"
CHECK_SCHEMA = "schema_matches_declaration"
CHECK_UNIQUE = UNIQUE_KEYS
CHECK_NULLS = "no_null_keys"
CHECK_COMPLETE = "business_days_complete"
# The ERROR-severity checks: a failure fails the run (blocking_check_failure). business_days_complete
# is WARN: a gap is a backfill still to run.
BLOCKING_CHECKS = frozenset({CHECK_ROWS, CHECK_SCHEMA, CHECK_UNIQUE, CHECK_NULLS})
FAILED_DATES = "failed_dates"  # check metadata: the run's dates a failed check is about (absent: table-wide)


def destination_check_specs(asset_key: str = "destination_data") -> list[dg.AssetCheckSpec]:
    key = dg.AssetKey(asset_key)
    descriptions = {
        CHECK_ROWS: "destination rows per date == source rows for that date (minus rows dropped by expectations)",
        CHECK_SCHEMA: "columns and types are exactly the declared schema",
        CHECK_UNIQUE: "(position_date, id) is unique",
        CHECK_NULLS: "no NULL in the key columns position_date, id",
        CHECK_COMPLETE: "every business day between the table's first and last date is present",
    }
    return [
        dg.AssetCheckSpec(name, asset=key, description=description, blocking=name in BLOCKING_CHECKS)
        for name, description in descriptions.items()
    ]


def _in_dates(frame: Any, dates: Iterable[dt.date]) -> Any:
    from pyspark.sql import functions as F

    return frame.where(F.col(POSITION_DATE).isin(list(dates)))


def profile_dates(destination: Any, dates: Sequence[dt.date]) -> dict[str, tuple[int, int, int]]:
    """date -> (rows, non-NULL ids, distinct ids) for the run's dates: ONE Spark aggregation that
    the rows, uniqueness and NULL-id checks share."""
    from pyspark.sql import functions as F

    rows = (
        _in_dates(destination, dates)
        .groupBy(F.col(POSITION_DATE).cast("string"))
        .agg(F.count(F.lit(1)), F.count("id"), F.countDistinct("id"))
        .collect()
    )
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def present_dates(destination: Any) -> tuple[set[str], bool]:
    """(dates present in the whole table, whether a NULL position_date exists).

    From Delta's metadata when the table is partitioned by date: the snapshot's file list
    (``inputFiles``, no data read) names each file's ``position_date=`` directory, so a run's checks
    cost the same on a table of 60 dates or of 10 years (``bench/table_size.py`` measures it). Any
    other layout, or a frame that is not a Delta table (tests' crafted data), takes ONE Spark job:
    a DISTINCT over the column."""
    from_files = _partition_dates(destination.inputFiles())
    if from_files is not None:
        return from_files
    values = [row[0] for row in destination.select(POSITION_DATE).distinct().collect()]
    return {str(v) for v in values if v is not None}, any(v is None for v in values)


_PARTITION_DIR = re.compile(rf"/{POSITION_DATE}=([^/]+)/[^/]+$")
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def _partition_dates(files: Sequence[str]) -> tuple[set[str], bool] | None:
    """The dates in ``position_date=`` directories of ``files``; None when there are no files or one
    file is outside such a directory (not partitioned by date, or Databricks' random file prefixes)."""
    if not files:
        return None
    dates: set[str] = set()
    for path in files:
        found = _PARTITION_DIR.search(path)
        if found is None:
            return None
        dates.add(unquote(found.group(1)))
    has_null = _NULL_PARTITION in dates
    dates.discard(_NULL_PARTITION)
    return dates, has_null


def check_rows_match(
    destination: Any,
    dates: Sequence[dt.date],
    expected_rows_per_date: Mapping[str, int],
    dropped_rows: int = 0,
    profile: Mapping[str, tuple[int, int, int]] | None = None,
) -> dg.AssetCheckResult:
    profile = profile_dates(destination, dates) if profile is None else profile
    counts = {day: values[0] for day, values in profile.items()}
    mismatches = {
        day.isoformat(): {
            "expected": expected_rows_per_date.get(day.isoformat(), 0),
            "found": counts.get(day.isoformat(), 0),
        }
        for day in dates
        if counts.get(day.isoformat(), 0) != expected_rows_per_date.get(day.isoformat(), 0)
    }
    return dg.AssetCheckResult(
        check_name=CHECK_ROWS,
        passed=not mismatches,
        metadata={
            "dates_checked": len(dates),
            "rows_found": sum(counts.values()),
            "rows_expected": sum(expected_rows_per_date.get(d.isoformat(), 0) for d in dates),
            "rows_dropped_by_expectations": dropped_rows,
            "mismatches": dg.MetadataValue.json(mismatches),
            FAILED_DATES: dg.MetadataValue.json(sorted(mismatches)),
        },
        description=None if not mismatches else f"{len(mismatches)} date(s) differ from the source",
    )


def check_schema(destination: Any, declared: Mapping[str, str] | None = None) -> dg.AssetCheckResult:
    if declared is None:
        from backfill_platform.assets.tables_schema import POSITION_COLUMNS as declared
    actual = list(destination.dtypes)
    expected = list(declared.items())
    problems = []
    if actual != expected:
        actual_map = dict(actual)
        for name, kind in expected:
            if actual_map.get(name) != kind:
                problems.append(f"{name}: expected {kind}, found {actual_map.get(name, 'no such column')}")
        for name, kind in actual:
            if name not in declared:
                problems.append(f"{name}: {kind} is not declared")
        if not problems:
            problems.append(f"column order {[n for n, _ in actual]} != declared {[n for n, _ in expected]}")
    return dg.AssetCheckResult(
        check_name=CHECK_SCHEMA,
        passed=not problems,
        metadata={"schema": dg.MetadataValue.json(dict(actual)), "problems": dg.MetadataValue.json(problems)},
        description=None if not problems else "; ".join(problems),
    )


def check_unique_keys(destination: Any, dates: Sequence[dt.date],
                      profile: Mapping[str, tuple[int, int, int]] | None = None,
                      severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    """``severity`` WARN when the run wrote duplicates on purpose (``unique_position_date_id: warn``)."""
    profile = profile_dates(destination, dates) if profile is None else profile
    failed = sorted(day for day, (_, non_null, distinct) in profile.items() if non_null != distinct)
    sample = duplicate_keys(_in_dates(destination, dates)) if failed else []
    return dg.AssetCheckResult(
        check_name=CHECK_UNIQUE,
        passed=not failed,
        severity=severity,
        metadata={
            "duplicate_keys_sample": dg.MetadataValue.json(sample),
            "duplicate_keys_shown": len(sample),
            FAILED_DATES: dg.MetadataValue.json(failed),
        },
        description=None if not failed else f"duplicate (position_date, id) on {len(failed)} date(s)",
    )


def check_no_null_keys(destination: Any, dates: Sequence[dt.date],
                       profile: Mapping[str, tuple[int, int, int]] | None = None,
                       present: tuple[set[str], bool] | None = None,
                       null_ids_allowed: bool = False) -> dg.AssetCheckResult:
    """A NULL ``position_date`` anywhere is a table-wide failure (no ``failed_dates``): every run
    would fail on it until it is deleted. ``null_ids_allowed``: the run wrote NULL ids on purpose
    (``id_not_null: warn``), so NULL ids alone only warn."""
    from pyspark.sql import functions as F

    profile = profile_dates(destination, dates) if profile is None else profile
    _, has_null_date = present_dates(destination) if present is None else present
    null_ids = sum(rows - non_null for rows, non_null, _ in profile.values())
    null_dates = destination.where(F.col(POSITION_DATE).isNull()).count() if has_null_date else 0
    metadata: dict[str, Any] = {"null_position_date_rows": null_dates, "null_id_rows": null_ids}
    problems = []
    if null_dates:
        problems.append(
            f"{null_dates} row(s) of the table have a NULL position_date (no run writes them: delete them, "
            f"e.g. DELETE FROM the table WHERE {POSITION_DATE} IS NULL)"
        )
    else:
        metadata[FAILED_DATES] = dg.MetadataValue.json(
            sorted(day for day, (rows, non_null, _) in profile.items() if rows != non_null)
        )
    if null_ids:
        problems.append(f"{null_ids} row(s) of the run's dates have a NULL id")
    warn_only = null_dates == 0 and null_ids_allowed
    return dg.AssetCheckResult(
        check_name=CHECK_NULLS,
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN if warn_only else dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description="; ".join(problems) or None,
    )


def check_business_days_complete(destination: Any, business_days: Sequence[str],
                                 present_dates_: tuple[set[str], bool] | None = None) -> dg.AssetCheckResult:
    """``business_days``: every partition key (business day) of the asset, sorted."""
    present = (present_dates(destination) if present_dates_ is None else present_dates_)[0]
    if not present:
        return dg.AssetCheckResult(
            check_name=CHECK_COMPLETE, passed=True, severity=dg.AssetCheckSeverity.WARN,
            metadata={"dates_present": 0}, description="the table is empty",
        )
    first, last = min(present), max(present)
    expected = [key for key in business_days if first <= key <= last]
    missing = [key for key in expected if key not in present]
    return dg.AssetCheckResult(
        check_name=CHECK_COMPLETE,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "first_date": first,
            "last_date": last,
            "business_days_expected": len(expected),
            "business_days_present": len(expected) - len(missing),
            "missing_dates": dg.MetadataValue.json(missing[:100]),
            "missing_count": len(missing),
        },
        description=None if not missing else f"{len(missing)} business day(s) missing between {first} and {last}",
    )


def run_destination_checks(
    destination: Any,
    dates: Sequence[dt.date],
    outcome: ExpectationOutcome,
    business_days: Sequence[str],
) -> list[dg.AssetCheckResult]:
    """All five checks on the destination table right after the write. What the run's policies let
    through on purpose (``warn`` on the key or on ``id_not_null``) makes its check warn, not block."""
    profile = profile_dates(destination, dates)  # one Spark aggregation over the run's dates
    present = present_dates(destination)
    duplicates_allowed = outcome.policies.get(UNIQUE_KEYS) == "warn"
    return [
        check_rows_match(destination, dates, outcome.kept_rows_per_date, outcome.dropped, profile=profile),
        check_schema(destination),
        check_unique_keys(
            destination, dates, profile=profile,
            severity=dg.AssetCheckSeverity.WARN if duplicates_allowed else dg.AssetCheckSeverity.ERROR,
        ),
        check_no_null_keys(
            destination, dates, profile=profile, present=present,
            null_ids_allowed=outcome.policies.get("id_not_null") == "warn",
        ),
        check_business_days_complete(destination, business_days, present),
    ]


def blocking_check_failure(results: Sequence[dg.AssetCheckResult], written: str) -> DataQualityFailure | None:
    """The failure of the run when a blocking (ERROR-severity) check failed after the write
    (``written`` says what was committed); None when none did.

    Why the asset raises this itself: Dagster fails a step whose blocking check failed only after the
    step body has returned (``DagsterAssetCheckFailedError``, raised by ``execute_step.py`` outside
    the body), so that error has no failure class and no dates, and the rerun sensor would take it
    for an unknown, retryable failure. Raised from the body, it passes ``classified_failures``: a
    logic error, never retried, naming the dates of the failed checks; none (range-wide) when one of
    them is about the whole table (schema, a NULL position_date), which every rerun would hit again.
    """
    failed = [
        result for result in results
        if result.check_name in BLOCKING_CHECKS and not result.passed
        and result.severity == dg.AssetCheckSeverity.ERROR
    ]
    if not failed:
        return None
    table_wide = [result.check_name for result in failed if FAILED_DATES not in result.metadata]
    dates = [] if table_wide else sorted(
        {day for result in failed for day in getattr(result.metadata[FAILED_DATES], "value", [])}
    )
    about = (
        f"They are about the whole table ({', '.join(table_wide)}), not single dates."
        if table_wide else f"Dates: {listed(dates)}."
    )
    description = (
        f"Blocking asset check(s) failed after the write ({written}): "
        + "; ".join(f"{result.check_name}: {result.description or 'failed'}" for result in failed)
        + f". {about} The run fails and is not retried (a data error). See the check results (the asset's "
        "Checks tab), fix the cause, then rerun the dates (or roll them back with backfill-platform restore)."
    )
    return DataQualityFailure(
        description, dates, "blocking asset check failed",
        {"failed_checks": dg.MetadataValue.json([result.check_name for result in failed])},
    )
