"""Launch and follow Dagster asset backfills of ``destination_data`` through an instance.

This is what the web UI's partition backfill launcher does (``launchPartitionBackfill`` creates a
``PartitionBackfill`` and stores it in the instance); the daemon then submits the runs, chunked by the
asset's backfill policy, through the run queue. Nothing here loops over dates or runs Spark.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
from dagster._core.definitions.selector import (
    PartitionRangeSelector,
    PartitionsByAssetSelector,
    PartitionsSelector,
)
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionStatus,
    PartitionBackfill,
)
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.utils import make_new_backfill_id

from backfill_platform.settings import PROJECT_ROOT

DESTINATION = dg.AssetKey("destination_data")
PREREQUISITES = (dg.AssetKey("source_data"), dg.AssetKey("business_calendar"))


@dataclasses.dataclass(frozen=True)
class BackfillProgress:
    backfill_id: str
    status: str
    requested: int
    succeeded: int
    failed: int
    in_flight: int  # requested but not yet succeeded or failed (queued, running or not launched)

    @property
    def done(self) -> bool:
        return self.status in {s.value for s in BULK_ACTION_TERMINAL_STATUSES}

    def line(self) -> str:
        return (
            f"[{self.status.lower()}] {self.succeeded}/{self.requested} partitions done, "
            f"{self.failed} failed, {self.in_flight} queued or running"
        )


def launch_destination_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    partition_keys: Sequence[str],
    *,
    include_prerequisites: Sequence[dg.AssetKey] = (),
    tags: dict[str, str] | None = None,
    title: str | None = None,
    run_config: dict | None = None,
) -> str:
    """Store an asset backfill of ``destination_data`` over the given keys; return its id."""
    asset_graph = defs.resolve_asset_graph()
    selectors = [PartitionsByAssetSelector(asset_key=key) for key in include_prerequisites]
    ranges = [PartitionRangeSelector(start=start, end=end) for start, end in _contiguous_runs(partition_keys, defs)]
    selectors.append(
        PartitionsByAssetSelector(asset_key=DESTINATION, partitions=PartitionsSelector(ranges=ranges))
    )
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_partitions_by_assets(
        backfill_id=backfill_id,
        asset_graph=asset_graph,
        backfill_timestamp=time.time(),
        tags=tags or {},
        dynamic_partitions_store=instance,
        partitions_by_assets=selectors,
        title=title,
        description=None,
        run_config=run_config,
    )
    instance.add_backfill(backfill)
    return backfill_id


def _contiguous_runs(keys: Sequence[str], defs: dg.Definitions) -> list[tuple[str, str]]:
    """Group keys into ranges of consecutive partitions (one range for an unbroken span)."""
    partitions_def = defs.resolve_assets_def(DESTINATION).partitions_def
    all_keys = partitions_def.get_partition_keys()
    index = {key: i for i, key in enumerate(all_keys)}
    ordered = sorted(keys, key=index.__getitem__)
    runs: list[tuple[str, str]] = []
    for key in ordered:
        if runs and index[key] == index[runs[-1][1]] + 1:
            runs[-1] = (runs[-1][0], key)
        else:
            runs.append((key, key))
    return runs


def backfill_progress(instance: dg.DagsterInstance, backfill_id: str) -> BackfillProgress:
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise KeyError(f"no backfill {backfill_id} in this instance")
    data = backfill.asset_backfill_data
    requested = succeeded = failed = 0
    if data is not None:
        requested = _count(data.target_subset, DESTINATION)
        succeeded = _count(data.materialized_subset, DESTINATION)
        failed = _count(data.failed_and_downstream_subset, DESTINATION)
    return BackfillProgress(
        backfill_id=backfill_id,
        status=backfill.status.value,
        requested=requested,
        succeeded=succeeded,
        failed=failed,
        in_flight=max(requested - succeeded - failed, 0),
    )


def _count(subset, key: dg.AssetKey) -> int:
    return sum(1 for asset_partition in subset.iterate_asset_partitions() if asset_partition.asset_key == key)


def failed_partitions(instance: dg.DagsterInstance, backfill_id: str) -> list[str]:
    backfill = instance.get_backfill(backfill_id)
    data = backfill.asset_backfill_data if backfill else None
    if data is None:
        return []
    return sorted(
        ap.partition_key
        for ap in data.failed_and_downstream_subset.iterate_asset_partitions()
        if ap.asset_key == DESTINATION and ap.partition_key
    )


def backfill_runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id})))


def rows_written(instance: dg.DagsterInstance, backfill_id: str) -> int:
    """Rows the backfill's successful runs wrote to destination_data (from their metadata)."""
    total = 0
    for run in backfill_runs(instance, backfill_id):
        if run.status != DagsterRunStatus.SUCCESS:
            continue
        records = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        for record in records:
            materialization = record.event_log_entry.asset_materialization
            if materialization and materialization.asset_key == DESTINATION:
                total += int(materialization.metadata["rows_written"].value)
                break  # every partition of a range run carries the run's total
    return total


