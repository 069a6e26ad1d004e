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

:func:`wait_for_sqlite_locks` (an UPSTREAM WORKAROUND)
    internal used: the ``create_engine`` name of Dagster's SQLite storage modules (``SQLITE_STORAGE_MODULES``),
    wrapped in every process that loads the instance (``instance.py`` installs it when Dagster imports
    the instance class, before any storage connects)
    why: SQLite run and schedule storage wait 5 s for another process's write lock (the event log 30 s),
    then raise ``database is locked``: runs, UI launches, CLI submissions and daemon ticks failed
    public replacement: none; remove once Dagster gives run and schedule storage its
    ``SQLITE_BUSY_TIMEOUT_SECONDS`` too (``test_sqlite_load.py`` has the reproduction)

:func:`set_backfill_daemon_interval` (an UPSTREAM WORKAROUND)
    internal used: ``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`` (set in the daemon
    process by ``instance.py`` before the daemon's loops start)
    why: the backfill daemon evaluates backfills every 30 s, hard-coded; a backfill launched from the
    UI or the CLI waits up to 30 s to submit its first runs, and again for every later step
    public replacement: none; remove once the backfill daemon's interval is an instance setting

:func:`wait_for_run_retry_decisions_in_backfills` (an UPSTREAM WORKAROUND)
    internal used: ``dagster._core.execution.asset_backfill.backfill_runs_are_complete`` (wrapped in the
    daemon process by ``instance.py``), ``WILL_RETRY_TAG``, ``BACKFILL_ID_TAG``
    why: a failed run gets its FAILURE status and, in a second write, ``dagster/will_retry``; a backfill
    evaluated in between completed, and run retries then refused the run (its section below says more).
    The wrapper keeps the backfill in progress while a failed run of it has no retry decision yet.
    public replacement: none; remove once Dagster writes the status and the tag atomically
    (``test_dagster_internals.py`` has the reproduction)

:func:`keep_failed_runs_failed` (an UPSTREAM WORKAROUND)
    internal used: ``DagsterInstance.handle_run_event`` (not public API), called from
    ``BackfillPlatformInstance.handle_new_event`` (``instance.py``) after a RUN_CANCELED is stored
    why: a run ended at its maximum runtime (FAILURE, from run monitoring) ended CANCELED when its worker's
    RUN_CANCELED came just after: the UI showed a canceled run that had failed and was being retried
    public replacement: none; remove once Dagster decides the run's end status in one place

:func:`instance_config_defaults`
    internal used: ``InstanceRef.config_defaults``
    why: Dagster asks a custom ``instance_class`` (``instance.py``) for its storage defaults; these
    are Dagster's own
    public replacement: none (``instance_class`` has no public base with the defaults)

Elsewhere only public APIs: ``dg.DagsterRunStatus``, ``dg.RunsFilter``, ``dg.QueuedRunCoordinator``...;
whether a daemon runs comes from the daemon lock (``daemon_lock.py``).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.selector import PartitionRangeSelector, PartitionsByAssetSelector, PartitionsSelector
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus, PartitionBackfill
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

    What GraphQL ``launchRunReexecution`` does for the UI's *Re-execute > From failure*: the parent's
    remote job, asset selection, run config and tags, plus ``dagster/parent_run_id``/``root_run_id``. A
    run created in process (``materialize``) has no remote origin: the workspace's only location is used.
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


# --- UPSTREAM WORKAROUND: SQLite run and schedule storage give up on a lock after 5 s ----------------
# Dagster 1.13.27 opens the event log's SQLite files with a 30 s busy timeout (connect_args={"timeout":
# dagster._core.storage.sqlite.SQLITE_BUSY_TIMEOUT_SECONDS}), but SqliteRunStorage (history/runs.db: runs,
# run tags, backfills, daemon heartbeats and cursors) and SqliteScheduleStorage (schedules/schedules.db)
# call create_engine(conn_string, poolclass=NullPool) without it: sqlite3.connect's default of 5 s applies.
# Reproduction (test_sqlite_load.py):
#   holder = sqlite3.connect(f"{DAGSTER_HOME}/history/runs.db", isolation_level=None)
#   holder.execute("BEGIN IMMEDIATE")  # another process's write transaction, open for 8 s
#   instance.report_dagster_event(dg.DagsterEvent(event_type_value="PIPELINE_START", job_name="j"), run_id)
#   -> after 5.0 s: sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked
#      [SQL: UPDATE runs SET status=?, ...]: the RUN_START event is stored, the run stays NOT_STARTED.
# Under load (test_sqlite_storages_under_team_load with a 5 s timeout) it failed runs, the UI's backfill
# launches, CLI submissions and the daemon's heartbeats and cursors. The wrapper gives every
# engine of Dagster's SQLite storages one busy timeout (Dagster's own where that is longer), and checks once
# per file and process that the file is in WAL mode (readers never block writers; Dagster creates its files
# in WAL mode, an old file may not be).
# Speed (issue 13): the storages create an engine, and open the file, for every connection (the event log 4 per
# asset event). The wrapper hands them one engine per file, which keeps its connections in run workers
# (sqlite_engines.py).

SQLITE_STORAGE_MODULES = (
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
)
_sqlite_locks = {"busy_timeout_s": 5.0}  # sqlite3.connect's default until wait_for_sqlite_locks runs


def wait_for_sqlite_locks(busy_timeout_s: float) -> None:
    """Make every connection of Dagster's SQLite storages (run, event log, schedule) opened in this process
    wait up to ``busy_timeout_s`` for another connection's write lock (or Dagster's own timeout where that
    is longer) before it raises ``database is locked``, and keep the files in WAL mode. Installing it again
    only changes the timeout."""
    import importlib

    _sqlite_locks["busy_timeout_s"] = float(busy_timeout_s)
    for name in SQLITE_STORAGE_MODULES:
        module = importlib.import_module(name)
        if not getattr(module.create_engine, "_waits_for_sqlite_locks", False):
            module.create_engine = _patient_sqlite_engine(module.create_engine)


def _patient_sqlite_engine(create_engine: Callable) -> Callable:
    import functools

    from backfill_platform import sqlite_engines

    @functools.wraps(create_engine)
    def patient_create_engine(url, *args, **kwargs):
        if not str(url).startswith("sqlite"):
            return create_engine(url, *args, **kwargs)
        return sqlite_engines.engine_for(create_engine, url, args, kwargs, _sqlite_locks["busy_timeout_s"])

    patient_create_engine._waits_for_sqlite_locks = True
    return patient_create_engine


# --- UPSTREAM WORKAROUND: the backfill daemon's 30 s loop is hard-coded -------------------------------
# Dagster 1.13.27, dagster/_daemon/backfill.py, execute_backfill_iteration_loop:
#   from dagster._daemon.controller import DEFAULT_DAEMON_INTERVAL_SECONDS   # 30, read when the loop starts
#   ... shutdown_event.wait(max(0, DEFAULT_DAEMON_INTERVAL_SECONDS - loop_duration))
# No dagster.yaml setting reaches it (backfills: has use_threads/num_workers only). The same constant is
# the asset daemon's default minimum interval (unused here: no automation conditions).


def set_backfill_daemon_interval(seconds: float) -> None:
    """Make the backfill daemon of this process evaluate backfills every ``seconds`` (call before the
    daemon's loops start)."""
    from dagster._daemon import controller

    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds


# --- UPSTREAM WORKAROUND: a backfill can complete between a run's FAILURE and its will_retry tag ------
# Dagster 1.13.27, dagster/_core/instance/methods/event_methods.py, handle_new_event: a RUN_FAILURE event
# updates the run's status (handle_run_event), THEN adds dagster/will_retry (add_run_tags): two writes.
# asset_backfill.backfill_runs_are_complete, evaluated by the backfill daemon between them, sees a failed
# run without the tag, not "complete_and_waiting_to_retry", and the backfill ends COMPLETED_FAILED;
# auto_run_reexecution.should_retry then refuses the retry because the backfill is terminal. Seen in
# test_retry_acceptance.py (S6, SIGKILLed worker): RUN_FAILURE at t, backfill ended at t + 0.18 s,
# "Not retrying run since it is part of a backfill that is in a terminal state (COMPLETED_FAILED)".


def wait_for_run_retry_decisions_in_backfills() -> None:
    """In this process, an asset backfill is not complete while one of its failed runs has no
    ``dagster/will_retry`` decision yet (run retries enabled). Installing it again changes nothing."""
    from dagster._core.execution import asset_backfill

    complete = asset_backfill.backfill_runs_are_complete
    if getattr(complete, "_waits_for_retry_decisions", False):
        return

    def backfill_runs_are_complete(backfill_id, instance, logger):
        if not complete(backfill_id, instance, logger):
            return False
        return not _failed_runs_without_retry_decision(instance, backfill_id, logger)

    backfill_runs_are_complete._waits_for_retry_decisions = True
    backfill_runs_are_complete.__wrapped__ = complete
    asset_backfill.backfill_runs_are_complete = backfill_runs_are_complete


RETRY_DECISION_WAIT_S = 60.0  # a failure older than this without the tag will never get one (retries were off)


def _failed_runs_without_retry_decision(instance, backfill_id: str, logger) -> list[str]:
    from dagster._core.storage.tags import BACKFILL_ID_TAG, WILL_RETRY_TAG

    if not instance.run_retries_enabled:
        return []
    undecided = [
        record.dagster_run.run_id for record in instance.get_run_records(dg.RunsFilter(
            tags={BACKFILL_ID_TAG: backfill_id}, statuses=[dg.DagsterRunStatus.FAILURE]))
        if WILL_RETRY_TAG not in record.dagster_run.tags
        and time.time() - (record.end_time or record.update_timestamp.timestamp()) < RETRY_DECISION_WAIT_S
    ]
    if undecided:
        logger.info(f"Failed runs of the backfill without a run retry decision yet; still in progress: {undecided}")
    return undecided


# --- UPSTREAM WORKAROUND: a run failed at its maximum runtime can end CANCELED ------------------------
# Dagster 1.13.27, dagster/_daemon/monitoring/run_monitoring.py, check_run_timeout: report_run_canceling,
# run_launcher.terminate, then report_run_failed("Exceeded maximum runtime of N seconds."). The interrupted
# worker reads the run's status (job_execution_iterator, dagster/_core/execution/api.py): CANCELING ->
# RUN_CANCELED; FAILURE -> an engine event only. A RUN_FAILURE landing between that read and the worker's
# write left the run CANCELED, its retry launched all the same (CI, stop 21: test_retry_acceptance.py S5).
# Reproduction (test_dagster_internals.py): report_run_canceling, report_run_failed, report_run_canceled.


def keep_failed_runs_failed(instance: dg.DagsterInstance, event) -> None:
    """After a RUN_CANCELED ``event`` is stored: a run that also has a RUN_FAILURE (written before or
    after) is FAILURE again; both events stay in its log."""
    if not event.is_dagster_event or event.dagster_event_type != dg.DagsterEventType.RUN_CANCELED:
        return
    run = instance.get_run_by_id(event.run_id)
    if run is None or run.status != dg.DagsterRunStatus.CANCELED:
        return
    for record in instance.get_records_for_run(event.run_id, of_type=dg.DagsterEventType.RUN_FAILURE, limit=1).records:
        failure = record.event_log_entry  # its time becomes the run's end time again
        when = datetime.datetime.fromtimestamp(failure.timestamp, tz=datetime.timezone.utc)
        instance.handle_run_event(event.run_id, failure.get_dagster_event(), when)
