"""``source_data``: the table ``destination_data`` is computed from.

In the local demo it seeds the seed notebook's source reproducibly (10 rows per weekday, holidays
included, as the seed did). In a real deployment it is an existing table that the platform only
observes: it is never overwritten.
"""


import datetime as dt

import dagster as dg

from backfill_platform.assets.tables_schema import POSITION_COLUMNS
from backfill_platform.resources.step_launcher import STEP_LAUNCHER_KEY
from backfill_platform.resources.tables import DeltaTables


class SourceConfig(dg.Config):
    first_day: str = "2024-01-01"
    last_day: str = "2025-11-20"
    rows_per_date: int = 10
    seed: int = 42


@dg.asset(
    kinds={"spark", "delta"},
    group_name="backfill",
    # the same seam as destination_data: on Databricks these run on the cluster too
    required_resource_keys={STEP_LAUNCHER_KEY, "pyspark", "tables"},
)
def source_data(
    context: dg.AssetExecutionContext,
    config: SourceConfig,
) -> dg.MaterializeResult:
    """The demo source: ``position_date`` DATE, ``id`` BIGINT 0..N-1, ``value`` DOUBLE 0-100,
    ``category`` STRING A/B/C, deterministic for a given seed (hash-based, so independent of how
    Spark partitions the work)."""
    from pyspark.sql import functions as F

    pyspark, tables = context.resources.pyspark, context.resources.tables
    spark = pyspark.spark_session
    if not tables.seed_demo_source:
        return _observe_existing_source(spark, tables)

    first, last = dt.date.fromisoformat(config.first_day), dt.date.fromisoformat(config.last_day)
    if first > last or config.rows_per_date < 1:
        raise dg.Failure(
            f"Source config is empty: first_day={first}, last_day={last}, "
            f"rows_per_date={config.rows_per_date}.",
            allow_retries=False,
        )
    days = spark.sql(
        f"SELECT explode(sequence(DATE'{first}', DATE'{last}', INTERVAL 1 DAY)) AS position_date"
    ).where(~F.dayofweek("position_date").isin(1, 7))
    ids = spark.range(config.rows_per_date)
    hashed = F.xxhash64("position_date", "id", F.lit(config.seed))
    category_index = (F.pmod(F.xxhash64(hashed), F.lit(3)) + 1).cast("int")
    rows = days.crossJoin(ids).select(
        "position_date",
        F.col("id").cast("bigint").alias("id"),
        (F.pmod(hashed, F.lit(10_000)) / F.lit(100.0)).alias("value"),
        F.element_at(F.array(*map(F.lit, "ABC")), category_index).alias("category"),
    )
    # Not partitioned by date (hundreds of tiny files), but range-sorted into ~20-date files, so
    # Delta's per-file min/max statistics skip every file outside the dates a run reads.
    files = max(1, ((last - first).days + 1) // 28)
    ordered = rows.repartitionByRange(files, "position_date").sortWithinPartitions("position_date", "id")
    writer = ordered.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    tables.source.save(writer)
    total = tables.source.read(spark).count()
    context.log.info(f"Seeded {total} demo source rows into {tables.source}")
    return dg.MaterializeResult(
        metadata={
            "table": str(tables.source),
            "rows": total,
            "rows_per_date": config.rows_per_date,
            "first_day": first.isoformat(),
            "last_day": last.isoformat(),
            "seed": config.seed,
            "delta_version": tables.source.latest_version(spark),
        }
    )


def _observe_existing_source(spark, tables: DeltaTables) -> dg.MaterializeResult:
    from pyspark.sql import functions as F

    if not tables.source.exists(spark):
        raise dg.Failure(
            f"The source table {tables.source} does not exist. In this deployment the platform does "
            "not create it: point BACKFILL_CATALOG/BACKFILL_SCHEMA/BACKFILL_SOURCE_TABLE at it.",
            allow_retries=False,
        )
    frame = tables.source.read(spark)
    missing = sorted(set(POSITION_COLUMNS) - set(frame.columns))
    if missing:
        raise dg.Failure(
            f"The source table {tables.source} lacks column(s) {', '.join(missing)}.",
            allow_retries=False,
        )
    summary = frame.agg(F.count("*"), F.min("position_date"), F.max("position_date")).first()
    return dg.MaterializeResult(
        metadata={
            "table": str(tables.source),
            "rows": int(summary[0]),
            "first_day": str(summary[1]),
            "last_day": str(summary[2]),
            "seeded_by_platform": False,
        }
    )
