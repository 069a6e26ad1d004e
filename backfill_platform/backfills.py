"""Launch and follow Dagster asset backfills of ``destination_data`` through an instance.

This is what the web UI's partition backfill launcher does (``launchPartitionBackfill`` creates a
``PartitionBackfill`` and stores it in the instance); the daemon then submits the runs, chunked by the
asset's backfill policy, through the run queue. Nothing here loops over dates or runs Spark.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import dagster as dg

from backfill_platform import dagster_internals
from backfill_platform.tags import BACKFILL, DESTINATION


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
        return self.status in dagster_internals.BACKFILL_TERMINAL_STATUSES

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
    return dagster_internals.store_asset_backfill(
        instance,
        defs.resolve_asset_graph(),
        whole_assets=include_prerequisites,
        partition_ranges={DESTINATION: _contiguous_runs(partition_keys, defs)},
        tags=tags or {},
        title=title,
        run_config=run_config,
    )


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
    return list(instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL: backfill_id})))


def rows_written(instance: dg.DagsterInstance, backfill_id: str) -> int:
    """Rows the backfill's successful runs wrote to destination_data (from their metadata)."""
    total = 0
    for run in backfill_runs(instance, backfill_id):
        if run.status != dg.DagsterRunStatus.SUCCESS:
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
