"""The one failure classifier (``classification.py``): a table pinning each error kind to exactly
one class, then real exceptions: Spark analysis errors from real queries, a real Delta conflict from
two real concurrent writes, real network and HTTP errors from local sockets, a real step failure read
back from a Dagster event log, and the Databricks launcher's failures."""

from __future__ import annotations

import errno
import http.server
import io
import threading
import urllib.error
import urllib.request

import dagster as dg
import pytest
from databricks.sdk import errors as sdk_errors
from py4j.protocol import Py4JError, Py4JNetworkError
from pyspark.errors import AnalysisException, PySparkRuntimeError

from backfill_platform.classification import (
    BAD_DATES_KEY,
    CANCELED,
    CLASSIFIED_TYPE_NAMES,
    FAILURE_CLASS_KEY,
    FAILURE_REASON_KEY,
    LOGIC,
    TRANSIENT,
    UNKNOWN,
    DataQualityError,
    FailureClass,
    classification_of_failure,
    classified_failures,
    classify,
    classify_run_state,
    classify_text,
    failure_for,
    http_status,
)
from backfill_platform.resources.databricks_failures import ERROR_TYPES, api_failure, run_failure
from backfill_platform.retrying import RetrySchedule
from backfill_platform.sensors.failures import LOGIC_FINAL, RANGE_WIDE_LOGIC_FINAL, FailedRun, final_dates
from backfill_platform.settings import Settings, SettingsError

from .conftest import free_port


