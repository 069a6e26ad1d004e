"""When a failed step of ``destination_data`` is tried again: one schedule for local and Databricks.

The seed's jobs had ``max_retries: 3`` and ``min_retry_interval_millis: 60000``: an interval that is
a minimum. :class:`RetrySchedule` waits ``(2^n - 1) x delay`` before retry ``n`` (60, 180, 420 s with
the defaults) plus a random jitter of up to one more ``delay``: jitter spreads retries out but never
makes a retry come earlier than configured (Dagster's own ``Jitter.PLUS_MINUS`` can retry after 0 s).

A classified failure that may be retried (transient, unknown; ``classification.py``) is raised as
``dagster.RetryRequested`` with the failure as its cause. Dagster retries the step however the
request was raised: from the asset's body (local) or from the Databricks step launcher, whose own
errors bypass an op's ``RetryPolicy``. When the retries are used up, the step fails with the last
failure's message and metadata (Dagster reports the cause of the last request).

``destination_data`` has no op ``RetryPolicy``: Dagster turns an interruption of an op that has one
(Terminate, a run's maximum runtime) into a retry of the step (``op_execution_error_boundary`` in
``dagster/_core/execution/plan/utils.py``), so a cancelled run went on to SUCCESS. Errors raised while
its resources start are inside the classified body too (the Spark resource is lazy).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import dagster as dg

from backfill_platform.settings import RetrySettings


@dataclasses.dataclass(frozen=True)
class RetrySchedule:
    max_retries: int = 3  # BACKFILL_STEP_MAX_RETRIES
    delay_seconds: float = 60.0  # BACKFILL_STEP_RETRY_DELAY_SECONDS: the minimum interval

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetrySchedule:
        return cls(settings.step_max_retries, settings.step_retry_delay_seconds)

    def delay_before(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry ``retry_number`` (1, 2, ...): never less than
        ``(2^n - 1) x delay``, at most one ``delay`` more."""
        return (2 ** max(retry_number, 1) - 1) * self.delay_seconds + rng() * self.delay_seconds

    def raise_for(self, failure: dg.Failure, previous_attempts: int) -> None:
        """Raise what the step should raise for a classified ``failure``: a ``RetryRequested``
        caused by it when it may be retried, else the failure itself."""
        if not failure.allow_retries:
            raise failure
        raise dg.RetryRequested(
            max_retries=self.max_retries, seconds_to_wait=self.delay_before(previous_attempts + 1)
        ) from failure
