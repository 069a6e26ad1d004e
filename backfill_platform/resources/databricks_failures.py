"""Why Databricks failed a step: the step launcher's exceptions, classified by ``classification.py``.

The launcher (``resources/databricks.py``) raises one of these (they are ``dagster.Failure``
subclasses, so the step's failure event carries their metadata) when Databricks itself fails the
step: the run could not be submitted or followed, ended in ``INTERNAL_ERROR``, lost its driver,
timed out or was cancelled. It raises them through the step retry schedule
(``retrying.RetrySchedule.raise_for``): as the cause of a ``RetryRequested`` when ``allow_retries``,
as themselves otherwise. A failure *inside* the step (the asset raised) is not one of these: it comes back as the
remote step's own failure event, classified by the asset's ``classified_failures``.

The class is the project's one vocabulary (``FailureClass``, metadata ``FAILURE_CLASS_KEY``), from
the project's one table of rules: no regex or status table here. Descriptions start with
``[databricks:<class>]``; ``allow_retries`` is True for transient and unknown only.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from backfill_platform.classification import (
    RETRIED,
    Classification,
    FailureClass,
    classify,
    failure_metadata,
    http_status,
    run_state_classification,
)


class DatabricksStepError(dg.Failure):
    """Databricks failed the step; ``classification`` says whether a retry may help."""

    classification = FailureClass.LOGIC

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
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
        extra: dict[str, Any] = {}
        if databricks_run_id is not None:
            extra["databricks_run_id"] = databricks_run_id
        if life_cycle_state:
            extra["databricks_life_cycle_state"] = life_cycle_state
        if result_state:
            extra["databricks_result_state"] = result_state
        if state_message:
            extra["databricks_state_message"] = state_message
        if run_page_url:
            extra["databricks_run_page_url"] = dg.MetadataValue.url(run_page_url)
        super().__init__(
            description=f"[databricks:{self.classification.value}] {message}",
            metadata=failure_metadata(self.classification, f"Databricks: {reason or self.classification}", **extra),
            allow_retries=self.classification in RETRIED,
        )


class DatabricksTransientError(DatabricksStepError):
    classification = FailureClass.TRANSIENT


class DatabricksLogicError(DatabricksStepError):
    classification = FailureClass.LOGIC


class DatabricksCanceledError(DatabricksStepError):
    classification = FailureClass.CANCELED


class DatabricksUnknownError(DatabricksStepError):
    classification = FailureClass.UNKNOWN


ERROR_TYPES: dict[FailureClass, type[DatabricksStepError]] = {
    cls.classification: cls
    for cls in (DatabricksTransientError, DatabricksLogicError, DatabricksCanceledError, DatabricksUnknownError)
}
# classification_of_failure reads these class names back from event logs (CLASSIFIED_TYPE_NAMES).


def step_error(result: Classification, message: str, **kwargs: Any) -> DatabricksStepError:
    """The launcher's exception for a classification."""
    return ERROR_TYPES[result.kind](message, reason=result.reason, **kwargs)


def run_failure(
    databricks_run_id: int,
    life_cycle_state: str | None,
    result_state: str | None,
    state_message: str | None,
    run_page_url: str | None = None,
    detail: str = "",
    waited_too_long: bool = False,
) -> DatabricksStepError:
    """The exception for a Databricks run that ended without success (``waited_too_long``: the
    launcher stopped waiting for a run that had not ended; classified as a timeout)."""
    message = (
        f"Databricks run {databricks_run_id} ended in life_cycle_state={life_cycle_state}, "
        f"result_state={result_state}: {(state_message or 'no state message').rstrip('.')}."
    )
    if run_page_url:
        message += f" Run page: {run_page_url}."
    if detail:
        message += f" {detail}"
    classification = run_state_classification(life_cycle_state, result_state, state_message)
    if waited_too_long:
        classification = classify(TimeoutError(detail or message))
    return step_error(
        classification,
        message,
        databricks_run_id=databricks_run_id,
        life_cycle_state=life_cycle_state,
        result_state=result_state,
        state_message=state_message,
        run_page_url=run_page_url,
    )


def api_failure(
    error: BaseException, databricks_run_id: int | None = None, run_page_url: str | None = None
) -> DatabricksStepError:
    """The exception for a failed Databricks REST call: an HTTP error, or no answer at all; with the
    run it was about when the call failed while following a submitted run."""
    status = http_status(error)
    run = f" while following Databricks run {databricks_run_id}" if databricks_run_id is not None else ""
    if status is None and not any(cls.__name__ == "DatabricksError" for cls in type(error).__mro__):
        message = f"Lost contact with the Databricks workspace{run} ({error.__class__.__name__}: {error})."
    else:
        message = (
            f"Databricks API call failed{run or ' before the run finished'} (HTTP {status or '?'} "
            f"{error.__class__.__name__}: {error}). No Databricks run result is available."
        )
    if run_page_url:
        message += f" Run page: {run_page_url}."
    return step_error(classify(error), message, databricks_run_id=databricks_run_id, run_page_url=run_page_url)
