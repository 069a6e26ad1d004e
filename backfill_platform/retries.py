"""Which failures are worth retrying: one small classifier, and the retry policy that uses it.

``classify(error)`` walks the exception and its causes and answers ``TRANSIENT`` (retry: the same
input can succeed later), ``LOGIC`` (do not retry: the code, the data or the configuration must
change first) or ``UNKNOWN`` (retried, like transient, but reported as unclassified).

- transient: Databricks internal errors, lost driver, cluster start failures, run timeouts, HTTP 429
  and 5xx, network errors, Delta concurrent-modification conflicts;
- logic/data: Spark analysis errors (missing table or column), schema mismatch, a business date
  without source rows, failed data-quality expectations, bad configuration, Python programming errors.

The rules are data (``RULES``): an exception type (matched by class name anywhere in the MRO, so
optional libraries need not be importable), an error condition of a ``PySparkException``, or a
message pattern. Add a ``Rule`` to extend it; the first matching rule wins, logic rules first.

``destination_data`` runs its body inside :func:`classified_failures`, which turns any exception into
a ``dagster.Failure`` carrying ``error_class`` metadata: ``allow_retries=False`` for logic errors (the
``RetryPolicy`` then stops at once), ``allow_retries=True`` otherwise. The rerun sensor and the
alerts read that metadata back from the step-failure event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import dagster as dg

from backfill_platform.settings import Settings, SettingsError

TRANSIENT = "transient"
LOGIC = "logic"
UNKNOWN = "unknown"

ERROR_CLASS_KEY = "error_class"  # metadata key on the step's Failure
ERROR_REASON_KEY = "error_reason"
BAD_DATES_KEY = "bad_dates"  # dates a logic error is known to be about (others in the run are fine)


class DataQualityError(Exception):
    """A data-quality expectation failed; ``dates`` are the business dates it is about."""

    def __init__(self, message: str, dates: Sequence[str] = ()):
        super().__init__(message)
        self.dates = list(dates)


class NoSourceRowsError(DataQualityError):
    """A business date has no rows in the source: nothing to copy, rerunning cannot help."""


@dataclasses.dataclass(frozen=True)
class Classification:
    kind: str  # TRANSIENT, LOGIC or UNKNOWN
    reason: str  # which rule matched, for humans: "Delta concurrent modification", ...
    error: BaseException

    @property
    def retryable(self) -> bool:
        return self.kind != LOGIC


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: str
    reason: str
    type_names: tuple[str, ...] = ()  # class names anywhere in the exception's MRO
    conditions: tuple[str, ...] = ()  # PySparkException.getCondition() prefixes
    message: str | None = None  # regex searched in str(error), case-insensitive
    when: Callable[[BaseException], bool] | None = None  # extra condition on a type match

    def matches(self, error: BaseException) -> bool:
        if self.type_names and _type_names(error) & set(self.type_names):
            if self.when is None or self.when(error):
                return True
        if self.conditions:
            condition = _spark_condition(error)
            if condition and condition.startswith(self.conditions):
                return True
        return bool(self.message and re.search(self.message, str(error), re.IGNORECASE))


RULES: list[Rule] = [
    # --- logic / data: fail once, fast ---------------------------------------------------------
    Rule(LOGIC, "data-quality expectation failed", type_names=("DataQualityError", "NoSourceRowsError")),
    Rule(LOGIC, "bad configuration", type_names=("SettingsError", "DagsterInvalidConfigError",
                                                 "DagsterInvalidDefinitionError", "InvalidPartitionDateError")),
    Rule(LOGIC, "schema mismatch", conditions=("DELTA_FAILED_TO_MERGE_FIELDS", "_LEGACY_ERROR_TEMP_DELTA_0007",
                                               "DELTA_SCHEMA_MISMATCH", "DELTA_METADATA_MISMATCH",
                                               "CANNOT_UP_CAST", "INCOMPATIBLE_DATA_FOR_TABLE",
                                               "DELTA_COLUMN_NOT_FOUND", "DATATYPE_MISMATCH"),
         message=r"schema mismatch|failed to merge fields|cannot be cast"),
    Rule(LOGIC, "missing table or column (Spark analysis error)",
         conditions=("TABLE_OR_VIEW_NOT_FOUND", "UNRESOLVED_COLUMN", "UNRESOLVED_ROUTINE", "PATH_NOT_FOUND",
                     "DELTA_TABLE_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE", "SCHEMA_NOT_FOUND",
                     "PARSE_SYNTAX_ERROR"),
         type_names=("ParseException",)),
    Rule(LOGIC, "Spark analysis error", type_names=("AnalysisException",)),
    Rule(LOGIC, "Python programming error", type_names=("TypeError", "AttributeError", "NameError",
                                                       "KeyError", "ZeroDivisionError", "AssertionError",
                                                       "ImportError", "NotImplementedError")),
    # --- transient: retry with backoff ---------------------------------------------------------
    Rule(TRANSIENT, "Delta concurrent modification",
         type_names=("DeltaConcurrentModificationException", "ConcurrentWriteException",
                     "ConcurrentAppendException", "ConcurrentDeleteReadException",
                     "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
                     "MetadataChangedException", "ProtocolChangedException"),
         conditions=("DELTA_CONCURRENT_",),
         message=r"Concurrent(Append|Write|DeleteRead|DeleteDelete|Transaction)Exception"),
    Rule(TRANSIENT, "HTTP 429 / 5xx from a service",
         type_names=("TooManyRequests", "ResourceExhausted", "RequestLimitExceeded", "InternalError",
                     "TemporarilyUnavailable", "DeadlineExceeded", "Unknown", "DataLoss"),
         message=r"\b(429|50[0-4])\b.*(error|status|too many|unavailable)|"
                 r"(status|error)( code)?:? ?(429|50[0-4])\b|too many requests|service unavailable"),
    # any other HTTP status error (4xx): not a network problem, even though HTTPError is a URLError
    Rule(UNKNOWN, "HTTP client error", type_names=("HTTPError",), when=lambda e: _http_status(e) is not None),
    Rule(TRANSIENT, "Databricks internal error / lost driver / cluster start failure",
         message=r"INTERNAL_ERROR|DRIVER_(UNREACHABLE|UNRESPONSIVE|ERROR)|driver (is )?(temporarily )?"
                 r"(unavailable|unreachable|unresponsive|was lost|has stopped unexpectedly)|lost driver|"
                 r"CLUSTER_START_FAILURE|CLOUD_PROVIDER_LAUNCH_FAILURE|SPARK_STARTUP_FAILURE|"
                 r"cluster (failed to start|terminated unexpectedly|is unreachable)|"
                 r"INSTANCE_UNREACHABLE|SPOT_INSTANCE_TERMINATION|TEMPORARILY_UNAVAILABLE"),
    Rule(TRANSIENT, "run or request timeout",
         type_names=("TimeoutError", "Timeout", "ReadTimeout", "ConnectTimeout", "socket.timeout"),
         message=r"\bTIMEDOUT\b|timed out|took more than .*s to complete|exceeded maximum runtime"),
    Rule(TRANSIENT, "network error",
         type_names=("ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError",
                     "Py4JNetworkError", "ProtocolError", "RemoteDisconnected", "URLError",
                     "NewConnectionError", "MaxRetryError", "gaierror"),
         message=r"connection (refused|reset|aborted)|network is unreachable|name or service not known"),
]


def classify(error: BaseException, rules: Iterable[Rule] | None = None) -> Classification:
    """Classify ``error`` by the first rule that matches it or any exception in its cause chain."""
    rules = list(RULES if rules is None else rules)
    chain = list(_chain(error))
    for rule in rules:
        for link in chain:
            if rule.matches(link):
                return Classification(rule.kind, rule.reason, error)
    return Classification(UNKNOWN, f"unclassified {type(error).__name__}", error)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, dg.DagsterUserCodeExecutionError) and current.user_exception:
            current = current.user_exception
        else:
            current = current.__cause__ or current.__context__


def _type_names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of a urllib / requests HTTPError (None for other errors)."""
    status = getattr(error, "code", None)
    if status is None and getattr(error, "response", None) is not None:
        status = getattr(error.response, "status_code", None)
    return status if isinstance(status, int) else None


