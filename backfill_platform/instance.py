"""The project's Dagster instance class (``instance_class`` in ``dagster_home/dagster.yaml``).

It is Dagster's ``DagsterInstance`` plus one check after each stored event (the last item below). It
exists because Dagster imports the instance class when any process loads the instance (the webserver,
the daemon, the CLI, a run worker), before it serves a single request, so importing this module is the
one dependable place for instance-wide guards that must be in force in the webserver too:

- an asset backfill created by partition names refuses a name that is not a business day, with the
  reason (the UPSTREAM WORKAROUND ``dagster_internals.refuse_unknown_partition_keys_in_asset_backfills``;
  ``concurrency.explain_partition_key`` says why a key is not a partition);
- in a ``dagster-daemon run`` process, whoever started it, the instance takes the instance's daemon
  lock or the daemon exits naming the one that serves the instance (``daemon_lock.py``): one daemon
  per instance;
- every connection of the SQLite storages waits up to ``BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS`` (default
  60) for another process's write lock, instead of sqlite3's 5 s for runs.db and schedules.db, and the
  files stay in WAL mode (the UPSTREAM WORKAROUND ``dagster_internals.wait_for_sqlite_locks``): a write
  held up by the daemon, the webserver, a CLI, the runs or a maintenance script no longer fails a run;
- in the daemon process, the backfill daemon evaluates backfills every
  ``BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS`` (default 1) instead of Dagster's hard-coded 30 (the
  UPSTREAM WORKAROUND ``dagster_internals.set_backfill_daemon_interval``): a backfill's first runs are
  submitted seconds after the launch, its next ones soon after the previous ones end, and it is marked
  complete soon after its last run (1 s instead of 3 s took a 13-date UI backfill's overhead from
  7.25 s to 3.98 s, bench/ui_launch.py, issue 13). An evaluation with nothing to do is one query of
  the backfill table; the test suite runs with the default. The daemon also waits for the run retry
  decision of a backfill's failed runs before it completes the backfill (the UPSTREAM WORKAROUND
  ``dagster_internals.wait_for_run_retry_decisions_in_backfills``);
- a run that failed stays FAILURE when its interrupted worker reports a cancel after the failure (run
  monitoring ends a run at its maximum runtime with a cancel, then a failure; the UPSTREAM WORKAROUND
  ``dagster_internals.keep_failed_runs_failed``, from ``handle_new_event``);
- before the FAILURE or CANCELED of a run whose Spark session is on a Spark Connect server is stored,
  what that session still runs there is interrupted and awaited (``resources/spark_connect.py``): a
  run worker killed mid-write cannot commit after its run is recorded as ended.

| variable | default | meaning |
| --- | --- | --- |
| ``BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS`` | ``60`` | seconds a SQLite write waits for another's lock, then fails |
| ``BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS`` | ``1`` | seconds between backfill daemon evaluations (Dagster: 30) |

The run coordinator (``concurrency.py``) is loaded lazily, on the first run submitted, so it could not
hold this guard: the webserver can receive a ``launchPartitionBackfill`` before any submission.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from backfill_platform import daemon_lock, dagster_internals, tags
from backfill_platform.concurrency import explain_partition_key
from backfill_platform.settings import _parse_positive_float

dagster_internals.refuse_unknown_partition_keys_in_asset_backfills(explain_partition_key)

SQLITE_BUSY_TIMEOUT_VARIABLE = "BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS"
DEFAULT_SQLITE_BUSY_TIMEOUT_S = 60.0
BACKFILL_INTERVAL_VARIABLE = "BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS"
DEFAULT_BACKFILL_INTERVAL_S = 1.0
SPARK_REMOTE_VARIABLE = "BACKFILL_SPARK_REMOTE"  # settings.py: the Spark Connect server runs use


def _seconds(variable: str, default: float, environ: Mapping[str, str] | None) -> float:
    """A number of seconds > 0 from ``variable``, else ``default``; a bad value is a ``SettingsError``
    naming the variable, raised when the instance loads."""
    value = (os.environ if environ is None else environ).get(variable, "").strip()
    return _parse_positive_float(variable, value) if value else default


def sqlite_busy_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    return _seconds(SQLITE_BUSY_TIMEOUT_VARIABLE, DEFAULT_SQLITE_BUSY_TIMEOUT_S, environ)


def backfill_daemon_interval_s(environ: Mapping[str, str] | None = None) -> float:
    return _seconds(BACKFILL_INTERVAL_VARIABLE, DEFAULT_BACKFILL_INTERVAL_S, environ)


dagster_internals.wait_for_sqlite_locks(sqlite_busy_timeout_s())


class BackfillPlatformInstance(dg.DagsterInstance):
    """``DagsterInstance``; importing its module installs the guards above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if daemon_lock.is_daemon_process():
            daemon_lock.hold_daemon_lock_or_exit(self.root_directory)
            dagster_internals.set_backfill_daemon_interval(backfill_daemon_interval_s())
            dagster_internals.wait_for_run_retry_decisions_in_backfills()

    def handle_new_event(self, event, *, batch_metadata=None) -> None:
        stop_spark_connect_operations(self, event)  # before the run's end is stored
        super().handle_new_event(event, batch_metadata=batch_metadata)
        dagster_internals.keep_failed_runs_failed(self, event)

    # What Dagster asks a custom instance class for: no settings of its own, Dagster's defaults.
    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str):
        return dagster_internals.instance_config_defaults(base_dir)


RUN_ENDS = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED)


def stop_spark_connect_operations(instance: dg.DagsterInstance, event) -> None:
    """Before a RUN_FAILURE / RUN_CANCELED ``event`` is stored: if the run used a Spark Connect server
    (``tags.SPARK_REMOTE``), interrupt its session's operations there and wait until they ended. The
    outcome is an engine event in the run's log; a failure to do so never stops the event's storage."""
    if not event.is_dagster_event or event.dagster_event_type not in RUN_ENDS:
        return
    run = instance.get_run_by_id(event.run_id)
    address = run.tags.get(tags.SPARK_REMOTE) if run is not None else None
    if not address:
        return
    from backfill_platform.resources.spark_connect import server_address, stop_run_operations

    configured = os.environ.get(SPARK_REMOTE_VARIABLE, "").strip()  # its parameters (e.g. use_ssl), if the same server
    remote = configured if configured and server_address(configured) == address else address
    try:
        token = None
        if shared_dir := run.tags.get(tags.SPARK_SERVER_DIR):  # the data dir's shared server: it wants its token
            from backfill_platform.resources.shared_spark import token_for

            token = token_for(shared_dir, address)
        interrupted = stop_run_operations(remote, run.run_id, token=token)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        if configured:
            reason = reason.replace(configured, address)
        instance.report_engine_event(
            f"Could not stop this run's Spark Connect operations on {address} ({type(error).__name__}: "
            f"{reason}); a write it started there may still commit.", run)
        return
    if interrupted:
        instance.report_engine_event(
            f"Interrupted {len(interrupted)} Spark Connect operation(s) of this run on {address} and waited "
            f"for them to end before recording the run's end, so none of its writes commits after it: "
            f"{', '.join(interrupted)}", run)
