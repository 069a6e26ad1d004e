"""Postgres instance storage for team deployments (docs/team.md): ``dagster_home/postgres/dagster.yaml``.

The fast test keeps the variant equal to the embedded SQLite default (``dagster_home/dagster.yaml``)
apart from ``storage`` and checks what Dagster makes of it with the DAGSTER_PG_* variables set.

The slow tests share one deployment on a real PostgreSQL server (Debian's, started by
``postgres_server.py`` on 127.0.0.1 in a throwaway data directory): a DAGSTER_HOME with the variant,
a ``dagster-daemon`` (run queue, backfills, sensors: ``BACKFILL_AUTOMATION=running``), and, at once:

- ``backfill-platform backfill --from 2024-07-01 --to 2024-07-31 --chunk-size 5 --max-concurrent 2``
  (22 business days: 5 chunk runs, submitted by the CLI to the queue of the running daemon);
- an asset backfill of ``FAULT_DAY`` without run retries, whose first run worker the test SIGKILLs
  once it started (a worker killed like an OOM kill), so the run fails and ``rerun_failed_partitions``
  reruns the date.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest
import yaml

from backfill_platform import backfills, tags
from backfill_platform.daemon_lock import daemon_lock_holder
from backfill_platform.definitions import build_defs
from backfill_platform.partitions import BusinessDays
from backfill_platform.processes import DaemonProcess, stop_process_group
from backfill_platform.resources import local_resources
from backfill_platform.sensors.failures import RERUN_SENSOR_NAME
from backfill_platform.settings import PROJECT_ROOT, CalendarSettings, Settings

from .conftest import ARTIFACTS, subprocess_env
from .helpers import rows_per_date
from .postgres_server import POSTGRES_DAGSTER_YAML, PostgresServer, postgres_dagster_home, seed_prerequisites
from .test_entry_points import wait_until
from .test_sensors.test_retry_acceptance import _worker_pid

BIN = os.path.dirname(sys.executable)
BUSINESS_DAYS = BusinessDays.from_settings(CalendarSettings())
SOURCE_FIRST, SOURCE_LAST = "2024-06-24", "2024-07-31"
JULY = BUSINESS_DAYS.between("2024-07-01", "2024-07-31")  # 22 business days (07-04 is a holiday)
CHUNK_SIZE, MAX_CONCURRENT = 5, 2
FAULT_DAY = "2024-06-28"
PG_VARIABLES = ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOSTNAME", "DAGSTER_PG_DB_NAME",
                "DAGSTER_PG_PORT")


def test_postgres_variant_is_the_default_instance_config_with_postgres_storage(monkeypatch, tmp_path):
    from dagster._config import process_config
    from dagster._core.instance.ref import InstanceRef
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    default = yaml.safe_load((PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text())
    variant = yaml.safe_load(POSTGRES_DAGSTER_YAML.read_text())
    storage = variant.pop("storage")
    assert "storage" not in default  # SQLite under DAGSTER_HOME stays the embedded default
    assert variant == default  # coordinator, pools, run retries, monitoring...: the same instance
    postgres_db = storage["postgres"]["postgres_db"]
    assert postgres_db.pop("scheme") == "postgresql+psycopg2"  # see the comment in the variant
    assert postgres_db == {
        field: {"env": variable}
        for field, variable in zip(("username", "password", "hostname", "db_name", "port"), PG_VARIABLES, strict=True)
    }

    values = dict(zip(PG_VARIABLES, ("team", "s3cret@:%", "db.example.test", "dagster_prod", "6543"), strict=True))
    for variable, value in values.items():
        monkeypatch.setenv(variable, value)
    ref = InstanceRef.from_dir(str(postgres_dagster_home(tmp_path / "home")))  # validated; connects to nothing
    assert [data.class_name for data in (ref.storage_data, ref.run_storage_data, ref.event_storage_data,
                                         ref.schedule_storage_data)] == [
        "DagsterPostgresStorage", "PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"]
    assert ref.custom_instance_class_data.class_name == "BackfillPlatformInstance"
    assert ref.run_coordinator_data.class_name == "PartitionSlotRunCoordinator"
    resolved = process_config(DagsterPostgresStorage.config_type(), ref.storage_data.config_dict)
    assert resolved.success, resolved.errors
    assert pg_url_from_config(resolved.value) == (
        "postgresql+psycopg2://team:s3cret%40%3A%25@db.example.test:6543/dagster_prod")


# --------------------------------------------------------------------------------------------------
# one deployment on a real PostgreSQL server


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("postgres_storage")
    started = time.monotonic()
    with PostgresServer(root) as server, pytest.MonkeyPatch.context() as patch:
        for variable, value in server.env().items():
            patch.setenv(variable, value)  # this process loads the instance too
        settings = Settings(data_dir=root / "data")
        home = postgres_dagster_home(root / "dagster_home")
        env = subprocess_env(
            settings, home, **server.env(),
            BACKFILL_AUTOMATION="running",  # the sensors run in the daemon
            BACKFILL_RERUN_INTERVAL_SECONDS="3",
            BACKFILL_SCHEDULE_CRON="0 6 1 1 *",  # the schedule must not fire during the test
        )
        daemon = DaemonProcess(home, env=env, log_path=ARTIFACTS / "postgres_storage_daemon.log")
        instance = dg.DagsterInstance.from_config(str(home))
        cli = None
        try:
            daemon.start()  # creates the schema in Postgres first, then starts while this process seeds
            resources = local_resources(settings)
            # source and calendar, recorded in the Postgres instance (a chunked CLI launch requires them)
            seed_prerequisites(instance, resources, SOURCE_FIRST, SOURCE_LAST)
            # without run retries (dagster/max_retries=0), so the rerun sensor is the one to complete the date
            fault_backfill = backfills.launch_destination_backfill(
                instance, build_defs(settings), [FAULT_DAY], title="postgres: rerun sensor",
                tags={"dagster/max_retries": "0"})
            # the CLI must find this daemon serving the instance, and use it
            wait_until(lambda: daemon_lock_holder(home), 180, "the daemon to hold the instance", poll_s=0.5)
            with open(root / "cli.log", "w+") as cli_log:
                cli = subprocess.Popen(
                    [f"{BIN}/backfill-platform", "backfill", "--from", JULY[0], "--to", JULY[-1],
                     "--chunk-size", str(CHUNK_SIZE), "--max-concurrent", str(MAX_CONCURRENT)],
                    cwd=root, env=env, stdout=cli_log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                )
                killed = _kill_first_run_worker(instance, FAULT_DAY)  # like the OOM killer, mid-run
                returncode = cli.wait(timeout=900)
                cli_log.seek(0)
                output = cli_log.read()
            wait_until(lambda: _fault_day_settled(instance), 600, f"{FAULT_DAY} to land or give up", poll_s=1)
            yield {"instance": instance, "server": server, "home": home, "resources": resources,
                   "cli": subprocess.CompletedProcess(cli.args, returncode, output, ""), "killed": killed,
                   "fault_backfill": fault_backfill, "wall_s": time.monotonic() - started}
        finally:
            stop_process_group(cli)
            daemon.stop()
            instance.dispose()


def _kill_first_run_worker(instance, day: str) -> str:
    """SIGKILL the worker process of the first run of ``day`` once it started; return the run's id."""
    run = wait_until(lambda: next(iter(_runs_of(instance, day)), None), 300, f"a run of {day}", poll_s=0.5)
    wait_until(lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED, 300,
               f"run {run.run_id} to start", poll_s=0.5)
    os.kill(_worker_pid(instance, run.run_id), signal.SIGKILL)
    return run.run_id


