"""Data quality of ``destination_data``: expectations before the write, asset checks after it.

**Expectations** (Delta Live Tables' ``expect`` / ``expect_or_drop`` / ``expect_or_fail``) are SQL
conditions every source row of the run's dates must meet before anything is written. Each has a
policy:

- ``warn``: the rows are written; the violation count is logged and kept in the metadata;
- ``drop``: the violating rows are left out of the write (counted in the metadata);
- ``fail``: one violating row fails the whole run *before* the write, with
  ``Failure(allow_retries=False)``: a data error is not transient, so no retry policy, run retry or
  rerun sensor should try it again unchanged. The destination is untouched.

A row whose condition is NULL (e.g. ``value BETWEEN 0 AND 100`` with a NULL value) violates it. The
policies can be overridden per run with ``DestinationConfig.expectation_policies`` (launchpad/CLI).

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

Every function here takes Spark DataFrames and returns plain results, so tests can feed crafted data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

# Not imported from assets.tables_schema at module level: the assets package imports this module
# (destination_data declares these checks), so that would be a circular import.
POSITION_DATE = "position_date"
POLICIES = ("warn", "drop", "fail")

KEY_COLUMNS = (POSITION_DATE, "id")


@dataclasses.dataclass(frozen=True)
class Expectation:
    name: str
    condition: str  # Spark SQL boolean over one row; NULL counts as a violation
    policy: str  # warn | drop | fail
    description: str

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"expectation {self.name}: policy {self.policy!r} is not one of {POLICIES}")


DESTINATION_EXPECTATIONS: tuple[Expectation, ...] = (
    Expectation("position_date_not_null", "position_date IS NOT NULL", "fail", "every row has a business date"),
    Expectation("id_not_null", "id IS NOT NULL", "fail", "every row has an id (part of the key)"),
    Expectation("id_non_negative", "id >= 0", "fail", "ids are 0..N-1"),
    Expectation("value_in_range", "value BETWEEN 0 AND 100", "warn", "value is a percentage 0-100"),
    Expectation("category_known", "category IN ('A', 'B', 'C')", "drop", "category is A, B or C"),
)


class ExpectationConfigError(ValueError):
    """An override names an unknown expectation or policy."""


def with_policies(
    expectations: Sequence[Expectation], overrides: Mapping[str, str] | None
) -> list[Expectation]:
    """The expectations with per-run policy overrides (``{"value_in_range": "fail"}``) applied."""
    overrides = dict(overrides or {})
    known = {e.name for e in expectations}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ExpectationConfigError(
            f"unknown expectation(s) {', '.join(unknown)} in expectation_policies; known: {', '.join(sorted(known))}."
        )
    bad = {name: policy for name, policy in overrides.items() if policy not in POLICIES}
    if bad:
        raise ExpectationConfigError(
            f"expectation_policies {bad} : each policy must be one of {', '.join(POLICIES)}."
        )
    return [dataclasses.replace(e, policy=overrides.get(e.name, e.policy)) for e in expectations]


@dataclasses.dataclass(frozen=True)
class ExpectationOutcome:
    rows: Any  # the DataFrame to write (drop-policy violators removed)
    source_rows_per_date: dict[str, int]  # before any drop
    kept_rows_per_date: dict[str, int]  # what the write will contain
    violations: dict[str, int]  # expectation name -> violating rows
    policies: dict[str, str]

    @property
    def dropped(self) -> int:
        return sum(self.source_rows_per_date.values()) - sum(self.kept_rows_per_date.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, count in self.violations.items() if count and self.policies[name] == "fail"]

    @property
    def warned(self) -> list[str]:
        return [name for name, count in self.violations.items() if count and self.policies[name] == "warn"]

    def metadata(self) -> dict[str, Any]:
        return {
            "expectations": dg.MetadataValue.json(
                {name: {"policy": self.policies[name], "violations": count} for name, count in self.violations.items()}
            ),
            "rows_dropped_by_expectations": self.dropped,
        }

    def failure_message(self) -> str:
        details = ", ".join(f"{name} ({self.violations[name]} row(s))" for name in self.failed)
        return (
            f"Source rows violate expectation(s) with policy 'fail': {details}. Nothing was written "
            "and the run is not retried (a data error). Fix the source rows, or relax the policy "
            "with run config ops.destination_data.config.expectation_policies, then rerun these dates."
        )


def _violated(expectation: Expectation) -> Any:
    from pyspark.sql import functions as F

    return ~F.coalesce(F.expr(expectation.condition), F.lit(False))


def evaluate_expectations(frame: Any, expectations: Sequence[Expectation]) -> ExpectationOutcome:
    """Count violations per expectation and rows per date in ONE Spark aggregation."""
    from pyspark.sql import functions as F

    drop_rules = [e for e in expectations if e.policy == "drop"]
    dropped = F.lit(False)
    for expectation in drop_rules:
        dropped = dropped | _violated(expectation)
    aggregates = [F.count(F.lit(1)).alias("_rows"), F.sum(F.when(dropped, 0).otherwise(1)).alias("_kept")]
    aggregates += [
        F.sum(F.when(_violated(e), 1).otherwise(0)).alias(f"_v{i}") for i, e in enumerate(expectations)
    ]
    per_date = frame.groupBy(F.col(POSITION_DATE).cast("string").alias("_date")).agg(*aggregates).collect()
    source_rows = {str(row["_date"]): int(row["_rows"]) for row in per_date}
    kept_rows = {str(row["_date"]): int(row["_kept"]) for row in per_date}
    violations = {
        e.name: int(sum(row[f"_v{i}"] or 0 for row in per_date)) for i, e in enumerate(expectations)
    }
    rows = frame.where(~dropped) if drop_rules else frame
    return ExpectationOutcome(
        rows=rows,
        source_rows_per_date=source_rows,
        kept_rows_per_date=kept_rows,
        violations=violations,
        policies={e.name: e.policy for e in expectations},
    )


def enforce_expectations(
    context: Any, frame: Any, overrides: Mapping[str, str] | None = None,
    expectations: Sequence[Expectation] = DESTINATION_EXPECTATIONS,
) -> ExpectationOutcome:
    """Evaluate; log warnings; raise ``Failure(allow_retries=False)`` on any 'fail' violation."""
    try:
        active = with_policies(expectations, overrides)
    except ExpectationConfigError as error:
        raise dg.Failure(str(error), allow_retries=False) from None
    outcome = evaluate_expectations(frame, active)
    for name in outcome.warned:
        context.log.warning(f"expectation {name}: {outcome.violations[name]} row(s) violate it (policy warn: written)")
    if outcome.dropped:
        context.log.warning(f"{outcome.dropped} row(s) dropped by 'drop' expectations")
    if outcome.failed:
        raise dg.Failure(
            description=outcome.failure_message(), metadata=outcome.metadata(), allow_retries=False
        )
    return outcome


# ---------------------------------------------------------------------------------------------
# asset checks

CHECK_ROWS = "rows_match_source"
CHECK_SCHEMA = "schema_matches_declaration"
CHECK_UNIQUE = "unique_position_date_id"
CHECK_NULLS = "no_null_keys"
CHECK_COMPLETE = "business_days_complete"


def destination_check_specs(asset_key: str = "destination_data") -> list[dg.AssetCheckSpec]:
    key = dg.AssetKey(asset_key)
    return [
        dg.AssetCheckSpec(
            CHECK_ROWS,
            asset=key,
            description="destination rows per date == source rows for that date (minus rows dropped by expectations)",
        ),
        dg.AssetCheckSpec(CHECK_SCHEMA, asset=key, description="columns and types are exactly the declared schema"),
        dg.AssetCheckSpec(CHECK_UNIQUE, asset=key, description="(position_date, id) is unique"),
        dg.AssetCheckSpec(CHECK_NULLS, asset=key, description="no NULL in the key columns position_date, id"),
        dg.AssetCheckSpec(
            CHECK_COMPLETE,
            asset=key,
            description="every business day between the table's first and last date is present",
        ),
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
    """(dates present in the whole table, whether a NULL position_date exists): ONE Spark job."""
    values = [row[0] for row in destination.select(POSITION_DATE).distinct().collect()]
    return {str(v) for v in values if v is not None}, any(v is None for v in values)


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
    )


def check_unique_keys(destination: Any, dates: Sequence[dt.date],
                      profile: Mapping[str, tuple[int, int, int]] | None = None) -> dg.AssetCheckResult:
    from pyspark.sql import functions as F

    profile = profile_dates(destination, dates) if profile is None else profile
    sample: list[dict[str, Any]] = []
    if any(non_null != distinct for _, non_null, distinct in profile.values()):
        duplicates = (
            _in_dates(destination, dates).where(F.col("id").isNotNull()).groupBy(*KEY_COLUMNS).count()
            .where(F.col("count") > 1).orderBy(*KEY_COLUMNS).limit(20).collect()
        )
        sample = [{"position_date": str(r[0]), "id": r[1], "rows": int(r[2])} for r in duplicates]
    return dg.AssetCheckResult(
        check_name=CHECK_UNIQUE,
        passed=not sample,
        metadata={"duplicate_keys_sample": dg.MetadataValue.json(sample), "duplicate_keys_shown": len(sample)},
    )


def check_no_null_keys(destination: Any, dates: Sequence[dt.date],
                       profile: Mapping[str, tuple[int, int, int]] | None = None,
                       present: tuple[set[str], bool] | None = None) -> dg.AssetCheckResult:
    from pyspark.sql import functions as F

    profile = profile_dates(destination, dates) if profile is None else profile
    _, has_null_date = present_dates(destination) if present is None else present
    null_ids = sum(rows - non_null for rows, non_null, _ in profile.values())
    null_dates = destination.where(F.col(POSITION_DATE).isNull()).count() if has_null_date else 0
    return dg.AssetCheckResult(
        check_name=CHECK_NULLS,
        passed=null_dates == 0 and null_ids == 0,
        metadata={"null_position_date_rows": null_dates, "null_id_rows": null_ids},
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
    """All five checks on the destination table right after the write."""
    profile = profile_dates(destination, dates)  # two Spark jobs for the five checks
    present = present_dates(destination)
    return [
        check_rows_match(destination, dates, outcome.kept_rows_per_date, outcome.dropped, profile=profile),
        check_schema(destination),
        check_unique_keys(destination, dates, profile=profile),
        check_no_null_keys(destination, dates, profile=profile, present=present),
        check_business_days_complete(destination, business_days, present),
    ]
