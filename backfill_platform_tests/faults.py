"""Fault injection for ``destination_data``: the test binding of its ``write_hooks`` resource.

The product binds ``backfill_platform.resources.write_hooks.WriteHooks``, which does nothing. The
acceptance tests bind :class:`FaultInjector` instead (``fault_location.py`` is the code location
their daemon loads), configured by a spec that names business dates and what happens when a run
processes them::

    BACKFILL_TEST_FAULTS="2024-03-04=transient:2,2024-03-05=logic,2024-03-06=kill:1"

- ``transient:N`` the first N attempts that include the date raise a transient (network-style)
  error; later attempts succeed. Step retries, run retries and the rerun sensor see a real failure.
- ``logic`` every attempt that includes the date fails with a data-quality error (never retried).
- ``kill:N`` the first N attempts that include the date SIGKILL the run worker (and the step
  process, with the multiprocess executor) while Spark executes the Delta write, from inside a
  Spark task before Delta commits: the processes and their JVM die mid-write, like an OOM kill.
- ``hang:N`` the first N attempts that include the date sleep for an hour before writing, so the
  run's maximum runtime (``dagster/max_runtime``, run monitoring) ends it.
- ``slow:S`` every attempt that includes the date writes through a Spark task that sleeps S seconds
  per row (a long-running Spark job, for Cancel); the task touches ``<state_dir>/<date>.writing``
  when it starts.

Attempts are counted per date in files under ``state_dir``, so counts survive process deaths and span
runs. A ``kill``
counts only when it fires (from the Spark task), so an attempt that failed earlier for another
reason does not use it up.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

from backfill_platform.classification import DataQualityError
from backfill_platform.resources.write_hooks import WriteHooks
from backfill_platform.settings import SettingsError

KINDS = ("transient", "logic", "kill", "hang", "slow")


class InjectedTransientFault(ConnectionError):
    """TEST ONLY: an injected transient failure (classified like a network error)."""


class InjectedLogicFault(DataQualityError):
    """TEST ONLY: an injected data-quality failure (never retried)."""


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    times: int = 1  # transient / kill: how many attempts fail


def parse_faults(spec: str) -> dict[str, Fault]:
    faults: dict[str, Fault] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        day, _, what = item.partition("=")
        kind, _, times = what.strip().partition(":")
        if kind not in KINDS or not day.strip():
            raise SettingsError(
                f"BACKFILL_TEST_FAULTS item {item!r}: use DATE=transient:N, DATE=logic, DATE=kill:N or DATE=hang:N."
            )
        try:
            count = int(times) if times else 1
        except ValueError:
            raise SettingsError(f"BACKFILL_TEST_FAULTS item {item!r}: N must be a whole number.") from None
        faults[day.strip()] = Fault(kind, count)
    return faults


class FaultInjector(WriteHooks):
    """``write_hooks`` that inject the faults of ``spec`` (see the module docstring)."""

    spec: str = ""
    state_dir: str

    @property
    def faults(self) -> dict[str, Fault]:
        return parse_faults(self.spec)

    @property
    def enabled(self) -> bool:
        return bool(self.faults)

    def before_write(self, dates: Sequence[str], frame):
        return self.slow_down(self.arm_kill(frame, self.raise_injected(dates)), dates)

    def slow_down(self, frame, dates: Sequence[str]):
        """``slow:S`` dates: the write's Spark tasks sleep S seconds per row."""
        slow = [self.faults[day].times for day in dates if day in self.faults and self.faults[day].kind == "slow"]
        if not slow:
            return frame
        import sys

        from pyspark import cloudpickle
        from pyspark.sql import functions as F
        from pyspark.sql.types import BooleanType

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        markers = [str(Path(self.state_dir) / f"{day}.writing") for day in dates if day in self.faults]
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        seconds = max(slow)

        def sleep_per_row(_value) -> bool:
            import pathlib as _pathlib
            import time as _time

            for marker in markers:
                _pathlib.Path(marker).touch()
            _time.sleep(seconds)
            return True

        return frame.where(F.udf(sleep_per_row, BooleanType())(F.col(frame.columns[0])))

    def _next_attempt(self, day: str) -> int:
        """Record one more attempt of ``day`` and return its number (1, 2, ...), across processes."""
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        return record_attempt(Path(self.state_dir) / f"{day}.attempts", f"{os.getpid()} {time.time_ns()}")

    def attempts(self, day: str) -> int:
        path = Path(self.state_dir) / f"{day}.attempts"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def raise_injected(self, dates: Sequence[str]) -> list[str]:
        """Raise the injected failures of this attempt; return the dates whose kill is armed."""
        faults = self.faults
        mine = [day for day in dates if day in faults]
        logic = [day for day in mine if faults[day].kind == "logic"]
        if logic:
            for day in logic:
                self._next_attempt(day)
            raise InjectedLogicFault(
                f"TEST-ONLY injected data-quality failure for {', '.join(logic)}", dates=logic
            )
        failing, armed, hanging = [], [], []
        for day in mine:
            fault = faults[day]
            if fault.kind == "slow":  # not a failure: slow_down makes the write take long
                continue
            if fault.kind == "kill":  # counted by the Spark task that fires it (arm_kill)
                if self.attempts(day) < fault.times:
                    armed.append(day)
                continue
            attempt = self._next_attempt(day)
            if attempt <= fault.times:
                target = {"transient": failing, "hang": hanging}[fault.kind]
                target.append(f"{day} (attempt {attempt}/{fault.times})")
        if hanging:
            hang_marker = Path(self.state_dir) / "hanging"
            hang_marker.touch()
            for _ in range(3600):  # ended by the run's maximum runtime (run monitoring terminates the run);
                time.sleep(1)  # short sleeps: the interruption is handled within a second
        if failing:
            raise InjectedTransientFault(
                f"TEST-ONLY injected transient failure: connection reset while processing {', '.join(failing)}"
            )
        return armed

    def arm_kill(self, frame, armed: Sequence[str]):
        """Make the Delta write's Spark tasks SIGKILL the run's worker process(es) mid-write."""
        if not armed:
            return frame
        import sys

        from pyspark import cloudpickle
        from pyspark.sql import functions as F
        from pyspark.sql.types import BooleanType

        # The UDF runs in Spark's Python workers, which need not find this test module on their path.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])

        targets = run_worker_pids()
        counters = [Path(self.state_dir) / f"{day}.attempts" for day in armed]
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        token = f"kill {os.getpid()} {time.time_ns()}"  # this attempt, however many tasks fire it

        def kill_run_worker(_value) -> bool:
            import os as _os
            import signal as _signal

            for path in counters:
                record_attempt(path, token)
            for pid in targets:
                try:
                    _os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return True

        return frame.where(F.udf(kill_run_worker, BooleanType())(F.col(frame.columns[0])))


def record_attempt(path: Path, token: str) -> int:
    """Append ``token`` to the counter file unless it is there; return how many attempts it holds.

    Locked, so processes (and Spark tasks) that record at once each see a consistent count.
    """
    with open(path, "a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        tokens = counter.read().splitlines()
        if token not in tokens:
            counter.write(f"{token}\n")
            counter.flush()
            tokens.append(token)
        fcntl.flock(counter, fcntl.LOCK_UN)
    return len(tokens)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_worker_pids() -> list[int]:
    """This process, and its parent when that is the run worker of a multiprocess executor.

    With the multiprocess executor the step runs in a child of the run worker (both are
    ``multiprocessing`` spawn children); with the in-process executor this process is the run worker
    and its parent is the code server (``dagster api grpc``), which must survive.
    """
    parent = os.getppid()
    pids = [parent] if "spawn_main" in _cmdline(parent) and "spawn_main" in _cmdline(os.getpid()) else []
    return pids + [os.getpid()]
