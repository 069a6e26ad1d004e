"""Expectations (warn / drop / fail) and the five asset checks of destination_data, each passing and
failing on crafted data, on the shared local Spark + Delta session; plus one real materialization."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import dagster as dg
import pytest

from backfill_platform import checks, expectations
from backfill_platform.assets.tables_schema import POSITION_COLUMNS
from backfill_platform.processes import stop_process_group
from backfill_platform.resources import local_resources
from backfill_platform.settings import PROJECT_ROOT, Settings
from backfill_platform_tests.conftest import ARTIFACTS, free_port, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import destination_data, source_data

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


DAYS = ["2024-07-01", "2024-07-02"]


def test_expectations_pass_warn_drop_and_fail(spark):
    clean = frame(spark, good_rows(D1) + good_rows(D2))
    outcome = expectations.enforce_expectations(Ctx(), clean, DAYS)
    assert outcome.violations == {e.name: 0 for e in expectations.DESTINATION_EXPECTATIONS}
    assert outcome.source_rows_per_date == {"2024-07-01": 3, "2024-07-02": 3}
    assert outcome.dropped == 0 and outcome.rows.count() == 6

    dirty = frame(spark, good_rows(D1) + [(D1, 7, 250.0, "A"), (D1, 8, None, "Z"), (D2, 9, 5.0, "Q")] + good_rows(D2))
    outcome = expectations.enforce_expectations(Ctx(), dirty, DAYS)  # warn value_in_range, drop category_known
    assert outcome.violations["value_in_range"] == 2  # 250 and NULL: warned, kept
    assert outcome.violations["category_known"] == 2  # Z and Q: dropped
    assert outcome.dropped == 2
    assert outcome.kept_rows_per_date == {"2024-07-01": 4, "2024-07-02": 3}
    assert outcome.violations_per_date == {
        "2024-07-01": {"value_in_range": 2, "category_known": 1}, "2024-07-02": {"category_known": 1}
    }
    assert sorted(r.id for r in outcome.rows.collect()) == [0, 0, 1, 1, 2, 2, 7]

    bad_key = frame(spark, good_rows(D1) + [(D1, None, 1.0, "A"), (D1, -1, 1.0, "A")] + good_rows(D2))
    with pytest.raises(expectations.DataQualityFailure) as failure:
        expectations.enforce_expectations(Ctx(), bad_key, DAYS)
    assert failure.value.allow_retries is False
    assert failure.value.dates == ["2024-07-01"]  # 07-02 is clean
    assert failure.value.metadata["bad_dates"].value == ["2024-07-01"]
    assert failure.value.metadata["failure_class"].value == "logic"
    assert "id_not_null (1 row(s)) on 2024-07-01" in failure.value.description
    assert "id_non_negative (2 row(s))" in failure.value.description  # -1, and NULL (NULL violates)

    # per-run overrides: value_in_range becomes fail, category_known warn; unknown names are refused
    with pytest.raises(dg.Failure, match="value_in_range"):
        expectations.enforce_expectations(Ctx(), dirty, DAYS, {"value_in_range": "fail"})
    assert expectations.enforce_expectations(Ctx(), dirty, DAYS, {"category_known": "warn"}).dropped == 0
    with pytest.raises(dg.Failure, match="unknown expectation") as failure:
        expectations.enforce_expectations(Ctx(), clean, DAYS, {"no_such_rule": "warn"})
    assert not isinstance(failure.value, expectations.DataQualityFailure)  # range-wide: no bad dates
    with pytest.raises(dg.Failure, match="must be one of"):
        expectations.enforce_expectations(Ctx(), clean, DAYS, {"value_in_range": "ignore"})


def test_no_position_date_not_null_expectation_the_run_never_sees_null_dates():
    """The run's source frame is ``position_date IN (dates)``: a NULL date is never evaluated and
    never written, so an expectation on it could never fire (the destination check covers NULLs)."""
    assert "position_date_not_null" not in {e.name for e in expectations.DESTINATION_EXPECTATIONS}
    with pytest.raises(expectations.ExpectationConfigError, match="unknown expectation"):
        expectations.with_policies(expectations.DESTINATION_EXPECTATIONS, {"position_date_not_null": "warn"})


def test_duplicate_keys_are_counted_per_date_in_the_same_aggregation(spark):
    rows = good_rows(D1) + [(D1, 1, 99.0, "A"), (D1, 1, 0.5, "C"), (D1, 2, 1.0, "Z")] + good_rows(D2)
    rows += [(D2, None, 1.0, "A"), (D2, None, 2.0, "A")]  # NULL ids are id_not_null's, not duplicates
    policies = {"id_not_null": "warn", "id_non_negative": "warn"}

    outcome = expectations.evaluate_expectations(
        frame(spark, rows), expectations.with_policies(expectations.DESTINATION_EXPECTATIONS, policies)
    )
    # id 1 three times on 07-01 (2 extra rows); the duplicate id 2 has category Z: dropped first
    assert outcome.violations[expectations.UNIQUE_KEYS] == 2
    assert outcome.violations_per_date["2024-07-01"][expectations.UNIQUE_KEYS] == 2
    assert expectations.UNIQUE_KEYS not in outcome.violations_per_date["2024-07-02"]
    assert outcome.failed == [expectations.UNIQUE_KEYS]
    assert expectations.duplicate_keys(outcome.rows) == [{"position_date": "2024-07-01", "id": 1, "rows": 3}]

    drop = expectations.with_policies(
        expectations.DESTINATION_EXPECTATIONS, {**policies, expectations.UNIQUE_KEYS: "drop"}
    )
    outcome = expectations.evaluate_expectations(frame(spark, rows), drop)
    assert outcome.kept_rows_per_date == {"2024-07-01": 3, "2024-07-02": 5}
    kept = sorted((str(r.position_date), r.id, r.value) for r in outcome.rows.collect() if r.id is not None)
    assert [row for row in kept if row[:2] == ("2024-07-01", 1)] == [("2024-07-01", 1, 0.5)]  # lowest value
    assert sum(1 for r in outcome.rows.collect() if r.id is None) == 2  # NULL ids all kept
    # deterministic: the same rows whatever the input order
    shuffled = expectations.evaluate_expectations(frame(spark, list(reversed(rows))), drop)
    assert sorted(map(tuple, shuffled.rows.collect()), key=str) == sorted(map(tuple, outcome.rows.collect()), key=str)


def test_the_kept_share_gate_and_missing_dates_name_their_dates(spark):
    renamed = [(D1, i, 1.0, "X") for i in range(3)]  # all of 07-01 dropped
    mostly = [(D2, 0, 1.0, "A")] + [(D2, i, 1.0, "X") for i in range(1, 4)]  # 1 of 4 kept
    outcome = expectations.evaluate_expectations(frame(spark, renamed + mostly), expectations.DESTINATION_EXPECTATIONS)
    assert outcome.short_dates(0.5) == ["2024-07-01", "2024-07-02"]
    assert outcome.short_dates(0.25) == ["2024-07-01"]  # zero kept always fails
    assert outcome.short_dates(1.0) == ["2024-07-01", "2024-07-02"]

    failure = expectations.data_gate_failure(outcome, DAYS + ["2024-07-03"], 0.25, source="src")
    assert failure.dates == ["2024-07-01", "2024-07-03"]
    assert "2024-07-01: 0 of 3 source row(s) kept (dropped by category_known (3))" in failure.description
    assert "The source src has no rows for business date(s) 2024-07-03" in failure.description
    assert failure.metadata["missing_dates"].value == ["2024-07-03"]
    assert failure.metadata["bad_date_details"].value["2024-07-01"] == {
        "source_rows": 3, "kept_rows": 0, "failed_expectations": [], "dropped_by": {"category_known": 3}
    }
    only_mostly = expectations.evaluate_expectations(frame(spark, mostly), expectations.DESTINATION_EXPECTATIONS)
    assert expectations.data_gate_failure(only_mostly, ["2024-07-02"], 0.25) is None


def test_error_checks_are_blocking_and_a_failed_one_names_its_dates_or_none():
    specs = {spec.name: spec for spec in checks.destination_check_specs()}
    assert {name for name, spec in specs.items() if spec.blocking} == {
        checks.CHECK_ROWS, checks.CHECK_SCHEMA, checks.CHECK_UNIQUE, checks.CHECK_NULLS
    }
    passed = dg.AssetCheckResult(check_name=checks.CHECK_SCHEMA, passed=True)
    warned = dg.AssetCheckResult(check_name=checks.CHECK_COMPLETE, passed=False, severity=dg.AssetCheckSeverity.WARN)
    assert checks.blocking_check_failure([passed, warned], "v1") is None

    per_date = dg.AssetCheckResult(
        check_name=checks.CHECK_ROWS, passed=False,
        metadata={checks.FAILED_DATES: dg.MetadataValue.json(["2024-07-02"])}, description="1 date(s) differ",
    )
    failure = checks.blocking_check_failure([passed, per_date], "table v3")
    assert failure.dates == ["2024-07-02"] and failure.allow_retries is False
    assert failure.metadata["failure_class"].value == "logic"
    assert "after the write (table v3)" in failure.description

    table_wide = dg.AssetCheckResult(check_name=checks.CHECK_SCHEMA, passed=False, description="value: expected double")
    failure = checks.blocking_check_failure([per_date, table_wide], "v3")
    assert failure.dates == [] and "whole table (schema_matches_declaration)" in failure.description


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
    assert result.metadata["problems"].value == [
        "value: expected double, found string", "extra: bigint is not declared"
    ]

    assert checks.check_unique_keys(good, [D1, D2]).passed
    duplicated = frame(spark, good_rows(D1) + [(D1, 1, 3.0, "B")])
    result = checks.check_unique_keys(duplicated, [D1])
    assert not result.passed
    assert result.metadata["duplicate_keys_sample"].value == [{"position_date": "2024-07-01", "id": 1, "rows": 2}]
    assert result.metadata[checks.FAILED_DATES].value == ["2024-07-01"]

    assert checks.check_no_null_keys(good, [D1, D2]).passed
    nulls = frame(spark, good_rows(D1) + [(D1, None, 1.0, "A"), (None, 5, 1.0, "A")])
    result = checks.check_no_null_keys(nulls, [D1])
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert (result.metadata["null_position_date_rows"].value, result.metadata["null_id_rows"].value) == (1, 1)
    assert checks.FAILED_DATES not in result.metadata  # a NULL position_date: the whole table
    null_id = frame(spark, good_rows(D1) + [(D1, None, 1.0, "A")])
    result = checks.check_no_null_keys(null_id, [D1])
    assert result.metadata[checks.FAILED_DATES].value == ["2024-07-01"]
    result = checks.check_no_null_keys(null_id, [D1], null_ids_allowed=True)  # id_not_null: warn
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN

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


@pytest.fixture(scope="module")
def checks_home(tmp_path_factory, spark):
    """A DAGSTER_HOME with real materializations of destination_data (the UI test reads it too)."""
    root = tmp_path_factory.mktemp("checks")
    settings = Settings(data_dir=root / "data")
    home = make_dagster_home(root / "dagster_home")
    resources = local_resources(settings)
    tables = resources["tables"]
    # the source: 4 rows per weekday 07-01..07-09, plus an unknown category on 07-02 (dropped by
    # category_known) and a NULL id on 07-08 (id_not_null fails that partition)
    weekdays = [dt.date(2024, 7, d) for d in range(1, 10) if dt.date(2024, 7, d).weekday() < 5]
    _append_source(spark, tables, [row for day in weekdays for row in good_rows(day, 4)])
    _append_source(spark, tables, [(D2, 99, 5.0, "Z"), (dt.date(2024, 7, 8), None, 1.0, "A")])
    runs = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        def materialize(**kwargs):
            return dg.materialize(
                [destination_data, source_data], selection=[destination_data], resources=resources,
                instance=instance, raise_on_error=False, **kwargs,
            )

        runs["range"] = materialize(
            tags={
                "dagster/asset_partition_range_start": "2024-07-01",
                "dagster/asset_partition_range_end": "2024-07-03",
            }
        )
        runs["rows_after_range"] = tables.destination.read(spark).count()
        runs["version_before_bad"] = tables.destination.latest_version(spark)
        runs["bad"] = materialize(partition_key="2024-07-08")
        runs["version_after_bad"] = tables.destination.latest_version(spark)
        runs["gap"] = materialize(partition_key="2024-07-09")
        yield settings, home, instance, runs


def test_checks_run_with_every_materialization_and_bad_rows_write_nothing(checks_home):
    _, _, instance, runs = checks_home
    result = runs["range"]
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {
        checks.CHECK_ROWS, checks.CHECK_SCHEMA, checks.CHECK_UNIQUE, checks.CHECK_NULLS, checks.CHECK_COMPLETE
    }
    assert all(e.passed for e in evaluations.values()), {k: e.metadata for k, e in evaluations.items()}
    assert evaluations[checks.CHECK_ROWS].metadata["rows_dropped_by_expectations"].value == 1
    assert evaluations[checks.CHECK_ROWS].metadata["rows_found"].value == 12
    assert runs["rows_after_range"] == 12  # 3 dates x 4 rows; the category 'Z' row dropped
    # the checks are stored in the instance, where the UI reads them
    key = dg.AssetCheckKey(dg.AssetKey("destination_data"), checks.CHECK_ROWS)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])
    assert record[key].status.value == "SUCCEEDED"

    failed = runs["bad"]
    assert not failed.success
    failure = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "id_not_null (1 row(s)) on 2024-07-08" in failure.step_failure_data.error.message
    failure_metadata = failure.step_failure_data.user_failure_data.metadata
    assert failure_metadata["expectations"].value["id_not_null"] == {"policy": "fail", "violations": 1}
    assert failure_metadata["bad_dates"].value == ["2024-07-08"]
    assert runs["version_after_bad"] == runs["version_before_bad"]  # nothing written
    assert [e.event_type_value for e in failed.all_events].count("STEP_UP_FOR_RETRY") == 0  # not retried

    # a gap (07-05 missing between 07-03 and 07-09) makes the completeness check warn, not fail the run
    gap = runs["gap"]
    assert gap.success
    complete = {e.check_name: e for e in gap.get_asset_check_evaluations()}[checks.CHECK_COMPLETE]
    assert not complete.passed and complete.severity == dg.AssetCheckSeverity.WARN
    assert complete.metadata["missing_dates"].value == ["2024-07-05", "2024-07-08"]


# ------------------------------------------------------------------------------------------ UI

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextmanager
def webserver(home, settings):
    """dagster-webserver for ``home`` on 127.0.0.1:<free port>, stopped (process group) on exit."""
    port = free_port()
    log = open(home / "webserver.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(PROJECT_ROOT / "workspace.yaml")],
        cwd=PROJECT_ROOT, env=subprocess_env(settings, home), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, (home / "webserver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "webserver did not answer in 180 s"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process, timeout_s=20)
        log.close()


@pytest.mark.slow
def test_ui_shows_partition_health_and_check_results(checks_home, tmp_path):
    """The UI over the ``checks_home`` fixture's instance (it depends on no other test: run it alone
    with ``-k test_ui``): 07-01..07-03 and 07-09 materialized, 07-08 failed, the completeness check
    failed (warning), the other checks passed."""
    assert os.path.exists(CHROMIUM), (
        "Debian's chromium is needed for the UI test: apt-get install -y chromium (.ci/run does it)"
    )
    from playwright.sync_api import expect, sync_playwright

    settings, home, _, _ = checks_home
    expect.set_options(timeout=90_000)
    ARTIFACTS.mkdir(exist_ok=True)
    with webserver(home, settings) as base, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:],
            headless=True,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(f"{base}/assets/destination_data?view=partitions")
            skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
            try:
                skip.click(timeout=15_000)
            except Exception:
                pass
            # partition health: the status filters carry the counts of each state
            expect(page.get_by_text("Materialized (4)")).to_be_visible()
            expect(page.get_by_text("Failed (1)")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "ui_destination_data_partitions.png"))

            page.goto(f"{base}/assets/destination_data?view=checks")
            expect(page.get_by_text("Checks (5)")).to_be_visible()
            for name in (checks.CHECK_ROWS, checks.CHECK_SCHEMA, checks.CHECK_UNIQUE, checks.CHECK_NULLS):
                expect(page.get_by_text(name).first).to_be_visible()
            expect(page.get_by_text("Succeeded").first).to_be_visible()  # the four passing checks
            # the first check is selected: completeness, failed (warning) with its description
            expect(page.get_by_text("2 business day(s) missing between 2024-07-01 and 2024-07-09")).to_be_visible()
            assert page.get_by_text("Succeeded", exact=True).count() == 4
            assert page.get_by_text("Failed", exact=True).count() >= 1
            page.screenshot(path=str(ARTIFACTS / "ui_destination_data_checks.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "ui_destination_data_checks.png").stat().st_size > 10_000
