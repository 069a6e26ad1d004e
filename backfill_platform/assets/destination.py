"""``destination_data``: the business-day partitioned Delta table that backfills repair.

One run handles one partition or a range of them (the backfill policy sets how many). It reads the
source rows of exactly those business dates and replaces exactly those dates in the destination with
a single ``replaceWhere`` overwrite: one Delta commit, atomic, and idempotent. A date without source
rows, or a source that drifted from the declared schema, fails the run before anything is written.
"""


import json
import time

import dagster as dg

from backfill_platform import checks, tags
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
    def destination_data(context: dg.AssetExecutionContext, config: DestinationConfig) -> dg.MaterializeResult:
        """Copy the source rows of this run's business dates into the destination, replacing exactly
        those dates (``replaceWhere``) in one Delta commit.

        Failures are classified (``classification.py``): transient and unknown ones are retried
        (``retrying.RetrySchedule``: backoff, jitter that only adds), logic/data ones fail once with
        ``Failure(allow_retries=False)``.
        """
        with (
            classified_failures(context.partition_keys, schedule, context.retry_number),
            cancel_spark_jobs_on_termination(context.resources.pyspark, context.instance, context.run_id),
        ):
            return _replace_dates(context, config, business_days)

    return destination_data


def _replace_dates(
    context: dg.AssetExecutionContext, config: DestinationConfig, business_days: BusinessDays
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
    source = _read_source(spark, tables.source).where(F.col(POSITION_DATE).isin(dates))

    # Expectations (checks.py): 'fail' raises Failure(allow_retries=False) before anything is written.
    expected = checks.enforce_expectations(context, source, config.expectation_policies)
    rows_per_date = expected.kept_rows_per_date
    missing = [day.isoformat() for day in dates if day.isoformat() not in expected.source_rows_per_date]
    if missing:
        raise dg.Failure(
            description=(
                f"The source {tables.source} has no rows for business date(s) {', '.join(missing)}. "
                "Nothing was written. Load the source for these dates, then rerun them."
            ),
            metadata={"missing_dates": missing, "source": str(tables.source)},
            allow_retries=False,
        )

    hooks: WriteHooks = getattr(context.resources, WRITE_HOOKS_KEY)
    rows = hooks.before_write([day.isoformat() for day in dates], expected.rows)
    checked = time.perf_counter()
    _create_destination_if_missing(spark, tables.destination)
    predicate = f"{POSITION_DATE} IN ({', '.join(repr(day.isoformat()) for day in dates)})"
    if config.full_refresh:  # the run's whole window, non-business days inside it included
        predicate = f"{POSITION_DATE} BETWEEN '{dates[0].isoformat()}' AND '{dates[-1].isoformat()}'"
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
        f"{total} rows, Delta version {commit['version']}"
    )
    check_results = checks.run_destination_checks(
        tables.destination.read(spark), dates, expected, business_days.partitions_def.get_partition_keys()
    )
    return dg.MaterializeResult(
        check_results=check_results,
        metadata={
            **expected.metadata(),
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


def _read_source(spark, source: DeltaLocation):
    """The source, with exactly the declared columns and types, or a Failure naming the drift."""
    from pyspark.sql import functions as F

    if not source.exists(spark):
        raise dg.Failure(
            f"The source table {source} does not exist. Materialize source_data first "
            "(backfill-platform backfill does this for you in the local deployment).",
            allow_retries=False,
        )
    frame = source.read(spark)
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
            metadata={"source_schema": json.dumps(actual)},
            allow_retries=False,
        )
    return frame.select(*(F.col(name) for name in POSITION_COLUMNS))


def _create_destination_if_missing(spark, destination: DeltaLocation) -> None:
    """Create the empty, date-partitioned table once, so every later write is a replaceWhere."""
    if destination.exists(spark):
        return
    # Delta SQL (not DeltaTable.createIfNotExists): it works on classic and Spark Connect sessions.
    columns = ", ".join(f"{name} {kind}" for name, kind in POSITION_COLUMNS.items())
    try:
        spark.sql(
            f"CREATE TABLE IF NOT EXISTS {destination.sql_name} ({columns}) USING DELTA "
            f"PARTITIONED BY ({POSITION_DATE})"
        )
    except Exception:
        # Two runs of a fresh backfill can both find the table missing; the loser's create fails
        # with Delta's ProtocolChangedException. The table exists then, which is all we need.
        if not destination.exists(spark):
            raise
