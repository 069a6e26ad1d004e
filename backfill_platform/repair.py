"""Repair from failure: re-execute the failed runs of ``destination_data`` from their failed step.

The seed re-triggered failed work by hand (Databricks "repair run", dbt Cloud's "restart from
failure"). Dagster's own equivalent is re-execution **from failure**, the UI's *Re-execute > From
failure*: a new run of the same job, partitions, run config and tags that executes only the steps
that failed or did not run, tagged ``dagster/parent_run_id`` and ``dagster/root_run_id``. This
module decides which failed runs to re-execute and hands each one to
``dagster_internals.reexecute_from_failure``, which submits it to the instance's run queue (the
daemon starts it, with the queue's limits and date slots).

Only the latest run of each business date matters. A failed run is skipped, and the reason said, when

- run retries will retry it (``dagster/will_retry=true``),
- it was already re-executed (a run with ``dagster/parent_run_id`` = it exists), or
- later runs cover all its dates (they succeeded, are in flight, or failed and are repaired instead).

A failed range run (a backfill chunk) that is still the latest run of at least one of its dates is
re-executed whole: its step rewrites all its dates in one ``replaceWhere`` commit, which is idempotent.

The re-execution of a backfill's run no longer carries ``dagster/backfill`` once the backfill has
ended (Dagster drops it), so a backfill's failed runs are its own runs and every run descending from
one: re-executions and run retries (``dagster/parent_run_id``, ``dagster/root_run_id``) and the rerun
sensor's reruns (``backfill_platform/rerun_of_run_id``). A second ``repair --backfill ID`` therefore
picks up a re-execution that failed again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

import dagster as dg

from backfill_platform import dagster_internals
from backfill_platform.partitions import BusinessDays
from backfill_platform.processes import WORKSPACE_YAML
from backfill_platform.sensors.failures import targets_destination
from backfill_platform.tags import BACKFILL, PARENT_RUN_ID, RERUN_OF_RUN_ID, ROOT_RUN_ID, WILL_RETRY


@dataclasses.dataclass(frozen=True)
class FailedRun:
    """A failed run of destination_data in the selection, and why it is skipped (None: re-execute it)."""

    run: dg.DagsterRun
    keys: tuple[str, ...]
    skip_reason: str | None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def dates(self) -> str:
        if len(self.keys) == 1:
            return self.keys[0]
        return f"{self.keys[0]}..{self.keys[-1]} ({len(self.keys)} dates)"


def destination_runs(instance: dg.DagsterInstance, business_days: BusinessDays) -> list[tuple[dg.DagsterRun, tuple]]:
    """Every date-partitioned run of destination_data with its partition keys, in creation order."""
    runs = []
    for run in instance.get_runs(ascending=True):  # storage order: exact, unlike second-precision timestamps
        keys = tuple(business_days.run_keys(run.tags))
        if keys and targets_destination(run, instance):
            runs.append((run, keys))
    return runs


def select_failed_runs(
    instance: dg.DagsterInstance,
    business_days: BusinessDays,
    *,
    backfill_id: str | None = None,
    keys: Iterable[str] | None = None,
) -> list[FailedRun]:
    """The failed runs of the backfill and/or whose dates intersect ``keys``, each with its skip reason."""
    runs = destination_runs(instance, business_days)
    latest: dict[str, dg.DagsterRun] = {}
    for run, run_keys in runs:
        latest.update(dict.fromkeys(run_keys, run))
    in_backfill = _backfill_lineage(runs, backfill_id) if backfill_id is not None else set()
    wanted = set(keys) if keys is not None else None
    selected = []
    for run, run_keys in runs:
        if run.status != dg.DagsterRunStatus.FAILURE:
            continue
        if backfill_id is not None and run.run_id not in in_backfill:
            continue
        if wanted is not None and wanted.isdisjoint(run_keys):
            continue
        selected.append(FailedRun(run, run_keys, _skip_reason(instance, run, run_keys, latest)))
    return selected


def _backfill_lineage(runs: Sequence[tuple[dg.DagsterRun, tuple]], backfill_id: str) -> set[str]:
    """The backfill's runs and every run descending from one: re-executions and run retries
    (``dagster/parent_run_id``, ``root_run_id``), the rerun sensor's reruns (``rerun_of_run_id``)."""
    members: set[str] = set()
    for run, _ in runs:  # creation order: a run's ancestors come before it
        ancestors = {run.tags.get(key) for key in (PARENT_RUN_ID, ROOT_RUN_ID, RERUN_OF_RUN_ID)}
        if run.tags.get(BACKFILL) == backfill_id or ancestors & members:
            members.add(run.run_id)
    return members


def _skip_reason(
    instance: dg.DagsterInstance, run: dg.DagsterRun, keys: Sequence[str], latest: dict[str, dg.DagsterRun]
) -> str | None:
    if run.tags.get(WILL_RETRY) == "true":
        return "run retries will retry it (dagster/will_retry=true)"
    children = instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_ID: run.run_id}), limit=1)
    if children:
        return f"already re-executed as {children[0].run_id} ({children[0].status.value})"
    later = {latest[key].run_id: latest[key] for key in keys}
    if run.run_id in later:
        return None  # still the latest run of at least one of its dates
    if all(other.status == dg.DagsterRunStatus.SUCCESS for other in later.values()):
        return f"its dates all succeeded in later run(s) {', '.join(later)}"
    return "later runs cover all its dates: " + ", ".join(f"{rid} ({r.status.value})" for rid, r in later.items())


def reexecute(
    instance: dg.DagsterInstance,
    failed: Sequence[FailedRun],
    on_submit: Callable[[FailedRun, str], None] | None = None,
) -> list[str]:
    """Re-execute each run from failure through the project's workspace; return the new run ids."""
    new_ids = []
    with dagster_internals.project_workspace(instance, WORKSPACE_YAML) as workspace:
        for item in failed:
            new_id = dagster_internals.reexecute_from_failure(instance, workspace, item.run)
            new_ids.append(new_id)
            if on_submit:
                on_submit(item, new_id)
    return new_ids


def wait_for_runs(
    instance: dg.DagsterInstance,
    run_ids: Sequence[str],
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    on_progress: Callable[[str], None] | None = None,
) -> list[dg.DagsterRun]:
    """Wait until every run has finished; return them (TimeoutError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        runs = list(instance.get_runs(dg.RunsFilter(run_ids=list(run_ids))))
        done = [run for run in runs if run.is_finished]
        failed = [run for run in done if run.status != dg.DagsterRunStatus.SUCCESS]
        line = f"{len(done)}/{len(run_ids)} re-executed run(s) finished, {len(failed)} failed"
        if on_progress and line != last:
            on_progress(line)
        last = line
        if len(done) == len(run_ids):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(run_ids) - len(done)} re-executed run(s) still running after {timeout_s:.0f}s")
        time.sleep(poll_s)
