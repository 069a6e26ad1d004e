"""Each Dagster internal that ``backfill_platform/dagster_internals.py`` wraps, exercised on a real
(test) instance: after a Dagster upgrade, these fail first, with the wrapper's name."""

from __future__ import annotations

import multiprocessing
import subprocess
from collections.abc import Callable

import dagster as dg
import sqlalchemy

from backfill_platform import dagster_internals, sqlite_engines
from backfill_platform.processes import WORKSPACE_YAML
from backfill_platform.settings import PROJECT_ROOT
from backfill_platform.tags import DESTINATION, DESTINATION_JOB, PREREQUISITES, RANGE_END, RANGE_START
from backfill_platform_tests.helpers import TEST_DEFS


def test_only_one_module_imports_dagster_internals():
    found = subprocess.run(
        ["grep", "-rlE", r"^\s*(from|import) dagster\._", "backfill_platform/", "--include=*.py"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    ).stdout.split()
    assert found == ["backfill_platform/dagster_internals.py"]


def test_store_asset_backfill_and_its_statuses(instance):
    backfill_id = dagster_internals.store_asset_backfill(
        instance,
        TEST_DEFS.resolve_asset_graph(),
        whole_assets=PREREQUISITES,
        partition_ranges={DESTINATION: [("2024-07-01", "2024-07-03"), ("2024-07-05", "2024-07-05")]},
        tags={"team": "risk"},
        title="internals",
        run_config={"ops": {"destination_data": {"config": {"full_refresh": True}}}},
    )
    stored = instance.get_backfill(backfill_id)
    assert stored.title == "internals" and stored.tags == {"team": "risk"}
    target_subset = stored.asset_backfill_data.target_subset
    targets = {(ap.asset_key, ap.partition_key) for ap in target_subset.iterate_asset_partitions()}
    assert {key for key, partition in targets if key == DESTINATION and partition} == {DESTINATION}
    assert sorted(p for key, p in targets if key == DESTINATION) == [
        "2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05"
    ]
    assert {key for key, _ in targets} == {DESTINATION, *PREREQUISITES}
    assert [b.backfill_id for b in dagster_internals.requested_backfills(instance)] == [backfill_id]
    assert stored.status.value not in dagster_internals.BACKFILL_TERMINAL_STATUSES
    assert "COMPLETED_SUCCESS" in dagster_internals.BACKFILL_TERMINAL_STATUSES


def test_job_submitter_queues_a_range_run(tmp_path):
    from backfill_platform_tests.conftest import make_dagster_home

    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with dagster_internals.project_workspace(instance, WORKSPACE_YAML) as workspace:
            submitter = dagster_internals.JobSubmitter(instance, workspace, DESTINATION_JOB)
            run_id = submitter.submit(None, {RANGE_START: "2024-07-01", RANGE_END: "2024-07-02", "team": "risk"})
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.QUEUED  # the queued coordinator holds it for a daemon
        assert run.job_name == DESTINATION_JOB and run.tags["team"] == "risk"


def test_sensor_is_running_reads_the_stored_state(instance):
    assert dagster_internals.sensor_is_running(instance, "rerun_failed_partitions") is None  # default only


def test_reexecute_from_failure_queues_a_child_run_of_the_failed_step(tmp_path, spark):
    from backfill_platform.definitions import build_defs
    from backfill_platform.settings import Settings
    from backfill_platform_tests.conftest import make_dagster_home

    home = make_dagster_home(tmp_path / "home")
    job = build_defs(Settings(data_dir=tmp_path / "data")).resolve_job_def(DESTINATION_JOB)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # no source table: destination_data fails with a logic error, as in a real run
        failed = job.execute_in_process(
            instance=instance, partition_key="2024-07-01", tags={"team": "risk"}, raise_on_error=False
        )
        assert not failed.success
        with dagster_internals.project_workspace(instance, WORKSPACE_YAML) as workspace:
            run_id = dagster_internals.reexecute_from_failure(instance, workspace, failed.dagster_run)
        run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.QUEUED  # submitted to the queue, for a daemon to start
    assert run.job_name == DESTINATION_JOB and run.step_keys_to_execute == ["destination_data"]
    assert run.parent_run_id == failed.run_id and run.root_run_id == failed.run_id
    assert run.tags["dagster/parent_run_id"] == failed.run_id and run.tags["dagster/root_run_id"] == failed.run_id
    assert run.tags["team"] == "risk" and run.tags["dagster/partition"] == "2024-07-01"
    assert run.run_config == failed.dagster_run.run_config


def test_cancel_backfill_marks_it_canceling_for_the_daemon(instance):
    backfill_id = dagster_internals.store_asset_backfill(
        instance, TEST_DEFS.resolve_asset_graph(), whole_assets=(),
        partition_ranges={DESTINATION: [("2024-07-01", "2024-07-02")]}, tags={}, title=None, run_config=None,
    )
    dagster_internals.cancel_backfill(instance, backfill_id)
    assert instance.get_backfill(backfill_id).status == dagster_internals.BulkActionStatus.CANCELING
    assert dagster_internals.requested_backfills(instance) == []


def test_a_backfill_waits_for_the_run_retry_decision_of_its_failed_runs(tmp_path):
    """UPSTREAM WORKAROUND ``wait_for_run_retry_decisions_in_backfills``. The reproduction: a failed run
    of a backfill without ``dagster/will_retry`` (the state between the two writes of a RUN_FAILURE with
    run retries on). Dagster's own check calls the backfill's runs complete, so the daemon ends the
    backfill and run retries then refuse to retry the run; the wrapped check waits for the decision."""
    import logging

    from dagster._core.execution import asset_backfill

    @dg.asset
    def breaks():
        raise RuntimeError("worker lost")

    with dg.instance_for_test(temp_dir=str(tmp_path)) as without_retries:  # writes no will_retry tag
        failed = dg.materialize([breaks], instance=without_retries, tags={"dagster/backfill": "b1"},
                                raise_on_error=False)
    log = logging.getLogger("test")
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"run_retries": {"enabled": True}}) as instance:
        assert "dagster/will_retry" not in instance.get_run_by_id(failed.run_id).tags
        dagster_internals.wait_for_run_retry_decisions_in_backfills()
        dagster_internals.wait_for_run_retry_decisions_in_backfills()  # installing twice wraps once
        wrapped = asset_backfill.backfill_runs_are_complete
        assert wrapped.__wrapped__("b1", instance, log) is True  # Dagster alone: complete, retry lost
        assert wrapped("b1", instance, log) is False  # waits for the decision
        instance.add_run_tags(failed.run_id, {"dagster/will_retry": "false"})
        assert wrapped("b1", instance, log) is True
        instance.add_run_tags(failed.run_id, {"dagster/will_retry": "true"})  # a retry is due: Dagster waits
        assert wrapped.__wrapped__("b1", instance, log) is False and wrapped("b1", instance, log) is False


