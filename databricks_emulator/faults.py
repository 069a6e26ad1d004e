"""Fault injection: faults queued by the emulator's public methods (or ``POST /emulator/faults``) and
taken by the next request they match.

Submit faults match the submit's JSON body; a fault on ``runs/get`` (``poll``) matches the polled
run's task (both hold the launcher's DBFS paths, hence the Dagster run id)."""

from __future__ import annotations

import dataclasses
from typing import Any

# What happens to the next matching request or run:
FAIL_SUBMIT = "fail_submit"  # runs/submit refused with an HTTP error; no run is created
DROP_SUBMIT = "drop_submit"  # runs/submit: the connection is closed without an answer; no run is created
LOSE_SUBMIT_ANSWER = "lose_submit_answer"  # runs/submit creates the run, then answers an error / drops the connection
FAIL_POLL = "fail_poll"  # runs/get answered with an HTTP error
INTERNAL_ERROR = "internal_error"  # the run ends with life_cycle_state INTERNAL_ERROR
LOSE_DRIVER = "lose_driver"  # the run's driver is killed N s after it starts RUNNING
TIMEOUT = "timeout"  # the run gets timeout_seconds=N
PENDING = "pending"  # the run stays PENDING for N s
HOLD_RUNNING = "hold_running"  # the run's driver starts (RUNNING) and waits N s before running the task
FAIL_WRITE = "fail_write"  # the task's first Spark write raises ConnectionResetError (its own code fails)
FAIL_AFTER_TASK = "fail_after_task"  # the task ends (its events are written), then the run ends INTERNAL_ERROR

KINDS = (FAIL_SUBMIT, DROP_SUBMIT, LOSE_SUBMIT_ANSWER, FAIL_POLL, INTERNAL_ERROR, LOSE_DRIVER, TIMEOUT, PENDING,
         HOLD_RUNNING, FAIL_WRITE, FAIL_AFTER_TASK)


@dataclasses.dataclass
class Fault:
    """One injected fault: used by the first request whose text contains ``match`` (any if None)."""

    kind: str  # one of KINDS
    value: Any
    match: str | None = None


@dataclasses.dataclass
class Faults:
    queued: list[Fault] = dataclasses.field(default_factory=list)
    pending_delay_s: float = 0.0
    terminating_delay_s: float = 0.0

    def queue(self, kind: str, value: Any, match: str | None = None, count: int = 1) -> None:
        self.queued.extend(Fault(kind, value, match) for _ in range(count))

    def take(self, kind: str, text: str) -> Fault | None:
        for fault in self.queued:
            if fault.kind == kind and (fault.match is None or fault.match in text):
                self.queued.remove(fault)
                return fault
        return None
