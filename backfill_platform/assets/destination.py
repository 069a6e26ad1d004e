"""``destination_data``: the business-day partitioned Delta table that backfills repair.

One run handles one partition or a range of them (the backfill policy sets how many). It reads the
source rows of exactly those business dates, at ONE Delta version of the source (what the data gates
checked is what is written, whatever upstream commits meanwhile), and replaces exactly those dates in
the destination with a single ``replaceWhere`` overwrite: one Delta commit, atomic, and idempotent.

Before the write, the data gates (``expectations.py``) fail the run, writing nothing, for a date without
source rows, a ``fail`` expectation violated (duplicate keys included), or a date whose rows the
``drop`` expectations cut to zero or below the kept share; a source that drifted from the declared
schema fails it too. After the write, a failed ERROR-severity asset check fails the run.
"""


import json
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg

from backfill_platform import checks, expectations, tags
from backfill_platform.assets.destination_config import DestinationConfig
from backfill_platform.assets.tables_schema import POSITION_COLUMNS, POSITION_DATE
from backfill_platform.classification import classified_failures
from backfill_platform.partitions import BusinessDays
from backfill_platform.resources.spark import cancel_spark_jobs_on_termination
from backfill_platform.resources.step_launcher import STEP_LAUNCHER_KEY
from backfill_platform.resources.tables import DeltaLocation, DeltaTables
from backfill_platform.resources.write_hooks import WRITE_HOOKS_KEY, WriteHooks
from backfill_platform.retrying import RetrySchedule
from backfill_platform.settings import Settings


def backfill_policy(settings: Settings) -> dg.BackfillPolicy:
    """Chunks of ``max_partitions_per_run`` business days per run, or one run for all."""
    if settings.max_partitions_per_run is None:
        return dg.BackfillPolicy.single_run()
    return dg.BackfillPolicy.multi_run(settings.max_partitions_per_run)


def build_destination_asset(settings: Settings, business_days: BusinessDays) -> dg.AssetsDefinition:
    """``destination_data`` for one deployment: its partitions, backfill policy, retries and pool."""
    schedule = RetrySchedule.from_settings(settings.retries)

    @dg.asset(
        name=tags.DESTINATION.path[-1],
        partitions_def=business_days.partitions_def,
        backfill_policy=backfill_policy(settings),
        deps=[tags.SOURCE],
        required_resource_keys={STEP_LAUNCHER_KEY, "pyspark", "tables", WRITE_HOOKS_KEY},
        kinds={"spark", "delta"},
        group_name="backfill",
        # No op RetryPolicy: the body raises RetryRequested itself (retrying.py). Dagster turns an
        # interruption (Cancel, a run timeout) of an op that has a RetryPolicy into a retry of the step,
        # so with one, a terminated run went on running (UPSTREAM, dagster/_core/execution/plan/utils.py).
        pool=settings.databricks.pool if settings.deployment == "databricks" else None,
        check_specs=checks.destination_check_specs(),
    )
    def destination_data(
        context: dg.AssetExecutionContext, config: DestinationConfig
    ) -> Iterator[dg.MaterializeResult]:
        """Copy the source rows of this run's business dates into the destination, replacing exactly
        those dates (``replaceWhere``) in one Delta commit.

        Failures are classified (``classification.py``): transient and unknown ones are retried
        (``retrying.RetrySchedule``: backoff, jitter that only adds), logic/data ones fail once with
        ``Failure(allow_retries=False)``. A generator, so that a failed blocking check can fail the
        step from inside ``classified_failures`` after its materialization and check results are
        recorded (``checks.blocking_check_failure`` says why).
        """
        with (
            classified_failures(context.partition_keys, schedule, context.retry_number),
            cancel_spark_jobs_on_termination(context.resources.pyspark, context.instance, context.run_id),
        ):
            min_kept_share = config.kept_share(settings.quality.min_kept_share)
            result = _replace_dates(context, config, business_days, min_kept_share)
            yield result
            blocked = checks.blocking_check_failure(
                result.check_results or [],
                f"{result.metadata['table']} Delta version {result.metadata['delta_version']}",
            )
            if blocked is not None:
                raise blocked

    return destination_data