def in_a_worker_process(function: Callable, *args) -> None:
    """Run ``function(*args)`` in a process started as Dagster's code server starts a run worker
    (``multiprocessing``, spawn method): one whose SQLite connections stay open (sqlite_engines.py). An
    assertion that fails there fails here, its traceback on stderr."""
    process = multiprocessing.get_context("spawn").Process(target=function, args=args)
    process.start()
    process.join(300)
    if process.exitcode is None:
        process.kill()  # hung: fail, and leave nothing running
        process.join()
    assert process.exitcode == 0, f"{function.__name__} failed in the worker process (traceback above)"


def test_the_sqlite_storages_reuse_one_engine_per_database_file(tmp_path):
    """``wait_for_sqlite_locks`` also hands Dagster's SQLite storages one engine per file (SQLAlchemy's
    compiled-statement cache lives on the engine; Dagster creates one per connection) that, in a run
    worker, keeps a connection open between uses (sqlite_engines.py). The engines keep working after
    Dagster's ``engine.dispose()``, every event is stored, and the cache stays bounded."""
    in_a_worker_process(_one_engine_per_file, tmp_path)


def _one_engine_per_file(tmp_path) -> None:
    from backfill_platform_tests.conftest import make_dagster_home

    assert sqlite_engines.keeps_connections()

    instance = dg.DagsterInstance.from_config(str(make_dagster_home(tmp_path / "home")))
    assert type(instance).__name__ == "BackfillPlatformInstance"  # the class that installs the wrapper
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")

    @dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def daily(context):
        return dg.MaterializeResult(metadata={"dates": len(context.partition_keys)})

    def engines_of_one_run() -> tuple[set[int], set[int]]:
        result = dg.materialize([daily], instance=instance,
                                tags={RANGE_START: "2024-01-01", RANGE_END: "2024-01-30"})
        assert result.success
        index, run = set(), set()
        for _ in range(3):
            with instance.event_log_storage.index_connection() as conn:
                index.add(id(conn.engine))
            with instance.event_log_storage.run_connection(result.run_id) as conn:
                run.add(id(conn.engine))
        return index, run

    index_first, run_first = engines_of_one_run()
    index_second, run_second = engines_of_one_run()
    assert len(index_first) == 1 and index_first == index_second  # the index shard: one engine throughout
    assert len(run_first) == 1 and run_first != run_second  # a run's own shard: its own engine
    with instance.run_storage.connect() as first:
        kept = first.connection.dbapi_connection
    with instance.run_storage.connect() as first, instance.run_storage.connect() as second:
        assert first.engine is second.engine and first.connection is not second.connection  # a thread each
        assert first.connection.dbapi_connection is kept  # the connection kept from the use before
    assert len(instance.get_materialized_partitions(daily.key)) == 30
    assert len(sqlite_engines._engines) <= sqlite_engines.ENGINES_KEPT
    for number in range(sqlite_engines.ENGINES_KEPT + 3):  # more run shards than are kept
        with instance.event_log_storage.run_connection(f"run-{number}"):
            pass
    assert len(sqlite_engines._engines) == sqlite_engines.ENGINES_KEPT
    instance.dispose()


