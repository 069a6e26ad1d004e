"""Data gates of destination_data (issue 11): a run never succeeds while damaging a date.

Each test builds a small source Delta table on the session's Spark, really materializes
destination_data in a real Dagster instance, and reads the destination table back:

- a date whose rows a ``drop`` expectation removes (all, or more than the allowed share) fails the
  run before anything is written, naming the date, its counts and the dropping expectation;
- duplicate ``(position_date, id)`` keys are an expectation checked before the write (fail by
  default; drop keeps one row per key deterministically; warn writes them);
- every per-date gate names its dates (``bad_dates``), table-wide problems name none;
- a failed ERROR-severity asset check after the write fails the run as a logic error (not retried);
- the source is read at one Delta version: a commit between the checks and the write is not written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg
import pytest

from backfill_platform.assets import build_assets
from backfill_platform.assets.tables_schema import POSITION_COLUMNS
from backfill_platform.resources.write_hooks import WriteHooks
from backfill_platform.settings import Settings
from backfill_platform.tags import DESTINATION, RANGE_END, RANGE_START
from backfill_platform_tests.helpers import BUSINESS_DAYS, delta_version, destination_data, rows_per_date, table_rows

D1, D2, D3, D5 = "2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05"  # 07-04 is a holiday
SCHEMA = ", ".join(f"{name} {kind}" for name, kind in POSITION_COLUMNS.items())


def good_rows(day: str, n: int = 10, category: str | None = None) -> list[tuple]:
    date = dt.date.fromisoformat(day)
    return [(date, i, float(10 * i), category or "ABC"[i % 3]) for i in range(n)]


def write_source(spark, resources, rows: list[tuple], mode: str = "overwrite") -> int:
    """Write ``rows`` to the source Delta table; returns the source's new Delta version."""
    source = resources["tables"].source
    spark.createDataFrame(rows, SCHEMA).write.format("delta").mode(mode).save(source.path)
    return source.latest_version(spark)


