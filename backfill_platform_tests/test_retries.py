"""The error classifier, on real exceptions: Spark analysis errors from real queries, a real Delta
conflict from two real concurrent writes, real network and HTTP errors from local sockets."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request

import dagster as dg
import pytest

from backfill_platform.faults import (
    FaultInjector,
    InjectedLogicFault,
    InjectedTransientFault,
    parse_faults,
    record_attempt,
)
from backfill_platform.retries import (
    LOGIC,
    TRANSIENT,
    UNKNOWN,
    NoSourceRowsError,
    classify,
    classify_text,
    failure_for,
    retry_policy,
)
from backfill_platform.settings import Settings, SettingsError

from .conftest import free_port


def _raised(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the point is to capture the real exception
        return error
    raise AssertionError("expected an exception")


def test_spark_missing_table_and_column_are_logic_errors(spark):
    missing_table = _raised(lambda: spark.sql("SELECT * FROM no_such_table_anywhere").collect())
    missing_column = _raised(lambda: spark.range(1).select("no_such_column").collect())
    assert type(missing_table).__name__ == "AnalysisException"
    assert classify(missing_table).kind == LOGIC
    assert classify(missing_table).reason == "missing table or column (Spark analysis error)"
    assert classify(missing_column).kind == LOGIC


def test_delta_schema_mismatch_is_a_logic_error(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    mismatch = _raised(
        lambda: spark.range(3).selectExpr("CAST(id AS STRING) AS id").write.format("delta").mode("append").save(path)
    )
    result = classify(mismatch)
    assert (result.kind, result.reason) == (LOGIC, "schema mismatch")


def test_real_concurrent_delta_writes_conflict_and_are_transient(spark, tmp_path):
    """Two threads replace the same partitions at once: Delta lets one commit and rejects the other."""
    import delta.exceptions  # noqa: F401 - installs Delta's typed Python exceptions
    from pyspark.sql import functions as F

    path = str(tmp_path / "conflict")
    spark.range(8).select((F.col("id") % 2).alias("p"), "id").write.format("delta").partitionBy("p").save(path)
    errors: list[BaseException] = []

    def overwrite(offset: int) -> None:
        frame = spark.range(8).select((F.col("id") % 2).alias("p"), (F.col("id") + offset).alias("id"))
        try:
            frame.write.format("delta").mode("overwrite").option("replaceWhere", "p IN (0, 1)").save(path)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    for _ in range(6):  # a conflict happens in the first round almost always; a few more to be sure
        threads = [threading.Thread(target=overwrite, args=(offset,)) for offset in (100, 200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            break
    assert errors, "two concurrent replaceWhere writes of the same partitions never conflicted"
    conflict = errors[0]
    concurrent_types = tuple(
        getattr(delta.exceptions, name) for name in delta.exceptions.__all__ if name.startswith("Concurrent")
    )
    assert isinstance(conflict, concurrent_types), type(conflict)
    assert (classify(conflict).kind, classify(conflict).reason) == (TRANSIENT, "Delta concurrent modification")
    # the losing write changed nothing: the table holds one writer's 8 rows
    assert spark.read.format("delta").load(path).count() == 8


@pytest.fixture
def http_status_server():
    """A local HTTP server answering every request with the status in the path: /503 -> 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(int(self.path.strip("/")))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_429_and_5xx_are_transient_4xx_is_not(http_status_server):
    def status(code):
        return _raised(lambda: urllib.request.urlopen(f"{http_status_server}/{code}", timeout=5))

    for code in (429, 500, 502, 503, 504):
        error = status(code)
        assert isinstance(error, urllib.error.HTTPError)
        assert classify(error).kind == TRANSIENT, code
    assert classify(status(404)).kind == UNKNOWN


def test_network_errors_are_transient():
    refused = _raised(lambda: urllib.request.urlopen(f"http://127.0.0.1:{free_port()}/", timeout=5))
    import requests

    refused_requests = _raised(lambda: requests.get(f"http://127.0.0.1:{free_port()}/", timeout=5))
    assert classify(refused).kind == TRANSIENT
    assert classify(refused_requests).kind == TRANSIENT


