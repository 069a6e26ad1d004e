"""Expectations (warn / drop / fail) and the five asset checks of destination_data, each passing and
failing on crafted data, on the shared local Spark + Delta session; plus one real materialization."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from backfill_platform import checks
from backfill_platform.assets import destination_data, source_data
from backfill_platform.assets.tables_schema import POSITION_COLUMNS

D1, D2, D3 = dt.date(2024, 7, 1), dt.date(2024, 7, 2), dt.date(2024, 7, 3)
SCHEMA = ", ".join(f"{n} {t}" for n, t in POSITION_COLUMNS.items())


def frame(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def good_rows(day, n=3):
    return [(day, i, 10.0 * i, "ABC"[i % 3]) for i in range(n)]


class Ctx:
    """The one thing enforce_expectations uses from a context: a logger."""

    def __init__(self):
        import logging

        self.log = logging.getLogger("test_checks")


def test_expectations_pass_warn_drop_and_fail(spark):
    clean = frame(spark, good_rows(D1) + good_rows(D2))
    outcome = checks.enforce_expectations(Ctx(), clean)
    assert outcome.violations == {e.name: 0 for e in checks.DESTINATION_EXPECTATIONS}
    assert outcome.source_rows_per_date == {"2024-07-01": 3, "2024-07-02": 3}
    assert outcome.dropped == 0 and outcome.rows.count() == 6

    dirty = frame(spark, good_rows(D1) + [(D1, 7, 250.0, "A"), (D1, 8, None, "Z"), (D2, 9, 5.0, "Q")])
    outcome = checks.enforce_expectations(Ctx(), dirty)  # drop value_in_range, warn category_known
    assert outcome.violations["value_in_range"] == 2  # 250 and NULL
    assert outcome.violations["category_known"] == 2  # Z and Q: warned, kept
    assert outcome.dropped == 2
    assert outcome.kept_rows_per_date == {"2024-07-01": 3, "2024-07-02": 1}
    assert sorted(r.id for r in outcome.rows.collect()) == [0, 1, 2, 9]

    bad_key = frame(spark, good_rows(D1) + [(D1, None, 1.0, "A"), (D1, -1, 1.0, "A")])
    with pytest.raises(dg.Failure) as failure:
        checks.enforce_expectations(Ctx(), bad_key)
    assert failure.value.allow_retries is False
    assert "id_not_null (1 row(s))" in failure.value.description
    assert "id_non_negative (2 row(s))" in failure.value.description  # -1, and NULL (NULL violates)

    # per-run overrides: value_in_range becomes fail; unknown names are refused
    with pytest.raises(dg.Failure, match="value_in_range"):
        checks.enforce_expectations(Ctx(), dirty, {"value_in_range": "fail"})
    with pytest.raises(dg.Failure, match="unknown expectation"):
        checks.enforce_expectations(Ctx(), clean, {"no_such_rule": "warn"})
    with pytest.raises(dg.Failure, match="must be one of"):
        checks.enforce_expectations(Ctx(), clean, {"value_in_range": "ignore"})


def test_each_check_passes_and_fails_on_crafted_data(spark):
    good = frame(spark, good_rows(D1) + good_rows(D2))
    assert checks.check_rows_match(good, [D1, D2], {"2024-07-01": 3, "2024-07-02": 3}).passed
    result = checks.check_rows_match(good, [D1, D2], {"2024-07-01": 3, "2024-07-02": 4})
    assert not result.passed
    assert result.metadata["mismatches"].value == {"2024-07-02": {"expected": 4, "found": 3}}

    assert checks.check_schema(good).passed
    drifted = good.withColumn("value", good["value"].cast("string")).withColumn("extra", good["id"])
    result = checks.check_schema(drifted)
    assert not result.passed
    assert result.metadata["problems"].value == ["value: expected double, found string", "extra: bigint is not declared"]

    assert checks.check_unique_keys(good, [D1, D2]).passed
    duplicated = frame(spark, good_rows(D1) + [(D1, 1, 3.0, "B")])
    result = checks.check_unique_keys(duplicated, [D1])
    assert not result.passed
    assert result.metadata["duplicate_keys_sample"].value == [{"position_date": "2024-07-01", "id": 1, "rows": 2}]

    assert checks.check_no_null_keys(good, [D1, D2]).passed
    nulls = frame(spark, good_rows(D1) + [(D1, None, 1.0, "A"), (None, 5, 1.0, "A")])
    result = checks.check_no_null_keys(nulls, [D1])
    assert not result.passed
    assert (result.metadata["null_position_date_rows"].value, result.metadata["null_id_rows"].value) == (1, 1)

    keys = ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08"]  # 07-04 is a holiday
    complete = frame(spark, good_rows(D1) + good_rows(D2) + good_rows(D3) + good_rows(dt.date(2024, 7, 5)))
    result = checks.check_business_days_complete(complete, keys)
    assert result.passed and result.metadata["business_days_expected"].value == 4
    gap = frame(spark, good_rows(D1) + good_rows(dt.date(2024, 7, 5)))
    result = checks.check_business_days_complete(gap, keys)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["missing_dates"].value == ["2024-07-02", "2024-07-03"]


def _append_source(spark, tables, rows):
    spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").save(tables.source.path)


def test_checks_run_with_every_materialization_and_bad_rows_write_nothing(resources, spark, instance):
    tables = resources["tables"]
    seeded = dg.materialize(
        [source_data], resources=resources, instance=instance,
        run_config={"ops": {"source_data": {"config": {"first_day": "2024-07-01", "last_day": "2024-07-09", "rows_per_date": 4}}}},
    )
    assert seeded.success
    # a value out of range on 07-02 (dropped) and a NULL id on 07-08 (fails its partition)
    _append_source(spark, tables, [(D2, 99, 500.0, "A"), (dt.date(2024, 7, 8), None, 1.0, "A")])

    result = dg.materialize(
        [destination_data, source_data], selection=[destination_data], resources=resources, instance=instance,
        tags={"dagster/asset_partition_range_start": "2024-07-01", "dagster/asset_partition_range_end": "2024-07-03"},
    )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {checks.CHECK_ROWS, checks.CHECK_SCHEMA, checks.CHECK_UNIQUE, checks.CHECK_NULLS, checks.CHECK_COMPLETE}
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items()}
    assert evaluations[checks.CHECK_ROWS].metadata["rows_dropped_by_expectations"].value == 1
    assert tables.destination.read(spark).count() == 12  # 3 dates x 4 rows; the 500.0 row dropped
    # the checks are stored in the instance, where the UI reads them
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("destination_data"), checks.CHECK_ROWS)]
    )
    assert record[dg.AssetCheckKey(dg.AssetKey("destination_data"), checks.CHECK_ROWS)].status.value == "SUCCEEDED"

    version = tables.destination.latest_version(spark)
    failed = dg.materialize(
        [destination_data, source_data], selection=[destination_data], resources=resources, instance=instance,
        partition_key="2024-07-08", raise_on_error=False,
    )
    assert not failed.success
    failure = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "id_not_null (1 row(s))" in failure.step_failure_data.error.message
    assert failure.step_failure_data.user_failure_data.metadata["expectations"].value["id_not_null"] == {"policy": "fail", "violations": 1}
    assert tables.destination.latest_version(spark) == version  # nothing written

    # a gap (07-05 missing between 07-03 and 07-09) makes the completeness check warn, not fail the run
    gap = dg.materialize(
        [destination_data, source_data], selection=[destination_data], resources=resources, instance=instance,
        partition_key="2024-07-09",
    )
    assert gap.success
    complete = {e.check_name: e for e in gap.get_asset_check_evaluations()}[checks.CHECK_COMPLETE]
    assert not complete.passed and complete.severity == dg.AssetCheckSeverity.WARN
    assert complete.metadata["missing_dates"].value == ["2024-07-05", "2024-07-08"]
