"""The launcher of the Databricks deployment: dagster-databricks' ``DatabricksPySparkStepLauncher``
with idempotent submits, visible attempts and Databricks-side failures classified and retried under
the project's ``RetrySchedule`` (``resources/databricks.py`` builds and configures it)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_databricks.databricks import DatabricksError as PollError
from dagster_databricks.databricks_pyspark_step_launcher import DatabricksPySparkStepLauncher

from backfill_platform.resources.databricks_failures import DatabricksStepError, api_failure, run_failure
from backfill_platform.retrying import RetrySchedule

# ----------------------------------------------------------------------------- the launcher

# The step's outcome, once the step on the cluster reported it (its own retry included).
_STEP_OUTCOMES = frozenset({
    dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY,
})


def idempotency_token(run_id: str, step_key: str, attempt: int) -> str:
    """The ``idempotency_token`` of one attempt's ``runs/submit``: unique per Dagster run, step and
    attempt (``previous_attempt_count``), 64 hex characters (Databricks allows at most 64). A submit
    that databricks-sdk repeats inside the attempt (its own retry of an HTTP 429 / 503 or of a call
    that got no answer) repeats the token, and Databricks answers with the run it already started."""
    return hashlib.sha256(f"{run_id}:{step_key}:{attempt}".encode()).hexdigest()


class _SdkRetries(logging.Handler):
    """While a step launches: databricks-sdk's own retries of an API call (HTTP 429 / 503, no
    answer), which it logs at DEBUG only, go to the step's event log as warnings."""

    LOGGER = "databricks.sdk.retries"

    def __init__(self, log):
        super().__init__(logging.DEBUG)
        self.step_log, self.thread = log, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.getMessage().startswith("Retrying"):
            self.step_log.warning(
                f"A Databricks API call was retried by databricks-sdk: {record.getMessage()} "
                "(the same request; a runs/submit keeps its idempotency token)."
            )

    @classmethod
    @contextlib.contextmanager
    def forwarded_to(cls, log) -> Iterator[None]:
        logger, handler = logging.getLogger(cls.LOGGER), cls(log)
        level, propagate = logger.level, logger.propagate
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


class BackfillDatabricksStepLauncher(DatabricksPySparkStepLauncher):
    """dagster-databricks' launcher, with three changes:

    - a Databricks-side failure (``databricks_failures.py``: the run ended ``INTERNAL_ERROR``, lost
      its driver, ``TIMEDOUT``; an API call answered 429/5xx or not at all) is raised through the
      step retry schedule (``retrying.RetrySchedule``): a ``RetryRequested`` when it may be
      retried, the classified failure otherwise (4xx, a bad cluster spec, a cancellation). A step
      launcher's errors bypass the op's ``RetryPolicy``; a ``RetryRequested`` does not. Once the step
      on the cluster has reported its outcome (success, failure, or its own retry request, which
      dagster-databricks passes on as the step's event), a later Databricks failure is logged and
      not retried again: exactly one retry mechanism acts.
    - each attempt's ``runs/submit`` carries an ``idempotency_token`` (:func:`idempotency_token`),
      through ``run_config["idempotency_token"]``, which ``DatabricksJobRunner.submit_run`` passes on,
      and a ``run_name`` naming the step (``backfill_platform business_calendar``, ...);
    - each attempt is in the step's event log with its Databricks run id and run page URL, and so is
      every API call databricks-sdk retried itself.

    One launcher launches one step at a time (the run's resources live in its run worker, and the
    executor runs this asset's single step there), so ``run_config`` is set per attempt.
    """

    def __init__(self, *, schedule: RetrySchedule | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.schedule = schedule or RetrySchedule()
        self.base_run_config = dict(self.run_config)

    def launch_step(self, step_context):
        attempt = step_context.previous_attempt_count
        token = idempotency_token(step_context.run_id, step_context.step.key, attempt)
        # Each step's Databricks run is named after the step (the runs list shows which asset ran).
        run_name = f"{self.base_run_config.get('run_name') or 'backfill_platform'} {step_context.step.key}"
        self.run_config = {**self.base_run_config, "run_name": run_name, "idempotency_token": token}
        self._attempt = (attempt, token)
        self._outcome: dg.DagsterEventType | None = None
        failure: DatabricksStepError | None = None
        with _SdkRetries.forwarded_to(step_context.log):
            try:
                yield from super().launch_step(step_context)
                return
            except DatabricksStepError as error:
                failure = error
            except OSError as error:  # an SDK HTTP error, or connection refused / reset (no answer at all)
                failure = api_failure(error)
        if self._outcome is not None:
            step_context.log.warning(
                f"The step on the cluster already reported {self._outcome.value}; not retried again: "
                f"{failure.description}"
            )
            return
        self.schedule.raise_for(failure, attempt)

    def step_events_iterator(self, step_context, step_key, databricks_run_id):
        token = self._attempt[1]
        try:
            run_page_url = self.databricks_runner.client.workspace_client.jobs.get_run(databricks_run_id).run_page_url
        except OSError as error:
            self._log_attempt(step_context, databricks_run_id, f"runs/get failed: {error}", token)
            raise api_failure(error, databricks_run_id=databricks_run_id) from None
        self._log_attempt(step_context, databricks_run_id, f"run page {run_page_url}", token)
        try:
            for event in super().step_events_iterator(step_context, step_key, databricks_run_id):
                if event.event_type in _STEP_OUTCOMES:
                    self._outcome = event.event_type
                yield event
        except PollError as error:
            raise self._run_failure(databricks_run_id, str(error)) from None
        except OSError as error:  # runs/get or a DBFS read failed while the run was going on
            raise api_failure(error, databricks_run_id=databricks_run_id, run_page_url=run_page_url) from None

    def _log_attempt(self, step_context, databricks_run_id: int, page: str, token: str) -> None:
        step_context.log.info(
            f"Attempt {self._attempt[0] + 1} of at most {self.schedule.max_retries + 1}: Databricks run "
            f"{databricks_run_id} submitted, {page} (idempotency token {token})."
        )

    def _run_failure(self, databricks_run_id: int, poll_message: str) -> DatabricksStepError:
        client = self.databricks_runner.client.workspace_client
        try:
            run = client.jobs.get_run(databricks_run_id)
        except Exception:
            return run_failure(databricks_run_id, None, None, poll_message)
        state = run.state
        detail = ""
        if "took more than" in poll_message:  # the launcher gave up waiting (the run is cancelled next)
            detail = poll_message + " (BACKFILL_RUN_TIMEOUT_SECONDS)."
        try:
            task_run_id = run.tasks[0].run_id if run.tasks else databricks_run_id
            output = client.jobs.get_run_output(task_run_id)
            if output.error:
                detail += f" Error: {output.error}"
        except Exception:
            pass
        return run_failure(
            databricks_run_id,
            state.life_cycle_state.value if state and state.life_cycle_state else None,
            state.result_state.value if state and state.result_state else None,
            state.state_message if state else poll_message,
            run_page_url=run.run_page_url,
            detail=detail.strip(),
            waited_too_long="took more than" in poll_message,
        )