def test_a_connection_of_a_shared_sqlite_engine_can_end_in_another_thread(tmp_path):
    """The engines are shared by a process's threads, so a connection that one thread opened can be returned
    (or garbage-collected) by another: that must not log sqlite3's "SQLite objects created in a thread can
    only be used in that same thread" (sqlite_engines.py opens them with check_same_thread=False), and in a
    run worker the connection is kept for the next use, in any thread."""
    in_a_worker_process(_a_connection_ends_in_another_thread, tmp_path)


def _a_connection_ends_in_another_thread(tmp_path) -> None:
    import logging
    import threading

    from backfill_platform_tests.conftest import make_dagster_home

    instance = dg.DagsterInstance.from_config(str(make_dagster_home(tmp_path / "home")))
    with instance.run_storage.connect() as conn:
        engine = conn.engine
    opened = []
    thread = threading.Thread(target=lambda: opened.append(engine.raw_connection()))
    thread.start()
    thread.join()
    raw = opened[0].driver_connection
    errors = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append
    logging.getLogger("sqlalchemy").addHandler(handler)
    opened[0].close()  # back to the pool in this thread: rolled back and kept for the next use
    assert [record.getMessage() for record in errors] == []
    with instance.run_storage.connect() as conn:  # another thread's connection serves this one
        assert conn.connection.dbapi_connection is raw
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar() == 0
    instance.dispose()


def test_a_run_failed_at_its_maximum_runtime_stays_failed_when_its_worker_reports_the_cancel_late(tmp_path):
    """UPSTREAM WORKAROUND ``keep_failed_runs_failed``. Run monitoring ends a run at its maximum runtime
    with CANCELING, a termination request, then RUN_FAILURE; the interrupted worker, which read
    CANCELING before that failure landed, writes RUN_CANCELED after it (seen in CI, S5 of
    test_retry_acceptance.py). The run must stay FAILURE; a cancel alone still ends CANCELED."""
    from backfill_platform_tests.conftest import make_dagster_home

    instance = dg.DagsterInstance.from_config(str(make_dagster_home(tmp_path / "home")))
    assert type(instance).__name__ == "BackfillPlatformInstance"

    def started_run() -> dg.DagsterRun:
        run = instance.add_run(dg.DagsterRun(job_name="destination_data_job"))
        instance.report_dagster_event(dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name),
                                      run.run_id)
        return instance.get_run_by_id(run.run_id)

    timed_out = started_run()
    instance.report_run_canceling(timed_out, message="Canceling due to exceeding maximum runtime of 90 seconds.")
    instance.report_run_failed(timed_out, "Exceeded maximum runtime of 90 seconds.")  # the daemon's write
    instance.report_run_canceled(timed_out)  # the worker's, decided on the CANCELING it had read
    record = instance.get_run_record_by_id(timed_out.run_id)
    assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE
    logged = [e.dagster_event.event_type for e in instance.all_logs(timed_out.run_id) if e.dagster_event]
    assert logged[-2:] == [dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED]  # both kept
    assert record.end_time is not None

    canceled = started_run()  # the UI's Cancel: no failure anywhere
    instance.report_run_canceling(canceled)
    instance.report_run_canceled(canceled)
    assert instance.get_run_by_id(canceled.run_id).status == dg.DagsterRunStatus.CANCELED
    instance.dispose()


