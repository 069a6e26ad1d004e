"""Chunked backfills: one run per chunk, submitted to the instance's run queue by the CLI.

Why not always a Dagster asset backfill? An asset backfill chunks by the asset's
``BackfillPolicy.multi_run(N)``, which is fixed when the code location loads (the daemon's copy of
the definitions), and it decides the order and pace itself. When the user asks for a chunk size,
newest-first order or a concurrency cap *for this backfill*, the CLI does what
``dagster job launch`` does, once per chunk: it creates a run of ``destination_data_job`` tagged
``dagster/asset_partition_range_start``/``_end`` (a native range run, exactly like an asset
backfill's chunk) and **submits it to the instance's run coordinator** (the queue, its limits and the
daemon stay in charge of starting runs; the UI shows every run with its partitions). Newest-first
is the queue's own ``dagster/priority`` tag (newest chunk highest); ``--max-concurrent N`` is kept by
the CLI, which holds back further submissions while N of its runs are queued or running (the
instance's ``max_concurrent_runs`` caps it as well). All runs carry ``tags.LAUNCH_ID``.
If the CLI is stopped, runs already submitted finish; ``backfill --reprocess missing`` (or
``failed``) over the same range submits only what is left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import dagster as dg

from backfill_platform import dagster_internals, tags
from backfill_platform.processes import WORKSPACE_YAML
from backfill_platform.reports.plan import PlannedRun

UNFINISHED = {
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.MANAGED,
}


def chunk_tags(run: PlannedRun, base_tags: Mapping[str, str], launch_id: str, priority: int | None) -> dict[str, str]:
    run_tags = {
        **base_tags,
        tags.RANGE_START: run.first,
        tags.RANGE_END: run.last,
        tags.LAUNCH_ID: launch_id,
        tags.REQUESTED_BY: base_tags.get(tags.REQUESTED_BY, "cli"),
    }
    if priority is not None:
        run_tags[tags.PRIORITY] = str(priority)
    return run_tags


def launch_chunks(
    instance: dg.DagsterInstance,
    runs: Sequence[PlannedRun],
    *,
    base_tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, object] | None = None,
    newest_first: bool = False,
    max_concurrent: int | None = None,
    on_submit: Callable[[PlannedRun, str], None] | None = None,
    poll_s: float = 1.0,
    timeout_s: float = 6 * 3600,
) -> str:
    """Submit one queued run per chunk (in the given order); return the launch id."""
    launch_id = uuid.uuid4().hex[:12]
    deadline = time.monotonic() + timeout_s
    with dagster_internals.project_workspace(instance, WORKSPACE_YAML) as workspace:
        submitter = dagster_internals.JobSubmitter(instance, workspace, tags.DESTINATION_JOB)
        for i, run in enumerate(runs):
            while max_concurrent and len(unfinished_runs(instance, launch_id)) >= max_concurrent:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"launch {launch_id}: still waiting to submit after {timeout_s:.0f}s")
                time.sleep(poll_s)
            priority = len(runs) - i if newest_first else None
            run_id = submitter.submit(run_config, chunk_tags(run, base_tags or {}, launch_id, priority))
            if on_submit:
                on_submit(run, run_id)
    return launch_id


def launch_runs(instance: dg.DagsterInstance, launch_id: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={tags.LAUNCH_ID: launch_id})))


def unfinished_runs(instance: dg.DagsterInstance, launch_id: str) -> list[dg.DagsterRun]:
    return [run for run in launch_runs(instance, launch_id) if run.status in UNFINISHED]


def wait_for_launch(
    instance: dg.DagsterInstance, launch_id: str, *, timeout_s: float, poll_s: float = 1.0,
    on_progress: Callable[[str], None] | None = None,
) -> list[dg.DagsterRun]:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        runs = launch_runs(instance, launch_id)
        done = [r for r in runs if r.status not in UNFINISHED]
        ok = sum(1 for r in done if r.status == dg.DagsterRunStatus.SUCCESS)
        state = "done" if len(done) == len(runs) else "running"
        line = f"[{state}] {len(done)}/{len(runs)} runs finished, {ok} succeeded"
        if on_progress and line != last:
            on_progress(line)
        last = line
        if len(done) == len(runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"launch {launch_id}: runs still unfinished after {timeout_s:.0f}s")
        time.sleep(poll_s)