def test_databricks_failures_are_transient_by_type_and_message():
    from dagster_databricks.databricks import DatabricksError
    from databricks.sdk.errors import InternalError, NotFound, TemporarilyUnavailable, TooManyRequests

    assert classify(TemporarilyUnavailable("workspace is temporarily unavailable")).kind == TRANSIENT
    assert classify(TooManyRequests("rate limited")).kind == TRANSIENT
    assert classify(InternalError("boom")).kind == TRANSIENT
    assert classify(NotFound("no such job")).kind == UNKNOWN
    for message in (
        "Run `12` failed with result state: `INTERNAL_ERROR`. Message: Task failed with internal error.",
        "Run `13` failed with result state: `FAILED`. Message: The driver is temporarily unavailable.",
        "Run `14` failed with result state: `FAILED`. Message: CLUSTER_START_FAILURE: cloud provider.",
        "Run `15` failed with result state: `TIMEDOUT`. Message: Run timed out.",
        "Run `16` took more than 1800s to complete. Failing the run.",
    ):
        assert classify(DatabricksError(message)).kind == TRANSIENT, message
    assert classify(DatabricksError("Run `17` failed: `FAILED`. Message: AnalysisException: "
                                    "[UNRESOLVED_COLUMN] x")).kind == UNKNOWN
    assert classify_text("DatabricksError", "Run `15` failed with result state: `TIMEDOUT`.") == TRANSIENT


def test_data_config_and_programming_errors_are_logic_and_causes_are_followed():
    assert classify(NoSourceRowsError("no rows", dates=["2024-03-04"])).kind == LOGIC
    assert classify(SettingsError("BACKFILL_X is bad")).kind == LOGIC
    assert classify(TypeError("unsupported operand")).kind == LOGIC
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        assert classify(outer).kind == TRANSIENT
    assert classify(RuntimeError("something new")).kind == UNKNOWN


def test_failure_for_stops_retries_only_for_logic_errors():
    logic = failure_for(NoSourceRowsError("no rows", dates=["2024-03-05"]), ["2024-03-04", "2024-03-05"])
    transient = failure_for(ConnectionResetError("reset"), ["2024-03-04"])
    unknown = failure_for(RuntimeError("new"), ["2024-03-04"])
    asset_failure = failure_for(
        dg.Failure("no source rows", metadata={"missing_dates": ["2024-03-06"]}, allow_retries=False)
    )
    assert logic.allow_retries is False and logic.metadata["error_class"].value == LOGIC
    assert logic.metadata["bad_dates"].value == ["2024-03-05"]
    assert transient.allow_retries is True and transient.metadata["error_class"].value == TRANSIENT
    assert unknown.allow_retries is True and unknown.metadata["error_class"].value == UNKNOWN
    assert asset_failure.allow_retries is False and asset_failure.metadata["bad_dates"].value == ["2024-03-06"]
    assert "Not retried" in logic.description and "retried with backoff" in transient.description


def test_retry_policy_defaults_and_settings():
    default = retry_policy(Settings())
    assert (default.max_retries, default.delay) == (3, 60.0)
    assert default.backoff == dg.Backoff.EXPONENTIAL and default.jitter == dg.Jitter.PLUS_MINUS
    short = retry_policy(Settings.from_env({"BACKFILL_STEP_MAX_RETRIES": "2", "BACKFILL_STEP_RETRY_DELAY_SECONDS": "0.2"}))
    assert (short.max_retries, short.delay) == (2, 0.2)
    with pytest.raises(SettingsError, match="BACKFILL_STEP_RETRY_DELAY_SECONDS"):
        Settings.from_env({"BACKFILL_STEP_RETRY_DELAY_SECONDS": "soon"})


def test_fault_injection_counts_attempts_across_injectors(tmp_path):
    spec = "2024-03-04=transient:2,2024-03-05=logic,2024-03-06=kill:1"
    assert parse_faults(spec)["2024-03-04"].times == 2
    with pytest.raises(SettingsError, match="BACKFILL_FAULTS"):
        parse_faults("2024-03-04=flaky")
    first = FaultInjector(parse_faults(spec), tmp_path)
    second = FaultInjector(parse_faults(spec), tmp_path)  # another process, same counters
    with pytest.raises(InjectedTransientFault):
        first.before_write(["2024-03-04"])
    with pytest.raises(InjectedTransientFault):
        second.before_write(["2024-03-04"])
    assert first.before_write(["2024-03-04", "2024-03-07"]) == []
    assert classify(_raised(lambda: first.before_write(["2024-03-05"]))).kind == LOGIC
    # a kill stays armed until a Spark task fires it (records it), however often attempts start
    assert second.before_write(["2024-03-06"]) == ["2024-03-06"]
    assert second.before_write(["2024-03-06"]) == ["2024-03-06"] and first.attempts("2024-03-06") == 0
    assert record_attempt(tmp_path / "2024-03-06.attempts", "kill 1") == 1
    assert record_attempt(tmp_path / "2024-03-06.attempts", "kill 1") == 1  # a second task, same attempt
    assert second.before_write(["2024-03-06"]) == [] and first.attempts("2024-03-06") == 1
    assert first.attempts("2024-03-04") == 3 and first.attempts("2024-03-05") == 1
    assert FaultInjector(parse_faults(""), tmp_path).before_write(["2024-03-04"]) == []
    assert isinstance(_raised(lambda: first.before_write(["2024-03-05"])), InjectedLogicFault)
