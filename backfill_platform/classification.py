"""Why a step failed, in one vocabulary: the only failure classifier of the project.

Four classes (:class:`FailureClass`), recorded under one metadata key (``FAILURE_CLASS_KEY``) on
every classified step failure, whether the asset raised it (:func:`classified_failures`) or the
Databricks step launcher did (``resources/databricks_failures.py``):

- ``transient``: the same input can succeed later: HTTP 429/500/502/503/504, no HTTP answer at all
  (connection refused/reset, timeouts), Delta concurrent-modification conflicts, a dead JVM / py4j
  gateway, Databricks ``INTERNAL_ERROR``, ``TIMEDOUT``, lost driver, cluster or spot-instance loss.
  Retried in the step: the body raises ``RetryRequested`` (``retrying.py``; the asset has no op
  ``RetryPolicy``), the Databricks step launcher does the same for Databricks-side failures; then
  rerun by the rerun sensor.
- ``logic``: the code, the data or the configuration must change first: Spark analysis errors,
  schema mismatch, failed data-quality expectations, bad configuration, Python programming errors,
  other HTTP 4xx and 501, disk full (``ENOSPC``), out of memory, a Databricks run that ``FAILED``
  for another reason. ``allow_retries=False``; the sensors give up at once.
- ``canceled``: someone (or Dagster, on run termination) cancelled the work. Never retried, never
  rerun: final.
- ``unknown``: no rule matched. Retried like transient, but reported as unclassified.

The rules are data (``RULES``): first match wins, the never-retried classes (canceled, logic) come
first. A rule matches by exception class name anywhere in the MRO (optional libraries need not be
importable), Spark error condition (``getCondition()``), HTTP status (:func:`http_status`),
Databricks run state, or a message pattern. :func:`classify` walks the cause chain;
:func:`classify_text` works from a type name and a message (event logs);
:func:`classify_run_state` classifies a terminated Databricks run; :func:`classification_of_failure`
reads the class of a recorded step failure back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg


class FailureClass(str, enum.Enum):
    TRANSIENT = "transient"  # retried with backoff, rerun by the sensor
    LOGIC = "logic"  # never retried: fix the data, the code or the configuration
    CANCELED = "canceled"  # never retried, never rerun
    UNKNOWN = "unknown"  # retried like transient, reported as unclassified

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


TRANSIENT, LOGIC, CANCELED, UNKNOWN = (
    FailureClass.TRANSIENT, FailureClass.LOGIC, FailureClass.CANCELED, FailureClass.UNKNOWN
)
RETRIED = frozenset({TRANSIENT, UNKNOWN})  # the classes a RetryPolicy may retry

FAILURE_CLASS_KEY = "failure_class"  # metadata key on every classified step failure
FAILURE_REASON_KEY = "failure_reason"  # which rule matched, for humans
BAD_DATES_KEY = "bad_dates"  # dates a logic error is known to be about (others in the run are fine)


class DataQualityError(Exception):
    """A data-quality expectation failed; ``dates`` are the business dates it is about."""

    def __init__(self, message: str, dates: Sequence[str] = ()):
        super().__init__(message)
        self.dates = list(dates)


@dataclasses.dataclass(frozen=True)
class Classification:
    kind: FailureClass
    reason: str  # which rule matched, for humans: "Delta concurrent modification", ...


@dataclasses.dataclass(frozen=True)
class RunState:
    """A terminated Databricks run, as :func:`classify` sees it (``str()`` is its state message)."""

    life_cycle_state: str | None
    result_state: str | None
    state_message: str | None = None

    def __str__(self) -> str:
        return self.state_message or ""


# ----------------------------------------------------------------------------- HTTP statuses

# databricks-sdk error classes (matched by name in the MRO, under DatabricksError) -> HTTP status.
# Subclasses inherit: ResourceExhausted -> TooManyRequests (429), DataLoss -> InternalError (500)...
DATABRICKS_SDK_STATUSES: dict[str, int] = {
    "BadRequest": 400,
    "Unauthenticated": 401,
    "PermissionDenied": 403,
    "NotFound": 404,
    "ResourceConflict": 409,
    "TooManyRequests": 429,
    "InternalError": 500,
    "NotImplemented": 501,
    "TemporarilyUnavailable": 503,
    "DeadlineExceeded": 504,
}
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
LOGIC_STATUSES = tuple(status for status in range(400, 500) if status != 429) + (501,)
OTHER_STATUSES = tuple(s for s in range(100, 600) if s not in TRANSIENT_STATUSES + LOGIC_STATUSES)


def http_status(error: BaseException | str) -> int | None:
    """The HTTP status an error answers with: urllib / requests ``HTTPError`` and databricks-sdk
    error classes. None when there was no HTTP answer (or ``error`` is not an HTTP error). A type
    name (from an event log) is looked up in the databricks-sdk table only."""
    if isinstance(error, str):
        return DATABRICKS_SDK_STATUSES.get(error)
    names = [cls.__name__ for cls in type(error).__mro__]
    if "DatabricksError" in names:
        for name in names:
            if name in DATABRICKS_SDK_STATUSES:
                return DATABRICKS_SDK_STATUSES[name]
    if "HTTPError" in names:  # urllib.error.HTTPError (.code), requests.HTTPError (.response)
        status = getattr(error, "code", None)
        response = getattr(error, "response", None)
        if not isinstance(status, int) and response is not None:
            status = getattr(response, "status_code", None)
        if isinstance(status, int) and 100 <= status <= 599:
            return status
    return None


# ----------------------------------------------------------------------------- the rules


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: FailureClass
    reason: str
    type_names: tuple[str, ...] = ()  # class names anywhere in the exception's MRO
    when: Callable[[BaseException], bool] | None = None  # extra condition on a type-name match
    conditions: tuple[str, ...] = ()  # Spark error condition (getCondition()) prefixes
    statuses: tuple[int, ...] = ()  # HTTP statuses (http_status)
    life_cycle_states: tuple[str, ...] = ()  # Databricks run life_cycle_state
    result_states: tuple[str, ...] = ()  # Databricks run result_state
    message: str | None = None  # regex searched in str(error), case-insensitive

    def matches(self, error: Any) -> bool:
        if self.type_names and _type_names(error) & set(self.type_names):
            if self.when is None or self.when(error):
                return True
        if self.conditions:
            condition = _spark_condition(error)
            if condition and condition.startswith(self.conditions):
                return True
        if self.statuses and http_status(error) in self.statuses:
            return True
        if self.life_cycle_states and getattr(error, "life_cycle_state", None) in self.life_cycle_states:
            return True
        if self.result_states and getattr(error, "result_state", None) in self.result_states:
            return True
        return self.matches_text(str(error))

    def matches_text(self, text: str) -> bool:
        return bool(self.message and re.search(self.message, text or "", re.IGNORECASE))


def _disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC


# state_message fragments (and error messages) of a platform, not the code, ending a Databricks run.
DATABRICKS_INFRA_MESSAGE = (
    r"INTERNAL_ERROR|internal error|DRIVER_(UNREACHABLE|UNRESPONSIVE|ERROR)|lost driver|"
    r"driver (is )?(temporarily )?(unavailable|unreachable|unresponsive|was lost|lost|"
    r"has stopped( unexpectedly)?|was restarted)|could not reach driver|"
    r"CLUSTER_START_FAILURE|CLOUD_PROVIDER_LAUNCH_FAILURE|SPARK_STARTUP_FAILURE|cloud provider|"
    r"cluster (failed to start|was terminated|terminated unexpectedly|became unreachable|is unreachable)|"
    r"INSTANCE_UNREACHABLE|SPOT_INSTANCE_TERMINATION|spot instance|instance (was )?(lost|terminated)|"
    r"lost executor|unexpected failure while waiting for the cluster|TEMPORARILY_UNAVAILABLE"
)

RULES: list[Rule] = [
    # --- canceled: never retried, never rerun -------------------------------------------------
    Rule(CANCELED, "run terminated (Dagster interruption)", type_names=("DagsterExecutionInterruptedError",)),
    Rule(CANCELED, "Databricks run canceled", result_states=("CANCELED",)),
    # --- logic / data: fail once, fast ---------------------------------------------------------
    Rule(LOGIC, "data-quality expectation failed", type_names=("DataQualityError",)),
    Rule(LOGIC, "bad configuration", type_names=("SettingsError", "DagsterInvalidConfigError",
                                                 "DagsterInvalidDefinitionError", "InvalidPartitionDateError")),
    Rule(LOGIC, "disk full (ENOSPC)", type_names=("OSError",), when=_disk_full,
         message=r"No space left on device"),
    Rule(LOGIC, "out of memory", type_names=("MemoryError",), message=r"java\.lang\.OutOfMemoryError"),
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
    Rule(LOGIC, "HTTP 4xx / 501: request rejected", statuses=LOGIC_STATUSES),
    # --- transient: retry with backoff ---------------------------------------------------------
    Rule(TRANSIENT, "Delta concurrent modification",
         type_names=("DeltaConcurrentModificationException", "ConcurrentWriteException",
                     "ConcurrentAppendException", "ConcurrentDeleteReadException",
                     "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
                     "MetadataChangedException", "ProtocolChangedException"),
         conditions=("DELTA_CONCURRENT_",),
         message=r"Concurrent(Append|Write|DeleteRead|DeleteDelete|Transaction)Exception"),
    Rule(TRANSIENT, "HTTP 429 / 5xx from a service", statuses=TRANSIENT_STATUSES,
         message=r"\b(429|50[0234])\b.*(error|status|too many|unavailable)|"
                 r"(status|error)( code)?:? ?(429|50[0234])\b|too many requests|service unavailable"),
    # any other HTTP answer: not a network problem, even though urllib's HTTPError is a URLError
    Rule(UNKNOWN, "unexpected HTTP status", statuses=OTHER_STATUSES),
    Rule(TRANSIENT, "Databricks internal error / timeout", life_cycle_states=("INTERNAL_ERROR",),
         result_states=("TIMEDOUT",)),
    Rule(TRANSIENT, "Databricks infrastructure failure (lost driver, cluster, spot instance...)",
         message=DATABRICKS_INFRA_MESSAGE),
    Rule(TRANSIENT, "Spark JVM / py4j gateway died",
         type_names=("Py4JNetworkError",), conditions=("JAVA_GATEWAY_EXITED",),
         message=r"Java gateway process exited|Answer from Java side is empty|"
                 r"trying to connect to the Java server|Error while (sending|receiving)"),
    Rule(TRANSIENT, "run or request timeout",
         type_names=("TimeoutError", "Timeout", "ReadTimeout", "ConnectTimeout", "timeout"),
         message=r"\bTIMEDOUT\b|timed out|took more than .*s to complete|exceeded maximum runtime"),
    Rule(TRANSIENT, "network error (no HTTP answer)",
         type_names=("ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError",
                     "ProtocolError", "RemoteDisconnected", "URLError", "NewConnectionError",
                     "MaxRetryError", "gaierror"),
         message=r"connection (refused|reset|aborted)|network is unreachable|name or service not known"),
]


# ----------------------------------------------------------------------------- classifying


def classify(error: BaseException | RunState, rules: Iterable[Rule] | None = None) -> Classification:
    """Classify ``error`` by the first rule that matches it or any exception in its cause chain.

    An error that already carries a class (a ``dagster.Failure`` with ``FAILURE_CLASS_KEY``
    metadata, e.g. from the Databricks launcher) keeps it."""
    chain = list(_chain(error))
    for link in chain:
        recorded = _recorded_class(link)
        if recorded is not None:
            return recorded
    for rule in RULES if rules is None else rules:
        for link in chain:
            if rule.matches(link):
                return Classification(rule.kind, rule.reason)
    return Classification(UNKNOWN, f"unclassified {type(error).__name__}")


def classify_text(type_name: str, message: str, rules: Iterable[Rule] | None = None) -> FailureClass:
    """Classify a failure known only by its type name and message (e.g. from an event log)."""
    if type_name in CLASSIFIED_TYPE_NAMES:
        return CLASSIFIED_TYPE_NAMES[type_name]
    status = http_status(type_name) if type_name else None
    for rule in RULES if rules is None else rules:
        if type_name and type_name in rule.type_names and rule.when is None:
            return rule.kind
        if status is not None and status in rule.statuses:
            return rule.kind
        if rule.matches_text(message):
            return rule.kind
    return UNKNOWN


def classify_run_state(
    life_cycle_state: str | None, result_state: str | None, state_message: str | None
) -> FailureClass:
    """The class of a terminated Databricks run that did not succeed: CANCELED -> canceled;
    INTERNAL_ERROR, TIMEDOUT, infrastructure state messages -> transient; other FAILED -> logic."""
    return run_state_classification(life_cycle_state, result_state, state_message).kind


def run_state_classification(
    life_cycle_state: str | None, result_state: str | None, state_message: str | None
) -> Classification:
    """:func:`classify_run_state` with the reason (the rule that matched)."""
    result = classify(RunState(life_cycle_state, result_state, state_message))
    if result.kind == UNKNOWN:  # FAILED (or anything else) for a reason no rule knows: the code
        return Classification(LOGIC, f"Databricks run {result_state or life_cycle_state or 'failed'}")
    return result


def classification_of_failure(error_info: Any = None, metadata: Mapping[str, Any] | None = None) -> FailureClass | None:
    """The class of a recorded step failure, or None when it was never classified.

    ``error_info`` is a ``SerializableErrorInfo`` (``event.step_failure_data.error``), ``metadata``
    the failure's ``user_failure_data.metadata``; either is enough. Reads ``FAILURE_CLASS_KEY``,
    else the ``[<class>: ...]`` / ``[databricks:<class>]`` description prefix or a known class name
    anywhere in the error's cause chain."""
    if metadata and FAILURE_CLASS_KEY in metadata:
        return _as_class(metadata[FAILURE_CLASS_KEY])
    seen: set[int] = set()
    while error_info is not None and id(error_info) not in seen:
        seen.add(id(error_info))
        kind = CLASSIFIED_TYPE_NAMES.get(getattr(error_info, "cls_name", None) or "")
        if kind is not None:
            return kind
        kind = class_in_text(getattr(error_info, "message", "") or "")
        if kind is not None:
            return kind
        error_info = getattr(error_info, "cause", None) or getattr(error_info, "context", None)
    return None


