"""Fault injection: faults queued by the emulator's public methods (or ``POST /emulator/faults``) and
taken by the next submit they match."""

from __future__ import annotations

import dataclasses
from typing import Any

# The fault kinds: refuse the submit | end the run with INTERNAL_ERROR | kill its driver after N s |
# time the run out after N s | keep the run PENDING for N s.
FAIL_SUBMIT = "fail_submit"
INTERNAL_ERROR = "internal_error"
LOSE_DRIVER = "lose_driver"
TIMEOUT = "timeout"
PENDING = "pending"


@dataclasses.dataclass
class Fault:
    """One injected fault: used by the first submit whose JSON body contains ``match`` (any if None)."""

    kind: str  # fail_submit | internal_error | lose_driver | timeout | pending
    value: Any
    match: str | None = None


@dataclasses.dataclass
class Faults:
    queued: list[Fault] = dataclasses.field(default_factory=list)
    pending_delay_s: float = 0.0
    terminating_delay_s: float = 0.0

    def queue(self, kind: str, value: Any, match: str | None = None, count: int = 1) -> None:
        self.queued.extend(Fault(kind, value, match) for _ in range(count))

    def take(self, kind: str, body_text: str) -> Fault | None:
        for fault in self.queued:
            if fault.kind == kind and (fault.match is None or fault.match in body_text):
                self.queued.remove(fault)
                return fault
        return None
