"""Every use of Dagster's internal modules (``dagster._...``), in one place.

Dagster ships weekly and its internals can change in any patch release. Nothing else in the package
imports ``dagster._``: when an upgrade breaks one of these, ``test_dagster_internals.py`` fails first,
with the name of the wrapper below. Each entry says why it is needed and what public API would
replace it.

:func:`store_asset_backfill`
    internal used: ``PartitionBackfill.from_partitions_by_assets``, ``PartitionsByAssetSelector``,
    ``PartitionRangeSelector``, ``PartitionsSelector``, ``make_new_backfill_id``
    why: the CLI stores an asset backfill in the instance exactly as the UI's ``launchPartitionBackfill``
    mutation does, without needing a running webserver
    public replacement: the webserver's GraphQL ``launchPartitionBackfill`` (``dagster_graphql``) once
    the CLI talks to a webserver; Dagster has no public Python API for it

:data:`BulkActionStatus`, :data:`BACKFILL_TERMINAL_STATUSES`
    internal used: ``dagster._core.execution.backfill``
    why: filter ``instance.get_backfills(status=...)`` and tell when a backfill ended
    public replacement: none public; GraphQL ``partitionBackfillsOrError(status:)``

:func:`project_workspace`, :class:`JobSubmitter`
    internal used: ``WorkspaceProcessContext``, ``WorkspaceFileTarget``, ``dagster._cli.job._create_run``
    and the ``cli_target`` lookups
    why: create a queued run of ``destination_data_job`` for a chunk, tagged with its partition range,
    and submit it to the instance's run coordinator: what ``dagster job launch`` does, in-process (a
    subprocess per chunk costs ~2.5 s of imports)
    public replacement: ``dagster job launch`` (a subprocess per run) or GraphQL ``launchRun``

:func:`sensor_is_running`
    internal used: ``InstigatorType``, ``InstigatorStatus``
    why: whether the rerun sensor is on, as stored in the instance
    public replacement: GraphQL ``sensorOrError { sensorState { status } }``

:func:`cancel_backfill`
    internal used: ``BulkActionStatus.CANCELING``, ``PartitionBackfill.with_status``
    why: cancel a backfill (the daemon then cancels its queued and running runs) as the UI's *Cancel
    backfill* does, without a webserver
    public replacement: the webserver's GraphQL ``cancelPartitionBackfill(backfillId:)``

:func:`reexecute_from_failure`
    internal used: ``ReexecutionStrategy``, ``JobSubsetSelector``, ``DagsterInstance.create_reexecuted_run``
    and the ``cli_target`` lookups
    why: ``backfill-platform repair`` re-executes failed runs from failure exactly as the UI's
    *Re-execute > From failure* does (the parent's job, asset selection, run config and tags,
    ``dagster/parent_run_id``/``root_run_id``), submitted to the run queue, without a webserver
    public replacement: the webserver's GraphQL ``launchRunReexecution(reexecutionParams: {parentRunId,
    strategy: FROM_FAILURE})``; Dagster has no public Python API for it

:func:`refuse_unknown_partition_keys_in_asset_backfills` (an UPSTREAM WORKAROUND)
    internal used: ``AssetBackfillData.from_asset_partitions`` (wrapped, in every process that loads
    the instance: ``instance.py`` installs it when Dagster imports the instance class)
    why: Dagster maps a partition key that its time-window definition excludes (a holiday) to the
    next partition: ``launchPartitionBackfill(partitionNames: ["2024-07-04"])`` is accepted and
    materializes 2024-07-05 (``TimeWindowPartitionsSubset.with_partition_keys``). The wrapper refuses
    such keys with the reason, before the backfill is stored.
    public replacement: none; remove the wrapper once Dagster rejects excluded keys itself
    (``test_dagster_internals.py`` has the reproduction, and fails when Dagster fixes it)

:func:`instance_config_defaults`
    internal used: ``InstanceRef.config_defaults``
    why: Dagster asks a custom ``instance_class`` (``instance.py``) for its storage defaults; these
    are Dagster's own
    public replacement: none (``instance_class`` has no public base with the defaults)

Public APIs used instead of internals elsewhere: ``dg.DagsterRunStatus``, ``dg.RunsFilter``,
``dg.DagsterRun``, ``dg.AssetPartitionStatus``, ``dg.DagsterUnknownPartitionError``,
``dg.partition_loading_context``, ``dg.QueuedRunCoordinator``, ``dg.SubmitRunContext``; daemon
liveness from ``instance.get_daemon_heartbeats()``; the daemon started as ``dagster-daemon run``.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg
from dagster._core.definitions.run_request import InstigatorType
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
from dagster._core.scheduler.instigation import InstigatorStatus
from dagster._core.utils import make_new_backfill_id

BACKFILL_TERMINAL_STATUSES = frozenset(status.value for status in BULK_ACTION_TERMINAL_STATUSES)


def store_asset_backfill(
    instance: dg.DagsterInstance,
    asset_graph,
    *,
    whole_assets: Sequence[dg.AssetKey],
    partition_ranges: Mapping[dg.AssetKey, Sequence[tuple[str, str]]],
    tags: Mapping[str, str],
    title: str | None,
    run_config: Mapping | None,
) -> str:
    """Store an asset backfill (the daemon submits its runs); return its id.

    ``whole_assets`` are backfilled entirely (unpartitioned prerequisites); ``partition_ranges`` give
    each partitioned asset its inclusive key ranges.
    """
    selectors = [PartitionsByAssetSelector(asset_key=key) for key in whole_assets]
    for key, ranges in partition_ranges.items():
        selectors.append(
            PartitionsByAssetSelector(
                asset_key=key,
                partitions=PartitionsSelector(
                    ranges=[PartitionRangeSelector(start=start, end=end) for start, end in ranges]
                ),
            )
        )
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_partitions_by_assets(
        backfill_id=backfill_id,
        asset_graph=asset_graph,
        backfill_timestamp=time.time(),
        tags=dict(tags),
        dynamic_partitions_store=instance,
        partitions_by_assets=selectors,
        title=title,
        description=None,
        run_config=dict(run_config) if run_config else None,
    )
    instance.add_backfill(backfill)
    return backfill_id


def requested_backfills(instance: dg.DagsterInstance) -> list:
    """Backfills that have not ended (status REQUESTED)."""
    return list(instance.get_backfills(status=BulkActionStatus.REQUESTED))


@contextlib.contextmanager
def project_workspace(instance: dg.DagsterInstance, workspace_yaml: Path) -> Iterator[object]:
    """A workspace request context for ``workspace_yaml``, loaded as the daemon and webserver load it."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster.version import __version__

    with WorkspaceProcessContext(
        instance=instance,
        version=__version__,
        read_only=False,
        workspace_load_target=WorkspaceFileTarget(paths=[str(workspace_yaml)]),
    ) as process_context:
        yield process_context.create_request_context()