def class_in_text(message: str) -> FailureClass | None:
    """The class a message states with the ``[<class>: ...]`` / ``[databricks:<class>]`` prefix that
    classified failures carry (e.g. a run the run queue refused), or None."""
    match = _PREFIX.search(message or "")
    return FailureClass(match.group(1)) if match else None


# Exception types whose class is their name (the launcher's failures, Dagster's interruption).
CLASSIFIED_TYPE_NAMES: dict[str, FailureClass] = {
    "DatabricksTransientError": TRANSIENT,
    "DatabricksLogicError": LOGIC,
    "DatabricksCanceledError": CANCELED,
    "DatabricksUnknownError": UNKNOWN,
    "DagsterExecutionInterruptedError": CANCELED,
    # a blocking asset check failed after the write (the asset raises its own classified failure
    # first, checks.blocking_check_failure; this covers any other asset with blocking checks)
    "DagsterAssetCheckFailedError": LOGIC,
}
_PREFIX = re.compile(r"(?:^|:\s|\n)\[(?:databricks:)?(transient|logic|canceled|unknown)[:\]]")


def _as_class(value: Any) -> FailureClass | None:
    raw = str(getattr(value, "value", value))
    try:
        return FailureClass(raw)
    except ValueError:
        return None


def _recorded_class(error: Any) -> Classification | None:
    metadata = getattr(error, "metadata", None) if isinstance(error, dg.Failure) else None
    if not metadata or FAILURE_CLASS_KEY not in metadata:
        return None
    kind = _as_class(metadata[FAILURE_CLASS_KEY])
    if kind is None:
        return None
    reason = metadata.get(FAILURE_REASON_KEY)
    return Classification(kind, str(getattr(reason, "value", reason) or "classified by the raiser"))


