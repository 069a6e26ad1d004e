"""``business_calendar``: the seed's calendar table, built with Spark from the same holidays as the
partitions (``build_calendar_asset`` takes the code location's ``BusinessCalendar``, so the table and
the partitions cannot disagree)."""


import datetime as dt

import dagster as dg

from backfill_platform import tags
from backfill_platform.partitions import BusinessCalendar
from backfill_platform.resources.step_launcher import STEP_LAUNCHER_KEY


class CalendarConfig(dg.Config):
    first_day: str = "2020-01-01"
    last_day: str = "2026-12-31"


def build_calendar_asset(calendar: BusinessCalendar) -> dg.AssetsDefinition:
    """``business_calendar`` with the holidays of ``calendar``."""

    @dg.asset(
        name=tags.CALENDAR.path[-1],
        kinds={"spark", "delta"},
        group_name="backfill",
        # the same seam as destination_data: on Databricks these run on the cluster too
        required_resource_keys={STEP_LAUNCHER_KEY, "pyspark", "tables"},
    )
    def business_calendar(
        context: dg.AssetExecutionContext,
        config: CalendarConfig,
    ) -> dg.MaterializeResult:
        """One row per calendar day with the seed's columns; ``us_business_or_holiday_flag`` is 'B' for a
        business day and 'H' for a weekend, holiday or closure (BACKFILL_EXTRA_CLOSURES), ``day_reason``
        says which, and ``holiday_name`` names the holiday or closure (NULL on other days)."""
        from pyspark.sql import functions as F

        pyspark, tables = context.resources.pyspark, context.resources.tables
        first, last = dt.date.fromisoformat(config.first_day), dt.date.fromisoformat(config.last_day)
        if first > last:
            raise dg.Failure(f"first_day {first} is after last_day {last}.", allow_retries=False)
        spark = pyspark.spark_session
        holidays = spark.createDataFrame(
            [(day, name) for day, name in calendar.holidays.items() if first <= day <= last],
            "holiday_date date, holiday_name string",
        )
        days = spark.sql(
            f"SELECT explode(sequence(DATE'{first}', DATE'{last}', INTERVAL 1 DAY)) AS calendar_date"
        )
        weekend = F.dayofweek("calendar_date").isin(1, 7)
        holiday_reason = F.when(
            F.col("holiday_name").startswith("closure: "), F.col("holiday_name")
        ).otherwise(F.concat(F.lit("holiday: "), F.col("holiday_name")))
        reason = (
            F.when(weekend, F.concat(F.lit("weekend ("), F.date_format("calendar_date", "EEEE"), F.lit(")")))
            .when(F.col("holiday_name").isNotNull(), holiday_reason)
            .otherwise(F.lit("business day"))
        )
        flag = F.when(weekend | F.col("holiday_name").isNotNull(), F.lit("H")).otherwise(F.lit("B"))
        calendar_days = (
            days.join(F.broadcast(holidays), days.calendar_date == holidays.holiday_date, "left")
            .select(
                "calendar_date",
                F.year("calendar_date").alias("calendar_year"),
                F.quarter("calendar_date").alias("quarter_of_the_year"),
                F.month("calendar_date").alias("month_of_the_year"),
                F.ceil(F.dayofmonth("calendar_date") / 7).cast("int").alias("week_of_the_month"),
                flag.alias("us_business_or_holiday_flag"),
                flag.alias("global_business_or_holiday_flag"),
                reason.alias("day_reason"),
                F.when(weekend, F.lit(None).cast("string"))
                .otherwise(F.regexp_replace("holiday_name", "^closure: ", ""))
                .alias("holiday_name"),
            )
            .orderBy("calendar_date")
        )
        writer = calendar_days.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        tables.calendar.save(writer)
        counts = {row[0]: row[1] for row in calendar_days.groupBy("us_business_or_holiday_flag").count().collect()}
        context.log.info(f"Wrote {sum(counts.values())} days to {tables.calendar}")
        return dg.MaterializeResult(
            metadata={
                "table": str(tables.calendar),
                "days": sum(counts.values()),
                "business_days": counts.get("B", 0),
                "non_business_days": counts.get("H", 0),
                "first_day": first.isoformat(),
                "last_day": last.isoformat(),
                "delta_version": tables.calendar.latest_version(spark),
            }
        )

    return business_calendar