def _replace_dates(
    context: dg.AssetExecutionContext, config: DestinationConfig, business_days: BusinessDays, min_kept_share: float
) -> dg.MaterializeResult:
    """The body of ``destination_data``. Resources come by key (not as typed arguments) because the
    step launcher must be a key requirement: ``pyspark`` (a ``LazyPySparkResource``), ``tables``
    (``DeltaTables``) and ``write_hooks`` (``WriteHooks``: nothing in production)."""
    from pyspark.sql import functions as F

    tables: DeltaTables = context.resources.tables
    dates = business_days.dates_of(context.partition_keys)
    started = time.perf_counter()
    spark = context.resources.pyspark.spark_session
    spark_ready = time.perf_counter()
    source_version, source_frame = _read_source(spark, tables.source)
    source = source_frame.where(F.col(POSITION_DATE).isin(dates))

    # Data gates (expectations.py): a missing date, a 'fail' expectation, too few kept rows raise ONE
    # DataQualityFailure naming the bad dates, before anything is written.
    expected = expectations.enforce_expectations(
        context, source, [day.isoformat() for day in dates], config.expectation_policies, min_kept_share,
        source=f"{tables.source} (Delta version {source_version})",
    )
    rows_per_date = expected.kept_rows_per_date

    hooks: WriteHooks = getattr(context.resources, WRITE_HOOKS_KEY)
    rows = hooks.before_write([day.isoformat() for day in dates], expected.rows)
    checked = time.perf_counter()
    _create_destination_if_missing(spark, tables.destination, tables.layout)
    predicate = f"{POSITION_DATE} IN ({', '.join(repr(day.isoformat()) for day in dates)})"
    if config.full_refresh:  # the run's whole window, non-business days inside it included
        # UPSTREAM WORKAROUND (Delta 4.4.0 on Spark 4.2): replaceWhere "d BETWEEN a AND b" on a partition
        # column fails with [INTERNAL_ERROR] Invalid call to nullable on unresolved object; ">= AND <=" works.
        predicate = f"{POSITION_DATE} >= '{dates[0].isoformat()}' AND {POSITION_DATE} <= '{dates[-1].isoformat()}'"
    writer = (
        rows.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", predicate)
    )
    tables.destination.save(writer)
    commit = tables.destination.last_commit(spark)
    written = time.perf_counter()
    total = sum(rows_per_date.values())
    context.log.info(
        f"Replaced {len(dates)} business date(s) {dates[0]}..{dates[-1]} in {tables.destination}: "
        f"{total} rows, Delta version {commit['version']}, from {tables.source} Delta version {source_version}"
    )
    check_results = checks.run_destination_checks(
        tables.destination.read(spark), dates, expected, business_days.partitions_def.get_partition_keys()
    )
    return dg.MaterializeResult(
        check_results=check_results,
        metadata={
            **expected.metadata(),
            "min_kept_share": min_kept_share,
            "source_delta_version": source_version,
            "full_refresh": config.full_refresh,
            "table": str(tables.destination),
            "delta_version": int(commit["version"]),
            "rows_written": total,
            "dates": len(dates),
            "first_date": dates[0].isoformat(),
            "last_date": dates[-1].isoformat(),
            "rows_per_date": dg.MetadataValue.json(rows_per_date),
            # where the step's time went (the benchmark reads these)
            "spark_session_s": round(spark_ready - started, 3),
            "read_check_s": round(checked - spark_ready, 3),
            "write_commit_s": round(written - checked, 3),
        }
    )


def _read_source(spark, source: DeltaLocation) -> tuple[int, Any]:
    """(version, frame): the source at its latest Delta version, pinned, with exactly the declared
    columns and types, or a Failure naming the drift.

    Pinned because the frame is evaluated twice (the expectations' aggregation, then the write): an
    unpinned read resolves the latest version each time, so an upstream commit in between would be
    written unchecked. ``VERSION AS OF`` in SQL works for path and catalog tables, classic or Spark
    Connect sessions."""
    from pyspark.sql import functions as F

    version = source.version_if_exists(spark)
    if version is None:
        raise dg.Failure(
            f"The source table {source} does not exist. Materialize source_data first "
            "(backfill-platform backfill does this for you in the local deployment).",
            allow_retries=False,
        )
    frame = spark.sql(f"SELECT * FROM {source.sql_name} VERSION AS OF {version}")
    actual = dict(frame.dtypes)
    problems = [
        f"{name}: expected {kind}, found {actual.get(name, 'no such column')}"
        for name, kind in POSITION_COLUMNS.items()
        if actual.get(name) != kind
    ]
    if problems:
        raise dg.Failure(
            f"The source {source} does not match the declared schema ({'; '.join(problems)}). "
            "Nothing was written.",
            metadata={"source_schema": json.dumps(actual), "source_delta_version": version},
            allow_retries=False,
        )
    return version, frame.select(*(F.col(name) for name in POSITION_COLUMNS))


def _create_destination_if_missing(spark, destination: DeltaLocation, layout: str = "partitioned") -> None:
    """Create the empty table once, so every later write is a replaceWhere: partitioned by date (one
    directory per date, the seed's choice "for efficient writes"), or liquid-clustered on the date
    (``BACKFILL_TABLE_LAYOUT=clustered``: files hold many dates; docs/benchmark.md compares the two).
    An existing table keeps its layout."""
    if destination.exists(spark):
        return
    # Delta SQL (not DeltaTable.createIfNotExists): it works on classic and Spark Connect sessions.
    columns = ", ".join(f"{name} {kind}" for name, kind in POSITION_COLUMNS.items())
    try:
        with destination.exclusive_commit():
            spark.sql(
                f"CREATE TABLE IF NOT EXISTS {destination.sql_name} ({columns}) USING DELTA "
                + (f"PARTITIONED BY ({POSITION_DATE})" if layout == "partitioned" else f"CLUSTER BY ({POSITION_DATE})")
            )
    except Exception:
        # Two runs of a fresh backfill can both find the table missing; the loser's create fails
        # with Delta's ProtocolChangedException. The table exists then, which is all we need.
        if not destination.exists(spark):
            raise