def _chain(error: Any) -> Iterator[Any]:
    seen: set[int] = set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, dg.DagsterUserCodeExecutionError) and current.user_exception:
            current = current.user_exception
        else:
            current = getattr(current, "__cause__", None) or getattr(current, "__context__", None)


def _type_names(error: Any) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _spark_condition(error: Any) -> str | None:
    getter = getattr(error, "getCondition", None) or getattr(error, "getErrorClass", None)
    if getter is None:
        return None
    try:
        condition = getter()
    except Exception:
        return None
    return condition if isinstance(condition, str) else None


# ----------------------------------------------------------------------------- reporting


_WHAT = {
    LOGIC: "Not retried: fix the data, the code or the configuration, then rerun.",
    TRANSIENT: "Transient: retried with backoff.",
    UNKNOWN: "Unclassified: retried like a transient error.",
    CANCELED: "Canceled: not retried, not rerun.",
}


def failure_metadata(
    kind: FailureClass,
    reason: str,
    *,
    bad_dates: Sequence[str] | None = None,
    dates: Sequence[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata of a classified failure: class, reason, and optionally the bad dates and the
    dates of the run; ``extra`` entries are added as they are."""
    metadata: dict[str, Any] = {FAILURE_CLASS_KEY: FailureClass(kind).value, FAILURE_REASON_KEY: reason}
    if bad_dates is not None:
        metadata[BAD_DATES_KEY] = dg.MetadataValue.json(list(bad_dates))
    if dates is not None:
        metadata["dates_in_run"] = dg.MetadataValue.json(list(dates))
    metadata.update(extra)
    return metadata


def failure_for(error: BaseException, dates: Sequence[str] = ()) -> dg.Failure:
    """The ``dagster.Failure`` that reports ``error`` with its class (no retries for logic/canceled)."""
    result = classify(error)
    bad_dates = list(getattr(error, "dates", []) or [])
    if isinstance(error, dg.Failure):
        description = error.description or str(error)
        metadata = dict(error.metadata or {})
        for key in (BAD_DATES_KEY, "missing_dates"):  # dates the raiser named in its metadata
            if not bad_dates and key in metadata:
                raw = metadata[key]
                bad_dates = list(getattr(raw, "value", raw) or [])
        kind, reason = result.kind, result.reason
        if not error.allow_retries and kind in RETRIED:
            kind, reason = LOGIC, "data or configuration problem reported by the asset"
    else:
        text = str(error).strip()
        description = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        metadata = {}
        kind, reason = result.kind, result.reason
    metadata.update(failure_metadata(kind, reason, bad_dates=bad_dates, dates=dates))
    return dg.Failure(
        description=f"[{kind.value}: {reason}] {description}\n{_WHAT[kind]}",
        metadata=metadata,
        allow_retries=kind in RETRIED,
    )


@contextlib.contextmanager
def classified_failures(dates: Sequence[str] = (), schedule=None, previous_attempts: int = 0) -> Iterator[None]:
    """Run a step body; re-raise whatever it raises as a classified ``dagster.Failure`` (through
    ``schedule.raise_for``, as a ``RetryRequested`` when it may be retried: ``retrying.py``).
    ``RetryRequested`` and Dagster's interruption, a cancellation, pass through as they are."""
    try:
        yield
    except dg.RetryRequested:
        raise
    except dg.DagsterExecutionInterruptedError:
        raise
    except Exception as error:
        failure = failure_for(error, dates)
        failure.__cause__ = error
        if schedule is None:
            raise failure from error
        schedule.raise_for(failure, previous_attempts)


__all__ = [
    "BAD_DATES_KEY",
    "CANCELED",
    "CLASSIFIED_TYPE_NAMES",
    "Classification",
    "DataQualityError",
    "FAILURE_CLASS_KEY",
    "FAILURE_REASON_KEY",
    "FailureClass",
    "LOGIC",
    "RETRIED",
    "RULES",
    "Rule",
    "RunState",
    "TRANSIENT",
    "UNKNOWN",
    "class_in_text",
    "classification_of_failure",
    "classified_failures",
    "classify",
    "classify_run_state",
    "classify_text",
    "failure_for",
    "failure_metadata",
    "http_status",
    "run_state_classification",
]