def _fault_day_settled(instance) -> bool:
    runs = _runs_of(instance, FAULT_DAY)
    return bool(runs) and all(run.is_finished for run in runs) and (
        runs[-1].status == dg.DagsterRunStatus.SUCCESS or tags.GAVE_UP in runs[-1].tags)


def _runs_of(instance, day: str) -> list[dg.DagsterRun]:
    """The runs whose partitions are exactly ``day``, oldest first."""
    records = instance.get_run_records(order_by="create_timestamp", ascending=True)
    return [r.dagster_run for r in records if BUSINESS_DAYS.run_keys(r.dagster_run.tags) == [day]]


def _launch_id(cli: subprocess.CompletedProcess) -> str:
    line = next(line for line in cli.stdout.splitlines() if line.startswith("Launch ") and "runs tagged" in line)
    return line.split()[1].rstrip(":")


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that were open at the same moment (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_instance_storage_is_in_postgres(deployment):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance, server, home = deployment["instance"], deployment["server"], deployment["home"]
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    runs = instance.get_runs()
    assert server.query("SELECT count(*) FROM runs") == [(len(runs),)]
    assert server.query("SELECT count(*) FROM event_logs")[0][0] > 0
    # schedule storage: the sensors' state (the rerun sensor's cursor) and ticks are rows in Postgres
    sensor = next(state for state in instance.all_instigator_state() if state.name == RERUN_SENSOR_NAME)
    assert sensor.instigator_data.cursor, sensor
    assert instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id, limit=5)
    assert server.query("SELECT count(*) FROM instigators")[0][0] >= 1
    assert server.query("SELECT count(*) FROM job_ticks")[0][0] >= 1
    assert not list(home.rglob("*.db")), sorted(home.rglob("*.db"))  # no SQLite file was created


