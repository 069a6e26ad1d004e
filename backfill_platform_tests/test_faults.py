"""The test binding of ``write_hooks`` (faults.py) counts attempts across processes, so the
acceptance tests' expectations are exact; the production binding changes nothing."""

from __future__ import annotations

import pytest

from backfill_platform.classification import LOGIC, classify
from backfill_platform.resources.write_hooks import WriteHooks
from backfill_platform.settings import SettingsError
from backfill_platform_tests.faults import (
    FaultInjector,
    InjectedLogicFault,
    InjectedTransientFault,
    parse_faults,
    record_attempt,
)

FRAME = object()  # raise_injected never touches the rows; arm_kill is exercised by the acceptance test


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_production_write_hooks_return_the_rows_unchanged():
    assert WriteHooks().before_write(["2024-03-04"], FRAME) is FRAME


def test_fault_injection_counts_attempts_across_injectors(tmp_path):
    spec = "2024-03-04=transient:2,2024-03-05=logic,2024-03-06=kill:1"
    assert parse_faults(spec)["2024-03-04"].times == 2
    with pytest.raises(SettingsError, match="2024-03-04=flaky"):
        parse_faults("2024-03-04=flaky")
    first = FaultInjector(spec=spec, state_dir=str(tmp_path))
    second = FaultInjector(spec=spec, state_dir=str(tmp_path))  # another process, same counters
    with pytest.raises(InjectedTransientFault):
        first.raise_injected(["2024-03-04"])
    with pytest.raises(InjectedTransientFault):
        second.raise_injected(["2024-03-04"])
    assert first.raise_injected(["2024-03-04", "2024-03-07"]) == []
    assert classify(_raised(lambda: first.raise_injected(["2024-03-05"]))).kind == LOGIC
    # a kill stays armed until a Spark task fires it (records it), however often attempts start
    assert second.raise_injected(["2024-03-06"]) == ["2024-03-06"]
    assert second.raise_injected(["2024-03-06"]) == ["2024-03-06"] and first.attempts("2024-03-06") == 0
    assert record_attempt(tmp_path / "2024-03-06.attempts", "kill 1") == 1
    assert record_attempt(tmp_path / "2024-03-06.attempts", "kill 1") == 1  # a second task, same attempt
    assert second.raise_injected(["2024-03-06"]) == [] and first.attempts("2024-03-06") == 1
    assert first.attempts("2024-03-04") == 3 and first.attempts("2024-03-05") == 1
    assert FaultInjector(spec="", state_dir=str(tmp_path)).before_write(["2024-03-04"], FRAME) is FRAME
    assert isinstance(_raised(lambda: first.raise_injected(["2024-03-05"])), InjectedLogicFault)
