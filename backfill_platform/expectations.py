"""Data quality of ``destination_data`` before the write: expectations and data gates (the asset
checks after the write are in ``checks.py``).

**Expectations** (Delta Live Tables' ``expect`` / ``expect_or_drop`` / ``expect_or_fail``) are
conditions every source row of the run's dates must meet before anything is written. Each has a
policy:

- ``warn``: the rows are written; the violation count is logged and kept in the metadata;
- ``drop``: the violating rows are left out of the write (counted in the metadata);
- ``fail``: one violating row fails the whole run *before* the write.

A row whose condition is NULL (e.g. ``value BETWEEN 0 AND 100`` with a NULL value) violates it. The
policies can be overridden per run with ``DestinationConfig.expectation_policies`` (launchpad/CLI).

``unique_position_date_id`` is a key expectation, not a row condition: at most one row per
``(position_date, id)`` among the rows that would be written (after the row expectations' drops;
NULL ids are ``id_not_null``'s concern). A duplicate key in the source is an upstream bug, so its
default policy is ``fail``; ``drop`` keeps one row per key, deterministically (the lowest
``(value, category)``, so a rerun writes the same row); ``warn`` writes the duplicates (and the
asset check after the write then warns instead of failing).

There is no ``position_date_not_null`` expectation: a run reads only the source rows whose
``position_date`` is one of its dates (``isin``), so a NULL date never reaches the expectations (it
could not fire) and is never written by any run. A NULL ``position_date`` in the destination is what
the ``no_null_keys`` check after the write looks for.

**Data gates** are evaluated together, from ONE Spark aggregation per run (per date: source rows,
kept rows, each expectation's violations, duplicate keys), over the source read at one Delta version:

- a business date of the run without source rows;
- a violation of a ``fail`` expectation;
- a date whose kept rows fall to zero, or below ``min_kept_share`` of its source rows
  (``BACKFILL_MIN_KEPT_SHARE``, default 0.5; per run ``DestinationConfig.min_kept_share``): ``drop``
  is for a few bad rows; an upstream change (renamed categories) must not replace a date with
  nothing and succeed.

Any of them fails the run before the write with ONE :class:`DataQualityFailure` naming every bad
date of the run (``bad_dates``), their counts and what to do; it is a logic error, never retried.
The rerun sensor gives up exactly those dates and reruns the run's other dates.

Every function here takes Spark DataFrames and returns plain results, so tests can feed crafted data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from backfill_platform.classification import LOGIC, failure_metadata
from backfill_platform.settings import QualitySettings

# Not imported from assets.tables_schema at module level: the assets package imports this module
# (destination_data declares these checks), so that would be a circular import.
POSITION_DATE = "position_date"
POLICIES = ("warn", "drop", "fail")

KEY_COLUMNS = (POSITION_DATE, "id")
UNIQUE_KEYS = "unique_position_date_id"  # the key expectation before the write, the check after it
RUN_CONFIG = "ops.destination_data.config"  # where a run overrides policies and the kept share
LISTED = 20  # dates or keys spelled out in a message; the metadata holds them all
DEFAULT_MIN_KEPT_SHARE = QualitySettings().min_kept_share


@dataclasses.dataclass(frozen=True)
class Expectation:
    name: str
    condition: str  # Spark SQL boolean over one row; NULL counts as a violation
    policy: str  # warn | drop | fail
    description: str

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"expectation {self.name}: policy {self.policy!r} is not one of {POLICIES}")


@dataclasses.dataclass(frozen=True)
class UniqueKeyExpectation(Expectation):
    """At most one row per ``KEY_COLUMNS`` among the rows to write; ``condition`` only describes it."""


DESTINATION_EXPECTATIONS: tuple[Expectation, ...] = (
    Expectation("id_not_null", "id IS NOT NULL", "fail", "every row has an id (part of the key)"),
    Expectation("id_non_negative", "id >= 0", "fail", "ids are 0..N-1"),
    Expectation("value_in_range", "value BETWEEN 0 AND 100", "warn", "value is a percentage 0-100"),
    Expectation("category_known", "category IN ('A', 'B', 'C')", "drop", "category is A, B or C"),
    UniqueKeyExpectation(
        UNIQUE_KEYS, "one row per (position_date, id)", "fail", "a key appears once; duplicates are an upstream bug"
    ),
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
    violations: dict[str, int]  # expectation name -> violating rows (a key: its rows beyond the first)
    violations_per_date: dict[str, dict[str, int]]  # date -> {expectation name: violating rows}, non-zero
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

    def dates_violating(self, name: str) -> list[str]:
        return sorted(day for day, found in self.violations_per_date.items() if found.get(name))

    def dropped_by(self, day: str) -> dict[str, int]:
        """The ``drop`` expectations that removed rows of ``day``, with their counts (a row that
        violates two of them counts for both)."""
        found = self.violations_per_date.get(day, {})
        return {name: count for name, count in found.items() if self.policies[name] == "drop"}

    def short_dates(self, min_kept_share: float) -> list[str]:
        """Dates whose kept rows are zero or fewer than ``min_kept_share`` of their source rows."""
        return sorted(
            day for day, source_rows in self.source_rows_per_date.items()
            if self.kept_rows_per_date.get(day, 0) == 0
            or self.kept_rows_per_date.get(day, 0) < min_kept_share * source_rows
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "expectations": dg.MetadataValue.json(
                {name: {"policy": self.policies[name], "violations": count} for name, count in self.violations.items()}
            ),
            "rows_dropped_by_expectations": self.dropped,
        }


class DataQualityFailure(dg.Failure):
    """A data gate or a blocking check failed: ``Failure(allow_retries=False)`` classified as a logic
    error (``FAILURE_CLASS_KEY``) that names the business dates it is about, in its metadata
    (``BAD_DATES_KEY``) and as ``dates``, the attribute ``classification.failure_for`` reads (as it
    does ``DataQualityError.dates``). No dates: the problem is range- or table-wide."""

    def __init__(
        self,
        description: str = "",
        dates: Sequence[str] = (),
        reason: str = "data-quality gate failed",
        metadata: Mapping[str, Any] | None = None,
    ):
        self.dates = list(dates)
        super().__init__(
            description=description,
            metadata=failure_metadata(LOGIC, reason, bad_dates=self.dates, **dict(metadata or {})),
            allow_retries=False,
        )


def _violated(expectation: Expectation) -> Any:
    from pyspark.sql import functions as F

    return ~F.coalesce(F.expr(expectation.condition), F.lit(False))


def evaluate_expectations(frame: Any, expectations: Sequence[Expectation]) -> ExpectationOutcome:
    """Count rows, kept rows and each expectation's violations per date in ONE Spark aggregation.

    Duplicate keys are counted in the same aggregation, per date, as ``count(id) - count(DISTINCT
    id)`` over the rows the row expectations keep."""
    from pyspark.sql import functions as F

    row_rules = [e for e in expectations if not isinstance(e, UniqueKeyExpectation)]
    key_rules = [e for e in expectations if isinstance(e, UniqueKeyExpectation)]
    dropped = F.lit(False)
    for expectation in (e for e in row_rules if e.policy == "drop"):
        dropped = dropped | _violated(expectation)
    kept_id = F.when(~dropped, F.col("id"))
    aggregates = [
        F.count(F.lit(1)).alias("_rows"),
        F.sum(F.when(dropped, 0).otherwise(1)).alias("_kept"),
        (F.count(kept_id) - F.countDistinct(kept_id)).alias("_duplicates"),
    ]
    aggregates += [F.sum(F.when(_violated(e), 1).otherwise(0)).alias(f"_v{i}") for i, e in enumerate(row_rules)]
    per_date = frame.groupBy(F.col(POSITION_DATE).cast("string").alias("_date")).agg(*aggregates).collect()

    dedupe = any(e.policy == "drop" for e in key_rules)
    source_rows, kept_rows, per_date_violations = {}, {}, {}
    for row in per_date:
        day, duplicates = str(row["_date"]), int(row["_duplicates"] or 0)
        source_rows[day] = int(row["_rows"])
        kept_rows[day] = int(row["_kept"] or 0) - (duplicates if dedupe else 0)
        found = {e.name: int(row[f"_v{i}"] or 0) for i, e in enumerate(row_rules)}
        found.update({e.name: duplicates for e in key_rules})
        per_date_violations[day] = {name: count for name, count in found.items() if count}
    violations = {
        e.name: sum(found.get(e.name, 0) for found in per_date_violations.values()) for e in expectations
    }

    rows = frame.where(~dropped) if any(e.policy == "drop" for e in row_rules) else frame
    if dedupe and any(violations[e.name] for e in key_rules):
        rows = one_row_per_key(rows)
    return ExpectationOutcome(
        rows=rows,
        source_rows_per_date=source_rows,
        kept_rows_per_date=kept_rows,
        violations=violations,
        violations_per_date=per_date_violations,
        policies={e.name: e.policy for e in expectations},
    )


def one_row_per_key(frame: Any) -> Any:
    """``frame`` with one row per ``KEY_COLUMNS``: the one with the lowest other columns (NULLs
    first), so every rerun keeps the same row. Rows with a NULL id are all kept."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = [F.col(name).asc_nulls_first() for name in frame.columns if name not in KEY_COLUMNS]
    first = F.row_number().over(Window.partitionBy(*KEY_COLUMNS).orderBy(*order))
    return frame.withColumn("_nth", first).where(F.col("id").isNull() | (F.col("_nth") == 1)).drop("_nth")


