"""destination_data: replaceWhere of exactly the run's business dates, idempotent, isolated,
and nothing written on bad input."""

import dataclasses

import dagster as dg
import pytest

from backfill_platform.partitions import InvalidPartitionDateError
from backfill_platform.resources.tables import DeltaTables
from backfill_platform_tests.helpers import (
    BUSINESS_DAYS,
    delta_version,
    destination_data,
    materialize_destination,
    rows_per_date,
    seed_source,
    table_rows,
)


@pytest.fixture
def seeded(spark, resources):
    """A local deployment whose demo source holds June-July 2024 (10 rows per weekday)."""
    seed_source(resources, first_day="2024-06-01", last_day="2024-07-31")
    return resources


def test_range_run_writes_only_the_business_days_of_the_range_in_one_commit(spark, seeded, instance):
    result = materialize_destination(seeded, "2024-07-01", "2024-07-12", instance=instance)
    destination = seeded["tables"].destination
    expected_days = ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08",
                     "2024-07-09", "2024-07-10", "2024-07-11", "2024-07-12"]
    assert rows_per_date(spark, destination) == {day: 10 for day in expected_days}  # no 07-04, no weekend
    history = destination.delta_table(spark).history().collect()
    assert [h.operation for h in history] == ["WRITE", "CREATE TABLE"]  # one data commit for the run
    assert "2024-07-04" not in history[0].operationParameters["predicate"]
    materializations = result.asset_materializations_for_node("destination_data")
    assert sorted(m.partition for m in materializations) == expected_days
    metadata = materializations[0].metadata
    assert metadata["rows_written"].value == 90
    assert metadata["dates"].value == 9
    assert metadata["rows_per_date"].value == {day: 10 for day in expected_days}
    assert metadata["delta_version"].value == 1
    # the rows are the source's rows for those dates, exactly
    source = seeded["tables"].source.read(spark).where("position_date IN ('" + "','".join(expected_days) + "')")
    assert table_rows(spark, destination) == sorted(tuple(r) for r in source.collect())


def test_rerunning_a_partition_is_idempotent_and_other_dates_are_untouched(spark, seeded):
    destination = seeded["tables"].destination
    materialize_destination(seeded, "2024-06-17", "2024-06-21")
    before = table_rows(spark, destination)
    materialize_destination(seeded, "2024-06-18")
    materialize_destination(seeded, "2024-06-18")
    assert table_rows(spark, destination) == before
    assert delta_version(spark, destination) == 3

    # Change the source for one date only: the rerun replaces that date and nothing else.
    seeded["tables"].source.delta_table(spark).update("position_date = '2024-06-18'", {"value": "value + 1000"})
    materialize_destination(seeded, "2024-06-18")
    after = {row: None for row in table_rows(spark, destination)}
    changed = [r for r in before if r not in after]
    assert len(changed) == 10 and {str(r[0]) for r in changed} == {"2024-06-18"}
    # 2024-06-19 is Juneteenth: not a partition, never written
    assert rows_per_date(spark, destination) == {
        d: 10 for d in ["2024-06-17", "2024-06-18", "2024-06-20", "2024-06-21"]
    }
    assert all(r[2] >= 1000 for r in table_rows(spark, destination) if str(r[0]) == "2024-06-18")


def test_a_business_date_without_source_rows_fails_and_writes_nothing(spark, seeded, instance):
    destination = seeded["tables"].destination
    materialize_destination(seeded, "2024-07-01")
    version = delta_version(spark, destination)
    seeded["tables"].source.delta_table(spark).delete("position_date = '2024-07-02'")

    result = materialize_destination(seeded, "2024-07-01", "2024-07-03", instance=instance, raise_on_error=False)

    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "has no rows for business date(s) 2024-07-02" in failure.error.message
    assert "Nothing was written" in failure.error.message
    # a per-date logic error: only 07-02 is bad, 07-01 and 07-03 may be rerun
    assert failure.user_failure_data.metadata["failure_class"].value == "logic"
    assert failure.user_failure_data.metadata["bad_dates"].value == ["2024-07-02"]
    assert delta_version(spark, destination) == version
    assert rows_per_date(spark, destination) == {"2024-07-01": 10}