class JobSubmitter:
    """Creates runs of one job of the workspace's only code location and submits them to the queue."""

    def __init__(self, instance: dg.DagsterInstance, workspace, job_name: str):
        from dagster._cli.workspace.cli_target import (
            get_code_location_from_workspace,
            get_remote_job_from_remote_repo,
            get_remote_repository_from_code_location,
        )

        self.instance = instance
        self.workspace = workspace
        self.location = get_code_location_from_workspace(workspace, None)
        self.repo = get_remote_repository_from_code_location(self.location, None)
        self.job = get_remote_job_from_remote_repo(self.repo, job_name)

    def submit(self, run_config: Mapping | None, tags: Mapping[str, str]) -> str:
        """Create a run (as ``dagster job launch`` does) and submit it to the run coordinator."""
        from dagster._cli.job import _create_run

        created = _create_run(
            instance=self.instance,
            code_location=self.location,
            remote_repo=self.repo,
            remote_job=self.job,
            run_config=dict(run_config or {}),
            tags=dict(tags),
            op_selection=None,
            run_id=None,
        )
        self.instance.submit_run(created.run_id, self.workspace)
        return created.run_id


def sensor_is_running(instance: dg.DagsterInstance, name: str) -> bool | None:
    """Whether the sensor ``name`` is on as stored in the instance; None when only its default applies."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == name and state.status != InstigatorStatus.DECLARED_IN_CODE:
            return state.status == InstigatorStatus.RUNNING
    return None


def reexecute_from_failure(instance: dg.DagsterInstance, workspace, parent_run: dg.DagsterRun) -> str:
    """Re-execute ``parent_run`` from its failed step and submit it to the run queue; return the new run id.

    What GraphQL ``launchRunReexecution`` does for the UI's *Re-execute > From failure*: the remote job
    is the parent's (its code location, repository, job and asset selection), the run config and tags
    are the parent's (``use_parent_run_tags``), the new run is tagged ``dagster/parent_run_id`` and
    ``dagster/root_run_id``. A run created in process (``materialize``) has no remote origin: the
    workspace's only code location and repository are used.
    """
    from dagster._cli.workspace.cli_target import (
        get_code_location_from_workspace,
        get_remote_repository_from_code_location,
    )
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.execution.plan.resume_retry import ReexecutionStrategy

    origin = parent_run.remote_job_origin.repository_origin if parent_run.remote_job_origin else None
    location = get_code_location_from_workspace(
        workspace, origin.code_location_origin.location_name if origin else None
    )
    repo = get_remote_repository_from_code_location(location, origin.repository_name if origin else None)
    remote_job = location.get_job(
        JobSubsetSelector(
            location_name=location.name,
            repository_name=repo.name,
            job_name=parent_run.job_name,
            op_selection=None,
            asset_selection=parent_run.asset_selection,
            asset_check_selection=parent_run.asset_check_selection,
        )
    )
    run = instance.create_reexecuted_run(
        parent_run=parent_run,
        request_context=workspace,
        code_location=location,
        remote_job=remote_job,
        strategy=ReexecutionStrategy.FROM_FAILURE,
        use_parent_run_tags=True,
    )
    instance.submit_run(run.run_id, workspace)
    return run.run_id


def cancel_backfill(instance: dg.DagsterInstance, backfill_id: str) -> None:
    """Cancel a backfill as the UI's *Cancel backfill* (GraphQL ``cancelPartitionBackfill``) does: mark
    it CANCELING; the daemon then cancels its queued and running runs and marks it CANCELED."""
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise KeyError(f"no backfill {backfill_id} in this instance")
    instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))


__all__ = [
    "BACKFILL_TERMINAL_STATUSES",
    "BulkActionStatus",
    "JobSubmitter",
    "cancel_backfill",
    "project_workspace",
    "reexecute_from_failure",
    "requested_backfills",
    "sensor_is_running",
    "store_asset_backfill",
]


def instance_config_defaults(base_dir: str):
    """Dagster's default storage classes for an instance in ``base_dir``."""
    from dagster._core.instance.ref import InstanceRef

    return InstanceRef.config_defaults(base_dir)