def _spark_condition(error: BaseException) -> str | None:
    getter = getattr(error, "getCondition", None) or getattr(error, "getErrorClass", None)
    if getter is None:
        return None
    try:
        return getter()
    except Exception:
        return None


def retry_policy(settings: Settings) -> dg.RetryPolicy:
    """The seed's ``max_retries: 3`` / ``min_retry_interval_millis: 60000``, with exponential backoff
    and jitter: Dagster waits (2^n - 1) * delay +/- delay before retry n, i.e. about 60, 180 and
    420 s (each +/- 60 s) by default."""
    return dg.RetryPolicy(
        max_retries=settings.step_max_retries,
        delay=settings.step_retry_delay_seconds,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def failure_for(error: BaseException, dates: Sequence[str] = ()) -> dg.Failure:
    """The ``dagster.Failure`` that reports ``error`` with its class (and stops retries for logic)."""
    result = classify(error)
    bad_dates = list(getattr(error, "dates", []) or [])
    if isinstance(error, dg.Failure):
        description = error.description or str(error)
        metadata = {key: value for key, value in (error.metadata or {}).items()}
        if not bad_dates and "missing_dates" in metadata:
            raw = metadata["missing_dates"]
            bad_dates = list(getattr(raw, "value", raw))
        kind = LOGIC if not error.allow_retries else result.kind
        reason = "data or configuration problem reported by the asset" if kind == LOGIC else result.reason
    else:
        description = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        metadata = {}
        kind, reason = result.kind, result.reason
    what = {
        LOGIC: "Not retried: fix the data, the code or the configuration, then rerun.",
        TRANSIENT: "Transient: retried with backoff.",
        UNKNOWN: "Unclassified: retried like a transient error.",
    }[kind]
    metadata.update(
        {
            ERROR_CLASS_KEY: kind,
            ERROR_REASON_KEY: reason,
            BAD_DATES_KEY: dg.MetadataValue.json(bad_dates),
            "dates_in_run": dg.MetadataValue.json(list(dates)),
        }
    )
    return dg.Failure(
        description=f"[{kind}: {reason}] {description}\n{what}",
        metadata=metadata,
        allow_retries=kind != LOGIC,
    )


@contextlib.contextmanager
def classified_failures(dates: Sequence[str] = ()) -> Iterator[None]:
    """Run a step body; re-raise whatever it raises as a classified ``dagster.Failure``."""
    try:
        yield
    except dg.RetryRequested:
        raise
    except dg.DagsterExecutionInterruptedError:
        raise
    except Exception as error:
        raise failure_for(error, dates) from error


__all__ = [
    "BAD_DATES_KEY",
    "Classification",
    "DataQualityError",
    "ERROR_CLASS_KEY",
    "LOGIC",
    "NoSourceRowsError",
    "RULES",
    "Rule",
    "SettingsError",
    "TRANSIENT",
    "UNKNOWN",
    "classified_failures",
    "classify",
    "failure_for",
    "retry_policy",
]


def classify_text(type_name: str, message: str, rules: Iterable[Rule] | None = None) -> str:
    """Classify a failure known only by its type name and message (e.g. from an event log)."""
    for rule in RULES if rules is None else rules:
        if type_name and type_name in rule.type_names and rule.when is None:
            return rule.kind
        if rule.message and re.search(rule.message, message or "", re.IGNORECASE):
            return rule.kind
    return UNKNOWN