def test_a_drifted_source_schema_fails_with_the_columns_and_writes_nothing(spark, seeded):
    destination = seeded["tables"].destination
    materialize_destination(seeded, "2024-07-01")
    source = seeded["tables"].source
    drifted = source.read(spark).withColumnRenamed("value", "amount")
    source.save(drifted.write.format("delta").mode("overwrite").option("overwriteSchema", "true"))

    result = materialize_destination(seeded, "2024-07-02", raise_on_error=False)

    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "value: expected double, found no such column" in failure.error.message
    # range-wide: the drift is about the table, not one date
    assert failure.user_failure_data.metadata["failure_class"].value == "logic"
    assert failure.user_failure_data.metadata["bad_dates"].value == []
    assert rows_per_date(spark, destination) == {"2024-07-01": 10}


def test_an_empty_source_fails_with_a_clear_message(spark, resources):
    result = materialize_destination(resources, "2024-07-01", raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "does not exist. Materialize source_data first" in message
    assert not resources["tables"].destination.exists(spark)


def test_a_holiday_key_is_rejected_with_the_holiday_and_nothing_is_written(spark, seeded):
    with pytest.raises(dg.DagsterUnknownPartitionError, match="holiday: Independence Day"):
        dg.materialize([destination_data], resources=seeded, partition_key="2024-07-04")
    assert not seeded["tables"].destination.exists(spark)


def test_the_sql_guard_does_not_rely_on_dagster_validating_keys():
    with pytest.raises(InvalidPartitionDateError, match="weekend"):
        BUSINESS_DAYS.dates_of(["2024-07-01", "2024-07-06"])
    with pytest.raises(InvalidPartitionDateError, match="YYYY-MM-DD"):
        BUSINESS_DAYS.dates_of(["2024-07-01' OR '1'='1"])


def test_destination_declares_chunked_backfills_and_the_step_launcher_seam():
    assert destination_data.backfill_policy.max_partitions_per_run == 500  # 2 years per run (issue 13)
    assert "pyspark_step_launcher" in destination_data.required_resource_keys


def test_a_clustered_destination_is_replaced_date_by_date_like_a_partitioned_one(spark, seeded, settings):
    """BACKFILL_TABLE_LAYOUT=clustered: the new table is liquid-clustered on position_date (no partition
    directories); a range run, then a one-date rerun inside the range's file, replace exactly their dates,
    and the checks (which then scan the date column) pass."""
    clustered = settings.replace(tables=dataclasses.replace(settings.tables, table_layout="clustered"))
    resources = {**seeded, "tables": DeltaTables.from_settings(clustered, mode="path")}
    destination = resources["tables"].destination
    first = materialize_destination(resources, "2024-06-17", "2024-06-21")
    assert first.success
    detail = spark.sql(f"DESCRIBE DETAIL {destination.sql_name}").collect()[0]
    assert list(detail.clusteringColumns) == ["position_date"] and list(detail.partitionColumns) == []
    before = table_rows(spark, destination)
    seeded["tables"].source.delta_table(spark).update("position_date = '2024-06-18'", {"value": "value + 1000"})
    rerun = materialize_destination(resources, "2024-06-18")
    checks = rerun.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks), [(c.check_name, c.passed) for c in checks]
    after = table_rows(spark, destination)
    dates = ["2024-06-17", "2024-06-18", "2024-06-20", "2024-06-21"]  # 2024-06-19 is Juneteenth
    assert rows_per_date(spark, destination) == {day: 10 for day in dates}
    assert [r for r in after if str(r[0]) != "2024-06-18"] == [r for r in before if str(r[0]) != "2024-06-18"]
    assert [r for r in after if str(r[0]) == "2024-06-18"] != [r for r in before if str(r[0]) == "2024-06-18"]
