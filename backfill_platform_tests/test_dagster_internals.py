"""Each Dagster internal that ``backfill_platform/dagster_internals.py`` wraps, exercised on a real
(test) instance: after a Dagster upgrade, these fail first, with the wrapper's name."""

from __future__ import annotations

import subprocess

import dagster as dg

from backfill_platform import dagster_internals
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


def test_the_sqlite_storages_reuse_one_engine_per_database_file(tmp_path):
    """``wait_for_sqlite_locks`` also hands Dagster's SQLite storages one engine per file (SQLAlchemy's
    compiled-statement cache lives on the engine; Dagster creates one per connection). The engines keep
    working after Dagster's ``engine.dispose()``, every event is stored, and the cache stays bounded."""
    from backfill_platform_tests.conftest import make_dagster_home

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
    with instance.run_storage.connect() as first, instance.run_storage.connect() as second:
        assert first.engine is second.engine and first.connection is not second.connection  # still NullPool
    assert len(instance.get_materialized_partitions(daily.key)) == 30
    assert len(dagster_internals._sqlite_engines) <= dagster_internals.SQLITE_ENGINES_KEPT
    for number in range(dagster_internals.SQLITE_ENGINES_KEPT + 3):  # more run shards than are kept
        with instance.event_log_storage.run_connection(f"run-{number}"):
            pass
    assert len(dagster_internals._sqlite_engines) == dagster_internals.SQLITE_ENGINES_KEPT
    instance.dispose()


def test_a_connection_of_a_shared_sqlite_engine_can_end_in_another_thread(tmp_path, caplog):
    """The engines are shared by a process's threads, so a connection that one thread opened can be returned
    (or garbage-collected) by another: that must close it, not log sqlite3's "SQLite objects created in a
    thread can only be used in that same thread" (SQLAlchemy opens file databases with check_same_thread=False)."""
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
    with caplog.at_level(logging.ERROR, logger="sqlalchemy"):
        opened[0].close()  # back to the pool in this thread: NullPool rolls it back and closes it
    assert [record.getMessage() for record in caplog.records] == []
    assert opened[0].dbapi_connection is None  # closed
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
