"""Why a step on Databricks failed, in a form a retry policy can act on.

The step launcher raises one of these (they are ``dagster.Failure`` subclasses, so the step's
failure event carries their metadata) when Databricks itself fails the step: the run could not be
submitted, ended in ``INTERNAL_ERROR``, lost its driver, timed out or was cancelled. A failure
*inside* the step (the asset raised) is not one of these: it comes back as the remote step's own
failure event, with its traceback.

Classification (``FAILURE_CLASS_KEY`` in the failure metadata, and the exception type):

- ``transient``: infrastructure; retrying the same step may succeed (``INTERNAL_ERROR``, lost
  driver / cluster, ``TIMEDOUT``, HTTP 429/5xx from the API, connection errors). ``allow_retries``
  is True, so an op ``RetryPolicy`` retries it.
- ``logic``: retrying the same input fails the same way (``FAILED`` for another reason, HTTP
  4xx such as a bad cluster spec or a missing permission). ``allow_retries`` is False.
- ``canceled``: someone (or Dagster, on run termination) cancelled the run: never retried.

Use :func:`classify_failure` on a step failure's ``SerializableErrorInfo`` and metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import dagster as dg

FAILURE_CLASS_KEY = "databricks_failure_class"
TRANSIENT, LOGIC, CANCELED = "transient", "logic", "canceled"

# state_message fragments Databricks uses when the platform, not the code, ended a run.
_INFRA_MESSAGES = re.compile(
    r"driver (has stopped|was restarted|is temporarily unavailable|lost)|"
    r"could not reach driver|cluster (was terminated|terminated unexpectedly|became unreachable)|"
    r"spot instance|instance (was )?(lost|terminated)|lost executor|internal error|"
    r"cloud provider|unexpected failure while waiting for the cluster",
    re.IGNORECASE,
)


class DatabricksStepError(dg.Failure):
    """Databricks failed the step; ``classification`` says whether a retry may help."""

    classification = LOGIC

    def __init__(
        self,
        message: str,
        *,
        databricks_run_id: int | None = None,
        life_cycle_state: str | None = None,
        result_state: str | None = None,
        state_message: str | None = None,
        run_page_url: str | None = None,
    ):
        self.databricks_run_id = databricks_run_id
        self.life_cycle_state = life_cycle_state
        self.result_state = result_state
        self.state_message = state_message
        metadata: dict[str, Any] = {FAILURE_CLASS_KEY: self.classification}
        if databricks_run_id is not None:
            metadata["databricks_run_id"] = databricks_run_id
        if life_cycle_state:
            metadata["databricks_life_cycle_state"] = life_cycle_state
        if result_state:
            metadata["databricks_result_state"] = result_state
        if state_message:
            metadata["databricks_state_message"] = state_message
        if run_page_url:
            metadata["databricks_run_page_url"] = dg.MetadataValue.url(run_page_url)
        super().__init__(
            description=f"[databricks:{self.classification}] {message}",
            metadata=metadata,
            allow_retries=self.classification == TRANSIENT,
        )


class DatabricksTransientError(DatabricksStepError):
    classification = TRANSIENT


class DatabricksLogicError(DatabricksStepError):
    classification = LOGIC


class DatabricksCanceledError(DatabricksStepError):
    classification = CANCELED


ERROR_TYPES = {
    TRANSIENT: DatabricksTransientError,
    LOGIC: DatabricksLogicError,
    CANCELED: DatabricksCanceledError,
}


def classify_run_state(life_cycle_state: str | None, result_state: str | None, state_message: str | None) -> str:
    """transient / logic / canceled for a terminated Databricks run that did not succeed."""
    if result_state == "CANCELED":
        return CANCELED
    if life_cycle_state == "INTERNAL_ERROR" or result_state == "TIMEDOUT":
        return TRANSIENT
    if state_message and _INFRA_MESSAGES.search(state_message):
        return TRANSIENT
    return LOGIC


def classify_http_status(status: int | None) -> str:
    """transient / logic for a failed REST call (None: no HTTP answer at all, e.g. refused)."""
    if status is None or status == 429 or status >= 500:
        return TRANSIENT
    return LOGIC


def run_failure(
    databricks_run_id: int,
    life_cycle_state: str | None,
    result_state: str | None,
    state_message: str | None,
    run_page_url: str | None = None,
    detail: str = "",
) -> DatabricksStepError:
    """The exception for a Databricks run that ended without success."""
    classification = classify_run_state(life_cycle_state, result_state, state_message)
    message = (
        f"Databricks run {databricks_run_id} ended in life_cycle_state={life_cycle_state}, "
        f"result_state={result_state}: {state_message or 'no state message'}."
    )
    if run_page_url:
        message += f" Run page: {run_page_url}."
    if detail:
        message += f" {detail}"
    return ERROR_TYPES[classification](
        message,
        databricks_run_id=databricks_run_id,
        life_cycle_state=life_cycle_state,
        result_state=result_state,
        state_message=state_message,
        run_page_url=run_page_url,
    )


def classify_failure(
    error: Any = None, metadata: Mapping[str, Any] | None = None
) -> str | None:
    """transient / logic / canceled for a step failure caused by Databricks, else None.

    ``error`` is a ``SerializableErrorInfo`` (``event.step_failure_data.error``) and ``metadata``
    the failure's ``user_failure_data.metadata``; either is enough.
    """
    if metadata and FAILURE_CLASS_KEY in metadata:
        value = metadata[FAILURE_CLASS_KEY]
        return str(getattr(value, "value", value))
    names = {cls.__name__: cls.classification for cls in ERROR_TYPES.values()}
    while error is not None:
        if getattr(error, "cls_name", None) in names:
            return names[error.cls_name]
        match = re.search(r"\[databricks:(transient|logic|canceled)\]", getattr(error, "message", "") or "")
        if match:
            return match.group(1)
        error = getattr(error, "cause", None) or getattr(error, "context", None)
    return None