def duplicate_keys(frame: Any, limit: int = LISTED) -> list[dict[str, Any]]:
    """Up to ``limit`` keys that occur more than once in ``frame``, with their row counts."""
    from pyspark.sql import functions as F

    found = (
        frame.where(F.col("id").isNotNull()).groupBy(*KEY_COLUMNS).count()
        .where(F.col("count") > 1).orderBy(*KEY_COLUMNS).limit(limit).collect()
    )
    return [{"position_date": str(r[0]), "id": r[1], "rows": int(r[2])} for r in found]


def listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"


def data_gate_failure(
    outcome: ExpectationOutcome, dates: Sequence[str], min_kept_share: float, source: str = "the source"
) -> DataQualityFailure | None:
    """The failure of every data gate of the run at once, naming all its bad dates; None when every
    date passes. ``dates``: the run's business dates (ISO)."""
    missing = [day for day in dates if day not in outcome.source_rows_per_date]
    violated = {name: outcome.dates_violating(name) for name in outcome.failed}
    short = outcome.short_dates(min_kept_share)
    bad = sorted(set(missing).union(short, *violated.values()))
    if not bad:
        return None

    sections = []
    if missing:
        sections.append(
            f"The source {source} has no rows for business date(s) {listed(missing)}. "
            "Load the source for these dates, then rerun them."
        )
    if violated:
        details = "; ".join(
            f"{name} ({outcome.violations[name]} row(s)) on {listed(days)}" for name, days in violated.items()
        )
        sample = ""
        if any(outcome.policies[name] == "fail" for name in violated if name == UNIQUE_KEYS):
            keys = duplicate_keys(outcome.rows)
            sample = " Duplicate keys: " + ", ".join(f"({k['position_date']}, {k['id']}) x{k['rows']}" for k in keys)
            sample += "." if len(keys) < LISTED else " (first ones)."
        example = next(iter(violated))
        sections.append(
            f"Source rows violate expectation(s) with policy 'fail': {details}.{sample} Fix the source rows, "
            f"or relax the policy for a run with run config {RUN_CONFIG}.expectation_policies "
            f"(e.g. {{{example!r}: 'drop'}}), then rerun these dates."
        )
    if short:
        counts = [
            f"{day}: {outcome.kept_rows_per_date.get(day, 0)} of {outcome.source_rows_per_date[day]} source row(s) "
            "kept (dropped by "
            + ", ".join(f"{name} ({count})" for name, count in outcome.dropped_by(day).items()) + ")"
            for day in short
        ]
        sections.append(
            f"Too few rows would be kept (minimum share {min_kept_share:g} of a date's source rows): "
            f"{'; '.join(counts[:LISTED])}{'' if len(counts) <= LISTED else f'; and {len(counts) - LISTED} more'}. "
            "A 'drop' expectation removes a few bad rows; dropping most of a date usually means the source "
            "changed (e.g. renamed categories). Fix the source or the expectation, then rerun these dates; if "
            f"the drop is intended, rerun them with run config {RUN_CONFIG}.min_kept_share lowered (the "
            "deployment's default is BACKFILL_MIN_KEPT_SHARE)."
        )
    others = "; the run's other dates passed" if len(bad) < len(dates) else ""
    description = (
        f"Data gates failed for {len(bad)} of {len(dates)} business date(s) of this run: {listed(bad)}. "
        f"Nothing was written and the run is not retried (a data error){others}.\n"
        + "\n".join(f"- {section}" for section in sections)
    )
    details_per_date = {
        day: {
            "source_rows": outcome.source_rows_per_date.get(day, 0),
            "kept_rows": outcome.kept_rows_per_date.get(day, 0),
            "failed_expectations": sorted(name for name in violated if day in violated[name]),
            "dropped_by": outcome.dropped_by(day),
        }
        for day in bad
    }
    metadata = {
        **outcome.metadata(),
        "min_kept_share": min_kept_share,
        "bad_date_details": dg.MetadataValue.json(details_per_date),
    }
    if missing:
        metadata["missing_dates"] = dg.MetadataValue.json(missing)
    return DataQualityFailure(description, bad, "data-quality gate failed", metadata)


def enforce_expectations(
    context: Any,
    frame: Any,
    dates: Sequence[str],
    overrides: Mapping[str, str] | None = None,
    min_kept_share: float = DEFAULT_MIN_KEPT_SHARE,
    source: str = "the source",
    expectations: Sequence[Expectation] = DESTINATION_EXPECTATIONS,
) -> ExpectationOutcome:
    """Evaluate the expectations over ``frame`` (the source rows of the run's ``dates``); log
    warnings; raise the run's :func:`data_gate_failure` if any date fails a gate. A bad
    ``overrides`` is a range-wide configuration error (a ``Failure`` without dates)."""
    try:
        active = with_policies(expectations, overrides)
    except ExpectationConfigError as error:
        raise dg.Failure(str(error), allow_retries=False) from None
    outcome = evaluate_expectations(frame, active)
    for name in outcome.warned:
        context.log.warning(f"expectation {name}: {outcome.violations[name]} row(s) violate it (policy warn: written)")
    if outcome.dropped:
        context.log.warning(f"{outcome.dropped} row(s) dropped by 'drop' expectations")
    failure = data_gate_failure(outcome, dates, min_kept_share, source)
    if failure is not None:
        raise failure
    return outcome