def wait_for_backfill(
    instance: dg.DagsterInstance,
    backfill_id: str,
    *,
    timeout_s: float = 3600,
    poll_s: float = 1.0,
    on_progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillProgress:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        progress = backfill_progress(instance, backfill_id)
        if on_progress and progress != last:
            on_progress(progress)
        last = progress
        if progress.done:
            return progress
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} still {progress.status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def stop_process_group(process: subprocess.Popen | None, timeout_s: float = 30) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL after
    ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class DaemonProcess:
    """``dagster-daemon run`` for the project's workspace, started and stopped by its owner."""

    def __init__(self, dagster_home: Path, env: dict[str, str] | None = None, log_path: Path | None = None):
        self.dagster_home = Path(dagster_home)
        self.env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(self.dagster_home)}
        self.log_path = log_path or self.dagster_home / "daemon.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        initialize_instance_storage(self.dagster_home)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def stop(self, timeout_s: float = 30) -> None:
        stop_process_group(self.process, timeout_s)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def initialize_instance_storage(dagster_home: Path) -> None:
    """Create the instance's SQLite schema now, in this process.

    A fresh DAGSTER_HOME whose schema is first created by two processes at once (a daemon starting
    while ``dagster job backfill`` or the webserver starts) can fail with "table alembic_version
    already exists" and kill the daemon; creating it here first avoids that race.
    """
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)


def daemon_is_running(instance: dg.DagsterInstance) -> bool:
    from dagster._daemon.controller import all_daemons_live

    try:
        return all_daemons_live(instance, heartbeat_tolerance_seconds=30)
    except Exception:
        return False


class KeepDaemon:
    """Keep one ``dagster-daemon`` serving the instance for as long as a command waits on it.

    On entry it starts a daemon when none sends heartbeats; while the command waits, a background
    check (every ``check_every_s``) starts another one if the daemon it started exited, or if the
    daemon that was running before stopped sending heartbeats. On exit it stops the daemon it
    started and wipes the heartbeats that daemon left, so the next command does not take the last
    ones (up to 30 s old) for a live daemon and wait for a queue that nobody serves.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        dagster_home: Path,
        say: Callable[[str], None],
        check_every_s: float = 10.0,
    ):
        self.instance = instance
        self.dagster_home = Path(dagster_home)
        self.say = say
        self.check_every_s = check_every_s
        self.daemon: DaemonProcess | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        if self.daemon is not None:
            code = self.daemon.process.poll()
            if code is None:
                return
            message = (
                f"The dagster-daemon this command started exited with code {code} (log: "
                f"{self.daemon.log_path}); starting another one."
            )
        elif daemon_is_running(self.instance):
            return
        elif self._thread is not None:
            message = "The dagster-daemon serving this instance stopped sending heartbeats; starting one."
        else:
            message = "No dagster-daemon is running for this instance: starting one for this backfill."
        self.say(message)
        self.daemon = DaemonProcess(self.dagster_home).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            try:
                self.check()
            except Exception as error:  # a failed check must not end the command's wait
                self.say(f"Could not check the dagster-daemon ({type(error).__name__}: {error}); will retry.")

    def __enter__(self) -> KeepDaemon:
        self.check()
        self._thread = threading.Thread(target=self._watch, name="keep-dagster-daemon", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.daemon is not None:
            self.daemon.stop()
            self.instance.wipe_daemon_heartbeats()


__all__ = [
    "BackfillProgress",
    "BulkActionStatus",
    "DaemonProcess",
    "KeepDaemon",
    "backfill_progress",
    "backfill_runs",
    "daemon_is_running",
    "failed_partitions",
    "launch_destination_backfill",
    "rows_written",
    "wait_for_backfill",
]