# --- UPSTREAM WORKAROUND: excluded partition keys in asset backfills ---------------------------------
# Reproduction (dagster 1.13.x):
#   pd = dg.DailyPartitionsDefinition(start_date="2024-01-01", exclusions=[dt.datetime(2024, 7, 4)])
#   list(pd.subset_with_partition_keys(["2024-07-04"]).get_partition_keys())  # ['2024-07-05']
# The webserver's launchPartitionBackfill builds the backfill's target with it, so its own
# PartitionKeysNotFoundError check sees only 2024-07-05 and the backfill runs the wrong day.


def refuse_unknown_partition_keys_in_asset_backfills(explain: Callable[[str], str | None]) -> None:
    """Make every asset backfill created by partition names (the UI's launcher, GraphQL
    ``launchPartitionBackfill``) refuse a name that is not a partition of a selected asset, with
    ``explain(key)`` (e.g. "2024-07-04 (Thursday): holiday: Independence Day") in the message.
    Installing it twice is harmless."""
    from dagster._core.execution.asset_backfill import AssetBackfillData

    original = AssetBackfillData.from_asset_partitions.__func__
    if getattr(original, "_refuses_unknown_keys", False):
        return

    def from_asset_partitions(cls, asset_graph, partition_names, asset_selection, dynamic_partitions_store,
                              backfill_start_timestamp, all_partitions):
        if partition_names:
            when = datetime.datetime.fromtimestamp(backfill_start_timestamp, tz=datetime.timezone.utc)
            with dg.partition_loading_context(when, dynamic_partitions_store):
                for key in asset_selection:
                    partitions_def = asset_graph.get(key).partitions_def
                    unknown = [name for name in partition_names
                               if partitions_def is not None and not partitions_def.has_partition_key(name)]
                    if unknown:
                        reasons = "; ".join((explain(name) or name).rstrip(".") for name in unknown[:10])
                        raise dg.DagsterUnknownPartitionError(
                            f"Not a partition of {key.to_user_string()}, so the backfill was not created: "
                            f"{reasons}. Pick business days (the partition picker only offers those)."
                        )
        return original(cls, asset_graph, partition_names, asset_selection, dynamic_partitions_store,
                        backfill_start_timestamp, all_partitions)

    from_asset_partitions._refuses_unknown_keys = True
    AssetBackfillData.from_asset_partitions = classmethod(from_asset_partitions)