def _raised(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the point is to capture the real exception
        return error
    raise AssertionError("expected an exception")


# ----------------------------------------------------------------------------- the table


class SparkConditionError(Exception):
    """A JVM-side Spark error as PySpark surfaces it: only ``getCondition()`` matters here (PySpark's
    own constructor accepts only its Python-side conditions, not the JVM's)."""

    def __init__(self, condition: str):
        super().__init__(f"[{condition}] emulated")
        self.condition = condition

    def getCondition(self) -> str:  # noqa: N802 - PySpark's name
        return self.condition


def _delta_conflict(name: str) -> Exception:
    """A Delta concurrent-modification exception, recognised by its class name alone."""
    return type(name, (Exception,), {})("Files were added to partition [p=0] by a concurrent update.")


def _http_error(status: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://127.0.0.1/x", status, "status", {}, io.BytesIO(b""))


def _requests_http_error(status: int) -> Exception:
    import requests

    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} error", response=response)


def _chained(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as cause:
            raise outer from cause
    except Exception as error:  # noqa: BLE001
        return error


ERROR_TABLE = [
    # databricks-sdk error classes (their HTTP status), and subclasses by inheritance
    ("sdk BadRequest 400", lambda: sdk_errors.BadRequest("x"), LOGIC),
    ("sdk Unauthenticated 401", lambda: sdk_errors.Unauthenticated("x"), LOGIC),
    ("sdk PermissionDenied 403", lambda: sdk_errors.PermissionDenied("x"), LOGIC),
    ("sdk NotFound 404", lambda: sdk_errors.NotFound("x"), LOGIC),
    ("sdk ResourceConflict 409", lambda: sdk_errors.ResourceConflict("x"), LOGIC),
    ("sdk TooManyRequests 429", lambda: sdk_errors.TooManyRequests("x"), TRANSIENT),
    ("sdk InternalError 500", lambda: sdk_errors.InternalError("x"), TRANSIENT),
    ("sdk NotImplemented 501", lambda: sdk_errors.NotImplemented("x"), LOGIC),
    ("sdk TemporarilyUnavailable 503", lambda: sdk_errors.TemporarilyUnavailable("x"), TRANSIENT),
    ("sdk DeadlineExceeded 504", lambda: sdk_errors.DeadlineExceeded("x"), TRANSIENT),
    ("sdk ResourceExhausted (429)", lambda: sdk_errors.ResourceExhausted("x"), TRANSIENT),
    ("sdk ResourceDoesNotExist (404)", lambda: sdk_errors.ResourceDoesNotExist("x"), LOGIC),
    ("sdk DatabricksError, no status", lambda: sdk_errors.DatabricksError("x"), UNKNOWN),
    # HTTP statuses (urllib, requests)
    *[(f"HTTP {s}", (lambda s=s: _http_error(s)), LOGIC) for s in (400, 401, 403, 404, 409, 422, 501)],
    *[(f"HTTP {s}", (lambda s=s: _http_error(s)), TRANSIENT) for s in (429, 500, 502, 503, 504)],
    ("HTTP 505", lambda: _http_error(505), UNKNOWN),
    ("requests HTTPError 503", lambda: _requests_http_error(503), TRANSIENT),
    ("requests HTTPError 403", lambda: _requests_http_error(403), LOGIC),
    # no HTTP answer at all
    ("URLError connection refused", lambda: urllib.error.URLError(ConnectionRefusedError(111, "refused")), TRANSIENT),
    ("ConnectionResetError", lambda: ConnectionResetError(104, "Connection reset by peer"), TRANSIENT),
    ("ConnectionRefusedError", lambda: ConnectionRefusedError(111, "Connection refused"), TRANSIENT),
    ("BrokenPipeError", lambda: BrokenPipeError(32, "Broken pipe"), TRANSIENT),
    ("TimeoutError", lambda: TimeoutError("read timed out"), TRANSIENT),
    # Spark error conditions
    ("Spark TABLE_OR_VIEW_NOT_FOUND", lambda: SparkConditionError("TABLE_OR_VIEW_NOT_FOUND"), LOGIC),
    ("Spark UNRESOLVED_COLUMN", lambda: SparkConditionError("UNRESOLVED_COLUMN.WITH_SUGGESTION"), LOGIC),
    ("Spark DELTA_FAILED_TO_MERGE_FIELDS", lambda: SparkConditionError("DELTA_FAILED_TO_MERGE_FIELDS"), LOGIC),
    ("Spark DELTA_CONCURRENT_APPEND", lambda: SparkConditionError("DELTA_CONCURRENT_APPEND.WITHOUT_HINT"), TRANSIENT),
    ("Spark AnalysisException", lambda: AnalysisException("cannot resolve `x`"), LOGIC),
    ("PySpark JAVA_GATEWAY_EXITED",
     lambda: PySparkRuntimeError(errorClass="JAVA_GATEWAY_EXITED", messageParameters={}), TRANSIENT),
    # Delta concurrent-modification conflicts, by class name
    *[(f"Delta {name}", (lambda name=name: _delta_conflict(name)), TRANSIENT)
      for name in ("ConcurrentAppendException", "ConcurrentWriteException", "ConcurrentDeleteReadException",
                   "ConcurrentTransactionException", "MetadataChangedException", "ProtocolChangedException")],
    # OS, memory
    ("OSError ENOSPC", lambda: OSError(errno.ENOSPC, "No space left on device"), LOGIC),
    ("MemoryError", lambda: MemoryError(), LOGIC),
    ("OSError EACCES", lambda: PermissionError(errno.EACCES, "Permission denied"), UNKNOWN),
    # the JVM / py4j gateway died
    ("py4j Py4JNetworkError", lambda: Py4JNetworkError("Answer from Java side is empty"), TRANSIENT),
    ("py4j cannot connect to the JVM",
     lambda: Py4JError("An error occurred while trying to connect to the Java server (127.0.0.1:25333)"), TRANSIENT),
    ("Java gateway process exited",
     lambda: RuntimeError("Java gateway process exited before sending its port number"), TRANSIENT),
    # Dagster interruption (run terminated)
    ("DagsterExecutionInterruptedError", lambda: dg.DagsterExecutionInterruptedError(), CANCELED),
    # data, configuration, programming errors
    ("DataQualityError", lambda: DataQualityError("no rows", dates=["2024-03-04"]), LOGIC),
    ("SettingsError", lambda: SettingsError("BACKFILL_X is bad"), LOGIC),
    ("TypeError", lambda: TypeError("unsupported operand"), LOGIC),
    ("RuntimeError", lambda: RuntimeError("something new"), UNKNOWN),
    # the cause chain is followed
    ("RuntimeError from ConnectionResetError",
     lambda: _chained(RuntimeError("write failed"), ConnectionResetError("reset")), TRANSIENT),
]


@pytest.mark.parametrize("make_error, expected", [case[1:] for case in ERROR_TABLE], ids=[c[0] for c in ERROR_TABLE])
def test_each_error_kind_has_exactly_one_class(make_error, expected):
    result = classify(make_error())
    assert result.kind is expected, result
    assert isinstance(result.kind, FailureClass) and result.reason


RUN_STATE_TABLE = [
    ("canceled", ("TERMINATED", "CANCELED", "Run cancelled."), CANCELED),
    ("canceled while pending", ("TERMINATED", "CANCELED", "Run cancelled while pending."), CANCELED),
    ("internal error", ("INTERNAL_ERROR", "FAILED", "Task failed with an emulated error."), TRANSIENT),
    ("internal error, no result", ("INTERNAL_ERROR", None, None), TRANSIENT),
    ("timed out", ("TERMINATED", "TIMEDOUT", "Run timed out after 60 seconds."), TRANSIENT),
    ("lost driver", ("TERMINATED", "FAILED", "The Spark driver has stopped unexpectedly and is restarting."),
     TRANSIENT),
    ("cluster terminated", ("TERMINATED", "FAILED", "Cluster terminated unexpectedly."), TRANSIENT),
    ("spot instance", ("TERMINATED", "FAILED", "Spot instance termination: node was lost."), TRANSIENT),
    ("cluster start", ("INTERNAL_ERROR", "FAILED", "Cluster 0101 failed to start."), TRANSIENT),
    ("failed: user code", ("TERMINATED", "FAILED", "Workload failed, see run output for details."), LOGIC),
    ("failed: no message", ("TERMINATED", "FAILED", None), LOGIC),
]


@pytest.mark.parametrize("state, expected", [c[1:] for c in RUN_STATE_TABLE], ids=[c[0] for c in RUN_STATE_TABLE])
def test_each_databricks_run_state_has_exactly_one_class(state, expected):
    assert classify_run_state(*state) is expected


def test_http_status_reads_urllib_requests_and_databricks_sdk_errors():
    assert http_status(_http_error(418)) == 418
    assert http_status(_requests_http_error(502)) == 502
    assert http_status(sdk_errors.ResourceExhausted("x")) == 429
    assert http_status(sdk_errors.DatabricksError("x")) is None
    assert http_status(ConnectionResetError("reset")) is None
    assert http_status("TemporarilyUnavailable") == 503


def test_classify_text_uses_the_same_rules():
    assert classify_text("DatabricksError", "Run `15` failed with result state: `TIMEDOUT`.") is TRANSIENT
    assert classify_text("NotFound", "no such job") is LOGIC
    assert classify_text("TooManyRequests", "slow down") is TRANSIENT
    assert classify_text("DagsterExecutionInterruptedError", "") is CANCELED
    assert classify_text("DatabricksCanceledError", "[databricks:canceled] ...") is CANCELED
    assert classify_text("OSError", "[Errno 28] No space left on device") is LOGIC
    assert classify_text("Py4JNetworkError", "Answer from Java side is empty") is TRANSIENT
    assert classify_text("RuntimeError", "something new") is UNKNOWN


# ----------------------------------------------------------------------------- real exceptions


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


def test_real_http_429_and_5xx_are_transient_4xx_is_logic(http_status_server):
    def status(code):
        return _raised(lambda: urllib.request.urlopen(f"{http_status_server}/{code}", timeout=5))

    for code in (429, 500, 502, 503, 504):
        error = status(code)
        assert isinstance(error, urllib.error.HTTPError)
        assert classify(error).kind == TRANSIENT, code
    for code in (400, 403, 404, 501):
        assert classify(status(code)).kind == LOGIC, code


def test_real_network_errors_are_transient():
    refused = _raised(lambda: urllib.request.urlopen(f"http://127.0.0.1:{free_port()}/", timeout=5))
    import requests

    refused_requests = _raised(lambda: requests.get(f"http://127.0.0.1:{free_port()}/", timeout=5))
    assert classify(refused).kind == TRANSIENT
    assert classify(refused_requests).kind == TRANSIENT


def test_dagster_databricks_poll_errors_are_classified_by_message():
    from dagster_databricks.databricks import DatabricksError

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


def test_injected_test_faults_are_classified():
    from backfill_platform_tests.faults import InjectedLogicFault, InjectedTransientFault

    assert classify(InjectedTransientFault("connection reset while processing 2024-03-04")).kind == TRANSIENT
    assert classify(InjectedLogicFault("injected data-quality failure", dates=["2024-03-05"])).kind == LOGIC


# ----------------------------------------------------------------------------- reporting


def test_failure_for_stops_retries_for_logic_and_canceled_only():
    logic = failure_for(DataQualityError("no rows", dates=["2024-03-05"]), ["2024-03-04", "2024-03-05"])
    transient = failure_for(ConnectionResetError("reset"), ["2024-03-04"])
    unknown = failure_for(RuntimeError("new"), ["2024-03-04"])
    asset_failure = failure_for(
        dg.Failure("no source rows", metadata={"missing_dates": ["2024-03-06"]}, allow_retries=False)
    )
    canceled = failure_for(_chained(RuntimeError("stopped"), dg.DagsterExecutionInterruptedError()))
    assert logic.allow_retries is False and logic.metadata[FAILURE_CLASS_KEY].value == "logic"
    assert logic.metadata[BAD_DATES_KEY].value == ["2024-03-05"]
    assert logic.metadata[FAILURE_REASON_KEY].value == "data-quality expectation failed"
    assert transient.allow_retries is True and transient.metadata[FAILURE_CLASS_KEY].value == "transient"
    assert unknown.allow_retries is True and unknown.metadata[FAILURE_CLASS_KEY].value == "unknown"
    assert asset_failure.allow_retries is False and asset_failure.metadata[BAD_DATES_KEY].value == ["2024-03-06"]
    assert asset_failure.metadata[FAILURE_CLASS_KEY].value == "logic"
    assert canceled.allow_retries is False and canceled.metadata[FAILURE_CLASS_KEY].value == "canceled"
    assert "Not retried" in logic.description and "retried with backoff" in transient.description
    assert logic.description.startswith("[logic: data-quality expectation failed] DataQualityError: no rows")


def test_classified_failures_passes_interruptions_and_retry_requests_through():
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        with classified_failures(["2024-03-04"]):
            raise dg.DagsterExecutionInterruptedError()
    with pytest.raises(dg.RetryRequested):
        with classified_failures(["2024-03-04"]):
            raise dg.RetryRequested()
    with pytest.raises(dg.Failure) as failure:
        with classified_failures(["2024-03-04"]):
            raise sdk_errors.PermissionDenied("no access to the catalog")
    assert failure.value.allow_retries is False and failure.value.metadata[FAILURE_CLASS_KEY].value == "logic"


def test_a_real_step_failure_reads_back_its_class():
    @dg.asset
    def flaky():
        with classified_failures(["2024-03-04"]):
            raise ConnectionResetError("connection reset by peer")

    with dg.instance_for_test() as instance:
        result = dg.materialize([flaky], instance=instance, raise_on_error=False)
        assert not result.success
        [event] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        data = event.step_failure_data
    assert data.user_failure_data.metadata[FAILURE_CLASS_KEY].value == "transient"
    assert classification_of_failure(data.error, data.user_failure_data.metadata) is TRANSIENT
    assert classification_of_failure(data.error, None) is TRANSIENT  # from the "[transient: ...]" prefix
    assert classification_of_failure(None, {FAILURE_CLASS_KEY: dg.MetadataValue.text("canceled")}) is CANCELED
    assert classification_of_failure(None, {}) is None


def test_retry_schedule_waits_at_least_the_configured_interval():
    """The seed's min_retry_interval is a minimum: jitter only adds (issue 10). Dagster's own
    Jitter.PLUS_MINUS, which this project used before, could wait 0 s before retry 1."""
    schedule = RetrySchedule.from_settings(Settings().retries)
    assert (schedule.max_retries, schedule.delay_seconds) == (3, 60.0)
    assert [schedule.delay_before(n, rng=lambda: 0.0) for n in (1, 2, 3)] == [60.0, 180.0, 420.0]
    assert [schedule.delay_before(n, rng=lambda: 0.999) for n in (1, 2, 3)] == pytest.approx([119.94, 239.94, 479.94])
    assert min(schedule.delay_before(1) for _ in range(2000)) >= 60.0
    plus_minus = dg.RetryPolicy(max_retries=3, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
    assert min(plus_minus.calculate_delay(1) for _ in range(2000)) < 60.0  # what the schedule replaces
    with pytest.raises(SettingsError, match="BACKFILL_STEP_RETRY_DELAY_SECONDS"):
        Settings.from_env({"BACKFILL_STEP_RETRY_DELAY_SECONDS": "soon"})


def test_a_retryable_failure_is_raised_as_a_retry_request_and_a_logic_one_as_itself():
    schedule = RetrySchedule(max_retries=2, delay_seconds=1.0)
    with pytest.raises(dg.RetryRequested) as retry:
        with classified_failures(["2024-03-04"], schedule, previous_attempts=1):
            raise ConnectionResetError("connection reset by peer")
    assert retry.value.max_retries == 2 and 3.0 <= retry.value.seconds_to_wait < 4.0
    cause = retry.value.__cause__
    assert isinstance(cause, dg.Failure) and cause.metadata[FAILURE_CLASS_KEY].value == "transient"
    with pytest.raises(dg.Failure) as logic:
        with classified_failures(["2024-03-04"], schedule):
            raise DataQualityError("bad rows", dates=["2024-03-04"])
    assert logic.value.allow_retries is False and logic.value.metadata[FAILURE_CLASS_KEY].value == "logic"


# ----------------------------------------------------------------------------- Databricks launcher


def test_databricks_step_errors_use_the_one_vocabulary():
    lost = run_failure(7, "TERMINATED", "FAILED", "The Spark driver has stopped unexpectedly.", "http://x/run/7")
    canceled = run_failure(8, "TERMINATED", "CANCELED", "Run cancelled.")
    failed = run_failure(9, "TERMINATED", "FAILED", "Workload failed.")
    assert lost.description.startswith("[databricks:transient] Databricks run 7 ended in life_cycle_state=TERMINATED")
    assert (lost.allow_retries, lost.metadata[FAILURE_CLASS_KEY].value) == (True, "transient")
    assert lost.metadata["databricks_run_id"].value == 7
    assert (canceled.allow_retries, canceled.metadata[FAILURE_CLASS_KEY].value) == (False, "canceled")
    assert canceled.description.startswith("[databricks:canceled]")
    assert (failed.allow_retries, failed.metadata[FAILURE_CLASS_KEY].value) == (False, "logic")
    assert classify(canceled).kind is CANCELED  # an already classified failure keeps its class
    for kind, cls in ERROR_TYPES.items():  # classification_of_failure knows them by name
        assert CLASSIFIED_TYPE_NAMES[cls.__name__] is kind


@pytest.mark.parametrize(
    "error, expected, text",
    [
        (sdk_errors.InternalError("boom"), TRANSIENT, "HTTP 500 InternalError"),
        (sdk_errors.TooManyRequests("slow down"), TRANSIENT, "HTTP 429 TooManyRequests"),
        (sdk_errors.PermissionDenied("no"), LOGIC, "HTTP 403 PermissionDenied"),
        (sdk_errors.NotImplemented("no"), LOGIC, "HTTP 501 NotImplemented"),
        (ConnectionRefusedError(111, "Connection refused"), TRANSIENT, "Lost contact"),
    ],
    ids=["500", "429", "403", "501", "refused"],
)
def test_databricks_api_failures_agree_with_classify(error, expected, text):
    failure = api_failure(error)
    assert failure.metadata[FAILURE_CLASS_KEY].value == expected.value == classify(error).kind.value
    assert failure.description.startswith(f"[databricks:{expected.value}]") and text in failure.description
    assert failure.allow_retries is (expected is TRANSIENT)


def test_a_canceled_failure_is_final_for_all_its_dates():
    def failed(error_class: str, partitions: tuple[str, ...]) -> FailedRun:
        return FailedRun(
            run_id="r1", partitions=partitions, error_class=error_class, reason="x", message="",
            bad_dates=(), rerun_attempt=0, will_retry=False, timestamp=0.0,
        )

    chunk = ("2024-03-04", "2024-03-05")
    assert final_dates(failed("canceled", chunk), Settings(), True) == (list(chunk), "canceled")
    assert final_dates(failed("canceled", chunk[:1]), Settings(), False) == (list(chunk[:1]), "canceled")
    assert final_dates(failed("transient", chunk), Settings(), True)[0] == []  # range runs are split instead


def test_a_logic_error_naming_bad_dates_is_final_for_those_and_one_naming_none_for_the_whole_range():
    """Issue 11: one failure, one decision. A logic error with bad dates is per-date (the others are
    rerun as ranges); without bad dates it is range-wide (schema drift, missing table, bad
    configuration) and final for every date of the run at once, so the alert sensor sends one alert."""
    chunk = ("2024-03-04", "2024-03-05", "2024-03-06")

    def failed(bad_dates: tuple[str, ...], partitions: tuple[str, ...] = chunk, will_retry=False) -> FailedRun:
        return FailedRun(
            run_id="r1", partitions=partitions, error_class="logic", reason="x", message="",
            bad_dates=bad_dates, rerun_attempt=0, will_retry=will_retry, timestamp=0.0,
        )

    assert final_dates(failed(("2024-03-05",)), Settings(), True) == (["2024-03-05"], LOGIC_FINAL)
    assert final_dates(failed(()), Settings(), True) == (list(chunk), RANGE_WIDE_LOGIC_FINAL)
    assert final_dates(failed((), chunk[:1]), Settings(), True) == (list(chunk[:1]), LOGIC_FINAL)  # per-date
    assert final_dates(failed(()), Settings(), False) == (list(chunk), LOGIC_FINAL)  # no sensor: all final
    assert final_dates(failed((), will_retry=True), Settings(), True) == ([], "a run retry will follow")