def run(resources, first: str, last: str | None = None, config: dict | None = None,
        asset: dg.AssetsDefinition = destination_data, instance=None) -> dg.ExecuteInJobResult:
    """One run of destination_data over [first, last], with optional DestinationConfig values."""
    return dg.materialize(
        [asset],
        resources=resources,
        instance=instance,
        tags={RANGE_START: first, RANGE_END: last or first},
        run_config={"ops": {"destination_data": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def failure_of(result: dg.ExecuteInJobResult) -> tuple[str, dict[str, Any]]:
    """(message, metadata values) of the run's one step failure."""
    failures = result.get_step_failure_events()
    assert len(failures) == 1, [f.step_failure_data.error.message for f in failures]
    data = failures[0].step_failure_data
    metadata = data.user_failure_data.metadata if data.user_failure_data else {}
    return data.error.message, {key: getattr(value, "value", value) for key, value in metadata.items()}


def event_types(result: dg.ExecuteInJobResult) -> list[str]:
    return [event.event_type_value for event in result.all_events]


# ------------------------------------------------------------------------ item 1: kept rows


def test_a_date_whose_rows_are_all_dropped_fails_without_writing(spark, resources):
    """Upstream renames its categories for 07-01: category_known drops every row of that date. The
    run must not replace 07-01's rows with nothing; it fails naming 07-01 and writes nothing."""
    destination = resources["tables"].destination
    write_source(spark, resources, good_rows(D1) + good_rows(D2))
    assert run(resources, D1, D2).success
    version = delta_version(spark, destination)
    write_source(spark, resources, good_rows(D1, category="Renamed") + good_rows(D2))

    result = run(resources, D1, D2)

    assert not result.success
    assert delta_version(spark, destination) == version  # nothing written
    assert rows_per_date(spark, destination) == {D1: 10, D2: 10}
    message, metadata = failure_of(result)
    assert metadata["failure_class"] == "logic"
    assert metadata["bad_dates"] == [D1]  # per-date: 07-02 is fine and may be rerun alone
    assert "2024-07-01: 0 of 10 source row(s) kept" in message
    assert "category_known (10)" in message
    assert "min_kept_share" in message and "Nothing was written" in message
    assert "STEP_UP_FOR_RETRY" not in event_types(result)  # a data error is not retried


def test_a_date_below_the_kept_share_fails_and_the_share_is_configurable(spark, resources):
    """6 of 10 rows of 07-01 dropped: 4 kept < 0.5 x 10 fails by default; BACKFILL_MIN_KEPT_SHARE
    (here Settings.quality) lowers the share for the deployment, run config overrides it per run."""
    from backfill_platform.settings import QualitySettings

    destination = resources["tables"].destination
    rows = good_rows(D1)
    write_source(spark, resources, [row[:3] + ("X" if row[1] < 6 else row[3],) for row in rows])

    result = run(resources, D1)
    assert not result.success
    message, metadata = failure_of(result)
    assert metadata["bad_dates"] == [D1]
    assert "2024-07-01: 4 of 10 source row(s) kept" in message and "minimum share 0.5" in message
    assert not destination.exists(spark)

    lenient = Settings(quality=QualitySettings(min_kept_share=0.3))
    lenient_asset = {a.key: a for a in build_assets(lenient, BUSINESS_DAYS)}[DESTINATION]
    result = run(resources, D1, asset=lenient_asset)
    assert result.success
    assert rows_per_date(spark, destination) == {D1: 4}
    [materialization] = result.asset_materializations_for_node("destination_data")
    assert materialization.metadata["min_kept_share"].value == 0.3

    result = run(resources, D1, asset=lenient_asset, config={"min_kept_share": 0.9})  # the run's own share
    assert not result.success
    assert "minimum share 0.9" in failure_of(result)[0]


@pytest.mark.parametrize("share", [0.0, 1.5, -0.1])
def test_a_bad_min_kept_share_in_run_config_is_a_range_wide_logic_error(spark, resources, share):
    write_source(spark, resources, good_rows(D1))
    result = run(resources, D1, config={"min_kept_share": share})
    assert not result.success
    message, metadata = failure_of(result)
    assert "min_kept_share" in message and "(0, 1]" in message
    assert metadata["failure_class"] == "logic"
    assert not metadata.get("bad_dates")  # range-wide: a configuration error is about no one date
    assert not resources["tables"].destination.exists(spark)


def test_min_kept_share_setting_is_parsed_and_validated():
    from backfill_platform.settings import QualitySettings, SettingsError

    assert Settings().quality == QualitySettings(min_kept_share=0.5)
    assert Settings.from_env({}).quality.min_kept_share == 0.5
    assert Settings.from_env({"BACKFILL_MIN_KEPT_SHARE": "0.25"}).quality.min_kept_share == 0.25
    assert Settings.from_env({"BACKFILL_MIN_KEPT_SHARE": "1"}).quality.min_kept_share == 1.0
    for bad in ("nan", "-0.5", "0", "1.01", "inf", "half", "50%"):
        with pytest.raises(SettingsError, match="BACKFILL_MIN_KEPT_SHARE"):
            Settings.from_env({"BACKFILL_MIN_KEPT_SHARE": bad})
    with pytest.raises(SettingsError, match="BACKFILL_MIN_KEPT_SHARE"):
        QualitySettings(min_kept_share=float("nan"))


# ------------------------------------------------------------------------ item 2: keys, bad dates


def test_every_per_date_gate_names_its_dates_in_one_failure(spark, resources):
    """07-01 has a duplicate key, 07-02 a NULL id (id_not_null: fail), 07-03 no source rows, 07-05
    is clean: one failure names exactly the three bad dates, so the others can be rerun."""
    destination = resources["tables"].destination
    duplicate = (dt.date(2024, 7, 1), 3, 99.0, "A")
    null_id = (dt.date(2024, 7, 2), None, 1.0, "A")
    write_source(spark, resources, good_rows(D1) + [duplicate] + good_rows(D2) + [null_id] + good_rows(D5))

    result = run(resources, D1, D5)

    assert not result.success
    assert not destination.exists(spark)  # nothing written
    message, metadata = failure_of(result)
    assert metadata["failure_class"] == "logic"
    assert metadata["bad_dates"] == [D1, D2, D3]
    assert metadata["missing_dates"] == [D3]
    assert "unique_position_date_id (1 row(s)) on 2024-07-01" in message
    assert "id_not_null (1 row(s)) on 2024-07-02" in message
    assert "has no rows for business date(s) 2024-07-03" in message
    assert "(2024-07-01, 3) x2" in message  # a sample of the duplicate keys


def test_duplicate_keys_fail_by_default_drop_keeps_one_row_warn_writes_them(spark, resources, instance):
    destination = resources["tables"].destination
    duplicate = (dt.date(2024, 7, 1), 3, 99.0, "A")
    write_source(spark, resources, [duplicate] + good_rows(D1))

    result = run(resources, D1)  # default policy: fail, before the write
    assert not result.success
    assert failure_of(result)[1]["bad_dates"] == [D1]
    assert not destination.exists(spark)

    result = run(resources, D1, config={"expectation_policies": {"unique_position_date_id": "drop"}})
    assert result.success
    rows = table_rows(spark, destination)
    assert len(rows) == 10 and sorted(r[1] for r in rows) == list(range(10))
    assert [r[2] for r in rows if r[1] == 3] == [30.0]  # deterministic: the lowest (value, category)
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()}["unique_position_date_id"]

    result = run(resources, D1, config={"expectation_policies": {"unique_position_date_id": "warn"}},
                 instance=instance)
    assert result.success  # the run asked for duplicates to be written: the check warns
    assert rows_per_date(spark, destination) == {D1: 11}
    unique = {e.check_name: e for e in result.get_asset_check_evaluations()}["unique_position_date_id"]
    assert not unique.passed and unique.severity == dg.AssetCheckSeverity.WARN


# --------------------------------------------------------------- item 2: blocking asset checks


class DuplicateRowsOnWrite(WriteHooks):
    """Test binding of ``write_hooks``: writes the first two rows twice, as a buggy writer would, so
    the asset checks after the write see duplicate keys and more rows than the source has."""

    def before_write(self, dates, frame):
        return frame.unionByName(frame.where("id < 2"))


def test_a_failed_error_check_after_the_write_fails_the_run_as_a_logic_error(spark, resources, instance):
    write_source(spark, resources, good_rows(D1) + good_rows(D2))
    hooked = {**resources, "write_hooks": DuplicateRowsOnWrite()}

    result = run(hooked, D1, D2, instance=instance)

    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    for name in ("unique_position_date_id", "rows_match_source"):
        assert not evaluations[name].passed and evaluations[name].severity == dg.AssetCheckSeverity.ERROR
    # the write happened (Delta version 1): the materialization is recorded, then the step fails
    assert sorted(m.partition for m in result.asset_materializations_for_node("destination_data")) == [D1, D2]
    message, metadata = failure_of(result)
    assert metadata["failure_class"] == "logic"
    assert metadata["bad_dates"] == [D1, D2]
    assert "rows_match_source" in message and "unique_position_date_id" in message
    assert "STEP_UP_FOR_RETRY" not in event_types(result)
    run_record = instance.get_run_by_id(result.run_id)
    assert run_record.status == dg.DagsterRunStatus.FAILURE


def test_a_table_wide_check_failure_names_no_bad_dates(spark, resources):
    """A NULL position_date anywhere in the destination fails no_null_keys for every run: a range-wide
    logic error, so the rerun sensor gives the range up once instead of rerunning each date."""
    destination = resources["tables"].destination
    write_source(spark, resources, good_rows(D1))
    assert run(resources, D1).success
    spark.createDataFrame([(None, 1, 1.0, "A")], SCHEMA).write.format("delta").mode("append").save(destination.path)

    result = run(resources, D1)

    assert not result.success
    message, metadata = failure_of(result)
    assert metadata["failure_class"] == "logic"
    assert not metadata.get("bad_dates")
    assert "no_null_keys" in message


# --------------------------------------------------------------------- item 3: one source version


class CommitToSourceBeforeWrite(WriteHooks):
    """Test binding of ``write_hooks``: an upstream commit lands between the checks and the write. It
    appends duplicate keys with an out-of-range value to the SOURCE table (the rows nobody checked)."""

    source_path: str

    def before_write(self, dates, frame):
        rows = [(dt.date.fromisoformat(day), i, 999.0, "A") for day in dates for i in (0, 1)]
        frame.sparkSession.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").save(self.source_path)
        return frame


def test_a_source_commit_between_the_checks_and_the_write_is_not_written(spark, resources):
    source, destination = resources["tables"].source, resources["tables"].destination
    checked_version = write_source(spark, resources, good_rows(D1))
    hooked = {**resources, "write_hooks": CommitToSourceBeforeWrite(source_path=source.path)}

    result = run(hooked, D1)

    assert source.latest_version(spark) == checked_version + 1  # the upstream commit did land
    assert sorted(table_rows(spark, destination)) == sorted(good_rows(D1))  # but was not written
    assert result.success
    [materialization] = result.asset_materializations_for_node("destination_data")
    assert materialization.metadata["source_delta_version"].value == checked_version