@pytest.mark.slow
def test_cli_chunked_backfill_lands_every_date_on_postgres(deployment, spark):
    cli, instance = deployment["cli"], deployment["instance"]
    assert cli.returncode == 0, cli.stdout[-4000:] + cli.stderr[-4000:]
    assert "No dagster-daemon is running" not in cli.stdout  # it used the deployment's daemon
    assert "5/5 run(s) succeeded" in cli.stdout, cli.stdout[-2000:]
    runs = instance.get_runs(filters=dg.RunsFilter(tags={tags.LAUNCH_ID: _launch_id(cli)}))
    chunks = sorted((run.tags[tags.RANGE_START], run.tags[tags.RANGE_END]) for run in runs)
    assert chunks == [(JULY[i], JULY[min(i + CHUNK_SIZE, len(JULY)) - 1]) for i in range(0, len(JULY), CHUNK_SIZE)]
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert set(JULY) <= set(instance.get_materialized_partitions(tags.DESTINATION))
    tables = deployment["resources"]["tables"]
    source = rows_per_date(spark, tables.source)
    landed = rows_per_date(spark, tables.destination)
    assert {day: landed.get(day) for day in JULY} == {day: source[day] for day in JULY} == {day: 10 for day in JULY}


@pytest.mark.slow
def test_two_chunk_runs_ran_at_the_same_time_on_postgres(deployment):
    instance, cli = deployment["instance"], deployment["cli"]
    records = instance.get_run_records(dg.RunsFilter(tags={tags.LAUNCH_ID: _launch_id(cli)}))
    chunk_runs = [(record.start_time, record.end_time) for record in records]
    assert len(chunk_runs) == 5 and all(start and end for start, end in chunk_runs), chunk_runs
    # two chunk runs were STARTED (run worker running) at the same time: the queue on Postgres started
    # them in parallel; never more than the instance's max_concurrent_runs (2) of all the daemon's runs
    assert _most_at_once(chunk_runs) == MAX_CONCURRENT, chunk_runs
    queued = [record for record in instance.get_run_records() if record.start_time and record.end_time
              and {tags.BACKFILL, tags.LAUNCH_ID, tags.RERUN_OF_RUN_ID} & set(record.dagster_run.tags)]
    assert len(queued) == 5 + 2  # the chunks, and the failed run of FAULT_DAY and its rerun
    assert _most_at_once([(record.start_time, record.end_time) for record in queued]) <= 2


@pytest.mark.slow
def test_rerun_sensor_reruns_the_failed_date_to_success_on_postgres(deployment, spark):
    instance = deployment["instance"]
    chain = _runs_of(instance, FAULT_DAY)
    assert [run.status for run in chain] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS], chain
    failed, rerun = chain
    assert failed.tags[tags.BACKFILL] == deployment["fault_backfill"]
    assert failed.tags.get(tags.WILL_RETRY) != "true"  # no run retry (dagster/max_retries=0): the sensor's
    assert rerun.tags[tags.RERUN_OF_RUN_ID] == failed.run_id
    assert rerun.tags[tags.RERUN_ATTEMPT] == "1"
    assert rerun.tags[tags.REQUESTED_BY] == RERUN_SENSOR_NAME
    assert failed.run_id == deployment["killed"]
    # the code server that launched the run worker saw it die and failed the run
    failure = " ".join(event.message or "" for event in instance.all_logs(failed.run_id) if event.dagster_event
                       and event.dagster_event.event_type in (dg.DagsterEventType.RUN_FAILURE,
                                                              dg.DagsterEventType.ENGINE_EVENT))
    assert "Run execution process" in failure and "SIGKILL" in failure, failure[-500:]
    assert FAULT_DAY in instance.get_materialized_partitions(tags.DESTINATION)
    assert rows_per_date(spark, deployment["resources"]["tables"].destination)[FAULT_DAY] == 10