def test_a_kept_sqlite_connection_is_not_used_once_its_file_was_replaced(tmp_path):
    """A run worker's engines keep their connections open (sqlite_engines.py). When another process deletes a
    file and creates it again (Dagster's event log ``wipe`` deletes run shards), a kept connection would go on
    writing into the deleted file, lost to every other process. Each checkout compares the file under the
    path with the connection's, and connects again."""
    import sqlite3

    from sqlalchemy.pool import NullPool

    path = tmp_path / "storage.db"
    engine = sqlite_engines.engine_for(
        sqlalchemy.create_engine, f"sqlite:///{path}", (), {"poolclass": NullPool}, 5, keep_open=True
    )
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE events (id INTEGER)"))
        conn.execute(sqlalchemy.text("INSERT INTO events VALUES (1)"))
    for leftover in tmp_path.glob("storage.db*"):  # the file and its WAL, as a wipe deletes them
        leftover.unlink()
    fresh = sqlite3.connect(path)
    fresh.execute("CREATE TABLE events (id INTEGER)")
    fresh.commit()
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO events VALUES (2)"))
    assert fresh.execute("SELECT id FROM events").fetchall() == [(2,)]
    fresh.close()
    engine.dispose_for_good()


def test_a_write_through_a_kept_sqlite_connection_reaches_the_database_file_at_once(tmp_path):
    """Dagster's file watcher on a run's event log (``SqliteEventLogStorageWatchdog``: the UI's live run
    logs) reacts to changes of ``<run_id>.db`` itself. Dagster alone closes its connection after each write,
    and the last close of a WAL database copies the write into the file. A kept connection (sqlite_engines.py)
    must do the same: it checkpoints when it is returned after a write, so each event changes the file
    while the writing process lives."""
    in_a_worker_process(_each_event_reaches_the_file, tmp_path)


def _each_event_reaches_the_file(tmp_path) -> None:
    import os
    import time

    from backfill_platform_tests.conftest import make_dagster_home

    instance = dg.DagsterInstance.from_config(str(make_dagster_home(tmp_path / "home")))
    run = instance.create_run_for_job(dg.GraphDefinition("watched").to_job())
    instance.report_engine_event("first", run)
    shard = tmp_path / "home" / "history" / "runs" / f"{run.run_id}.db"
    for number in range(3):
        before = os.stat(shard)
        time.sleep(0.05)  # past the file system's timestamp granularity
        instance.report_engine_event(f"event {number}", run)
        after = os.stat(shard)
        assert (after.st_mtime_ns, after.st_size) != (before.st_mtime_ns, before.st_size), f"event {number}"
    assert [entry.message for entry in instance.all_logs(run.run_id)][-3:] == ["event 0", "event 1", "event 2"]
    instance.dispose()


def _other_process(home, code: str) -> str:
    """Run ``code`` with ``instance`` (the DagsterInstance of ``home``) in a new Python process; its stdout."""
    import sys

    script = f"import dagster as dg\ninstance = dg.DagsterInstance.from_config({str(home)!r})\n{code}\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_process_that_reads_the_instance_files_loses_no_run_written_after(tmp_path):
    """SQLite's locks are POSIX advisory locks: a process that opens and closes a database file by other means
    (a backup, ``shutil.copytree`` of DAGSTER_HOME, a scan for secrets) drops every SQLite lock it holds on
    that file. A connection it kept open would then go on writing into a WAL that another process, believing
    itself the last user, checkpoints and deletes: those writes are lost to every other process (or end in
    "disk I/O error"). The CLI, the daemon, the webserver and a notebook therefore connect per use, as
    Dagster does; only the run and step worker processes Dagster starts keep their connections
    (sqlite_engines.py), and they never read the files directly."""
    from backfill_platform_tests.conftest import make_dagster_home

    assert not sqlite_engines.keeps_connections()  # pytest's process, as the CLI's, the daemon's or a notebook's
    home = make_dagster_home(tmp_path / "home")
    instance = dg.DagsterInstance.from_config(str(home))
    job = dg.GraphDefinition("kept").to_job()
    first = instance.create_run_for_job(job)
    for path in sorted(home.rglob("*")):  # what a backup or a scan for secrets does in this process
        if path.is_file():
            path.read_bytes()
    other = _other_process(home, "print(instance.create_run_for_job(dg.GraphDefinition('kept').to_job()).run_id)")
    last = instance.create_run_for_job(job)
    seen = _other_process(home, "print(sorted(run.run_id for run in instance.get_runs()))")
    assert seen.strip() == str(sorted([first.run_id, other.strip(), last.run_id]))
    assert len(instance.get_runs()) == 3
    instance.dispose()
