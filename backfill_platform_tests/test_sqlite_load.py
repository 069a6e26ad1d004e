"""SQLite, the embedded default instance storage, under the load a team puts on one DAGSTER_HOME.

How Dagster 1.13.27 opens its SQLite storages (``dagster/_core/storage/``):

- run storage, ``history/runs.db`` (runs, run tags, backfills, daemon heartbeats, key-value cursors)
  and schedule storage, ``schedules/schedules.db`` (sensor/schedule state and ticks): every
  ``connect()`` builds ``create_engine(conn_string, poolclass=NullPool)``, a fresh ``sqlite3``
  connection with sqlite3's default busy timeout of **5 s**;
- event log storage, ``history/runs/<run_id>.db`` (one per run) and ``history/runs/index.db``:
  ``connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}``, **30 s**;
- all files in WAL journal mode (set when Dagster creates them): readers never block a writer, a
  writer waits for another writer's transaction up to the busy timeout, then raises
  ``sqlite3.OperationalError: database is locked``.

A run worker stores each event in the event log first and then, for run events (RUN_START,
RUN_SUCCESS, RUN_FAILURE), updates the run's row in runs.db (``handle_new_event`` ->
``run_storage.handle_run_event``); a failed write of a system event is re-raised. So a runs.db writer
held up for more than 5 s fails the write, and the run (or leaves the event log and the run's status
disagreeing), although the work itself succeeded.

:func:`test_sqlite_storages_under_team_load` (slow): a real ``dagster-daemon``, a real
``dagster-webserver`` on 127.0.0.1 and two ``backfill-platform backfill --chunk-size --max-concurrent 2``
CLIs on one SQLite DAGSTER_HOME, plus what a team adds: the UI launching a backfill, a dashboard
polling the webserver's GraphQL, ``backfill-platform status`` in a loop, a reader holding long read
transactions, and a maintenance writer holding runs.db's write lock for 8 s at a time (a cleanup
script, a backup, a stalled disk). Every run must succeed, every date be materialized, and no
``database is locked`` / ``OperationalError`` appear in any log. With
``BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS=5`` (exactly Dagster's own timeouts) it fails: runs whose step
succeeded end FAILURE (their RUN_SUCCESS ``UPDATE runs`` was locked out), the UI's launch answers
``PythonError: database is locked``, the daemon loses heartbeats and cursors. Without the maintenance
writer (one 11-minute run on this machine, load average ~17) nothing hit the 5 s: WAL readers never
block writers, and Dagster's own write transactions are short.

The fast tests pin the instance's busy timeout (``instance.py``'s UPSTREAM WORKAROUND) on one
instance without Spark: a run-storage write waits out a write lock held for 8 s instead of failing
after 5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform.processes import initialize_instance_storage
from backfill_platform.settings import PROJECT_ROOT
from backfill_platform.tags import DESTINATION, LAUNCH_ID
from backfill_platform_tests.conftest import free_port, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import business_calendar, rows_per_date, seed_source
from backfill_platform_tests.test_entry_points import BIN, LAUNCH, graphql, running, wait_until

LOCK_ERRORS = ("database is locked", "OperationalError")

# The load: a chunked CLI backfill of 3 one-day runs, a second CLI backfill of 2 one-day runs started
# while the first runs, and a UI backfill of 2 dates (one run): 6 runs, 2 at a time.
CLI_A = ("2024-07-01", "2024-07-03")
CLI_B = ("2024-06-27", "2024-06-28")
UI_KEYS = ["2024-07-05", "2024-07-08"]  # 2024-07-04 is a holiday
ALL_DATES = ["2024-06-27", "2024-06-28", "2024-07-01", "2024-07-02", "2024-07-03", *UI_KEYS]
MAINTENANCE_HOLD_S = 8.0  # > sqlite3's default 5 s busy timeout, from the first run's start to the end
MAINTENANCE_PAUSE_S = 12.0

DASHBOARD_QUERIES = [
    """{ runsOrError(limit: 50) { ... on Runs { results { runId status tags { key value }
         stats { ... on RunStatsSnapshot { stepsSucceeded materializations } } } } } }""",
    """{ assetOrError(assetKey: {path: ["destination_data"]}) { ... on Asset {
         assetMaterializations(limit: 100) { partition runId timestamp } } } }""",
    """{ assetNodeOrError(assetKey: {path: ["destination_data"]}) { ... on AssetNode {
         partitionStats { numMaterialized numFailed numMaterializing numPartitions } } } }""",
    """{ partitionBackfillsOrError(limit: 10) { ... on PartitionBackfills { results { id status } } } }""",
    """{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }""",
]
RUN_LOGS = """query Logs($runId: ID!) { logsForRun(runId: $runId) { __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message level } } } } }"""


class Background:
    """Load threads that run until stopped and keep every error they meet."""

    def __init__(self):
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, body) -> None:
        def loop():
            while not self.stop.is_set():
                try:
                    body()
                    self.counts[name] = self.counts.get(name, 0) + 1
                except Exception as error:  # noqa: BLE001 - every error is a finding, reported at the end
                    self.errors.append(f"{name}: {type(error).__name__}: {str(error)[:1500]}")
                    self.stop.wait(1)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


@contextlib.contextmanager
def write_lock_held(db: Path, seconds: float):
    """Hold ``db``'s write lock (``BEGIN IMMEDIATE``) from another connection for ``seconds``, from a
    background thread; yields once the lock is held."""
    held = threading.Event()

    def hold():
        connection = sqlite3.connect(db, timeout=120, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(seconds)
            connection.execute("COMMIT")
        finally:
            connection.close()
            held.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    held.wait(120)
    try:
        yield
    finally:
        thread.join(seconds + 120)


def lock_errors_in(text: str) -> list[str]:
    return [line.strip()[:400] for line in text.splitlines() if any(error in line for error in LOCK_ERRORS)]


@pytest.mark.slow
def test_sqlite_storages_under_team_load(spark, settings, resources, tmp_path):
    home = make_dagster_home(tmp_path / "dagster_home")
    env = subprocess_env(settings, home)
    initialize_instance_storage(home)
    instance = dg.DagsterInstance.from_config(str(home))
    # The chunked CLI needs the upstream assets materialized in this instance (check_prerequisites).
    seed_source(resources, instance=instance, first_day="2024-06-24", last_day="2024-07-12")
    assert dg.materialize([business_calendar], resources=resources, instance=instance).success
    port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("webserver", "daemon", "cli_a", "cli_b")}
    load = Background()
    holds: list[int] = []  # when (s after the start) the maintenance writer took runs.db's write lock
    started = time.monotonic()
    webserver = [f"{BIN}/dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(webserver, env, logs["webserver"]), \
            running([f"{BIN}/dagster-daemon", "run", "-w", "workspace.yaml"], env, logs["daemon"]):
        wait_until(lambda: daemon_heartbeats(instance), 120, "the daemon's heartbeats", poll_s=0.5)
        cli = [f"{BIN}/backfill-platform", "backfill", "--max-concurrent", "2", "--chunk-size", "1"]
        with running([*cli, "--from", CLI_A[0], "--to", CLI_A[1]], env, logs["cli_a"]) as cli_a:
            runs_db, index_db = home / "history" / "runs.db", home / "history" / "runs" / "index.db"

            def long_reader():  # e.g. an engineer's sqlite3 shell or a report reading the history
                for db in (runs_db, index_db):
                    with contextlib.closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as reader:
                        reader.execute("BEGIN")
                        reader.execute("SELECT count(*) FROM runs" if db == runs_db else
                                       "SELECT count(*) FROM event_logs").fetchone()
                        load.stop.wait(3)
                        reader.execute("COMMIT")

            def status_loop():
                done = subprocess.run([f"{BIN}/backfill-platform", "status", "--format", "json"], cwd=PROJECT_ROOT,
                                      env=env, capture_output=True, text=True, timeout=300)
                found = lock_errors_in(done.stdout + done.stderr)
                assert done.returncode in (0, 1, 3) and not found, (done.returncode, found or done.stderr[-1500:])
                load.stop.wait(8)

            def dashboard():
                for query in DASHBOARD_QUERIES:
                    graphql(port, query)
                for run in instance.get_runs(limit=2):
                    events = graphql(port, RUN_LOGS, {"runId": run.run_id})["logsForRun"]
                    assert events["__typename"] == "EventConnection", events
                load.stop.wait(1)

            load.start("long reader", long_reader)
            load.start("backfill-platform status", status_loop)
            wait_until(lambda: webserver_answers(port), 120, "the webserver to answer", poll_s=0.5)
            load.start("dashboard (GraphQL)", dashboard)

            def a_run_started():
                return any(r.status == dg.DagsterRunStatus.STARTED for r in instance.get_runs(limit=10))

            wait_until(a_run_started, 120, "the first run to start", poll_s=0.5)

            def maintenance():  # holds runs.db's write lock longer than sqlite3's default busy timeout
                with write_lock_held(runs_db, MAINTENANCE_HOLD_S):
                    holds.append(round(time.monotonic() - started))
                load.stop.wait(MAINTENANCE_PAUSE_S)

            load.start("maintenance writer", maintenance)
            with running([*cli, "--from", CLI_B[0], "--to", CLI_B[1]], env, logs["cli_b"]) as cli_b:
                launched = graphql(port, LAUNCH, {"params": {
                    "assetSelection": [{"path": ["destination_data"]}], "partitionNames": UI_KEYS,
                    "title": "sqlite load: UI backfill",
                }})["launchPartitionBackfill"]  # checked at the end, with everything else
                backfill_id = launched.get("backfillId")

                def everything_done():
                    backfill = instance.get_backfill(backfill_id) if backfill_id else None
                    return cli_a.poll() is not None and cli_b.poll() is not None and (
                        backfill is None or backfill.status.value not in ("REQUESTED", "CANCELING"))

                wait_until(everything_done, 600, "the two CLIs and the UI backfill to end", poll_s=1)
                codes = (cli_a.returncode, cli_b.returncode)
            load.join()
        elapsed = time.monotonic() - started

    outputs = {name: path.read_text(errors="replace") for name, path in logs.items()}
    summary = (f"{elapsed:.0f} s; exit codes {codes}; runs.db write lock held {MAINTENANCE_HOLD_S:.0f} s at {holds} s; "
               f"load iterations {load.counts}")
    print(summary)
    report = summary + "\n" + "\n".join(f"--- {n} (tail)\n{o[-2500:]}" for n, o in outputs.items())
    runs = instance.get_runs()
    statuses = {run.run_id: run.status for run in runs}
    run_logs = {run.run_id: "\n".join(dg.serialize_value(e) for e in instance.all_logs(run.run_id)) for run in runs}
    compute_logs = {str(path): path.read_text(errors="replace") for path in (home / "storage").rglob("*.err")}
    errors_in_logs = {name: lock_errors_in(text) for name, text in {**outputs, **run_logs, **compute_logs}.items()}
    errors_in_logs = {name: found[:3] for name, found in errors_in_logs.items() if found}
    if launched["__typename"] != "LaunchBackfillSuccess":
        errors_in_logs["UI launchPartitionBackfill"] = [str(launched)[:600]]
    assert errors_in_logs == {} and load.errors == [], (errors_in_logs, load.errors, summary)
    assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, (statuses, report)
    assert codes == (0, 0), report
    assert len(holds) >= 3, report  # the maintenance writer held runs.db while runs were writing
    assert instance.get_backfill(backfill_id).status.value == "COMPLETED_SUCCESS", report
    # 3 + 2 one-day CLI runs (tagged with their launch), 1 UI backfill run, 2 seeding runs
    assert len([r for r in runs if LAUNCH_ID in r.tags]) == 5 and len(runs) == 8, report
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DESTINATION, asset_partitions=ALL_DATES), limit=100
    ).records
    assert sorted({record.partition_key for record in records}) == sorted(ALL_DATES), report
    assert instance.get_materialized_partitions(DESTINATION) >= set(ALL_DATES)
    assert rows_per_date(spark, resources["tables"].destination) == {day: 10 for day in ALL_DATES}
    instance.dispose()


def daemon_heartbeats(instance: dg.DagsterInstance) -> bool:
    """Every daemon the (fresh) instance needs has sent a heartbeat."""
    return set(instance.get_required_daemon_types()) <= set(instance.get_daemon_heartbeats())


def webserver_answers(port: int) -> bool:
    try:
        return bool(graphql(port, "{ version }")["version"])
    except OSError:  # not listening yet
        return False


# ------------------------------------------------------------------------------------- fast tests


def _run_start(job_name: str) -> dg.DagsterEvent:
    return dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name=job_name)


def test_run_status_write_waits_out_a_write_lock_held_longer_than_5_s(tmp_path):
    """What a run worker does at RUN_START (event log, then the run's row in runs.db), while another
    process holds runs.db's write lock for 8 s. Dagster alone: ``database is locked`` after 5.0 s, the
    RUN_START event stored and the run left NOT_STARTED. With the instance's busy timeout it waits."""
    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.add_run(dg.DagsterRun(job_name="sqlite_lock"))
        with write_lock_held(home / "history" / "runs.db", seconds=8):
            began = time.monotonic()
            instance.report_dagster_event(_run_start("sqlite_lock"), run_id=run.run_id)
            waited = time.monotonic() - began
        assert waited > 5.5  # it did wait past sqlite3's default 5 s
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        assert len(instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)) == 1


PROBE = """
import json, sqlite3, sys
import dagster as dg
home = sys.argv[1]
if len(sys.argv) > 2:  # an old instance file in rollback-journal mode, before this process opens it
    sqlite3.connect(home + "/history/runs.db").execute("PRAGMA journal_mode = DELETE").fetchone()
with dg.DagsterInstance.from_config(home) as instance:
    run = instance.add_run(dg.DagsterRun(job_name="probe"))
    storages = instance.run_storage, instance.schedule_storage, instance.event_log_storage
    connections = {"runs": storages[0].connect(), "schedules": storages[1].connect(),
                   "index": storages[2].index_connection(), "run shard": storages[2].run_connection(run.run_id)}
    found = {}
    for name, connection in connections.items():
        with connection as conn:
            found[name] = [conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("busy_timeout", "journal_mode")]
print(json.dumps(found))
"""


def _probe(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, str(home), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DAGSTER_HOME": str(home), **env})


def test_every_sqlite_storage_waits_60_s_by_default_and_the_variable_sets_it(tmp_path):
    """In a process that loads the instance: run, schedule and event log (index and per-run) connections
    all wait 60 s (Dagster: 5 s, 5 s, 30 s, 30 s), in WAL mode; BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS sets it
    (never below Dagster's own 30 s for the event log), and an old rollback-journal runs.db is put in WAL."""
    home = make_dagster_home(tmp_path / "home")
    initialize_instance_storage(home)
    default = _probe(home)
    assert default.returncode == 0, default.stderr[-3000:]
    assert json.loads(default.stdout.splitlines()[-1]) == {
        name: [60000, "wal"] for name in ("runs", "schedules", "index", "run shard")
    }
    configured = _probe(home, "rollback-journal", BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS="12")
    assert configured.returncode == 0, configured.stderr[-3000:]
    assert json.loads(configured.stdout.splitlines()[-1]) == {
        "runs": [12000, "wal"], "schedules": [12000, "wal"], "index": [30000, "wal"], "run shard": [30000, "wal"],
    }
    bad = _probe(home, BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS="soon")
    assert bad.returncode != 0
    assert "BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS='soon' must be a number of seconds greater than 0" in bad.stderr


def test_sqlite_busy_timeout_setting():
    from backfill_platform.instance import sqlite_busy_timeout_s
    from backfill_platform.settings import SettingsError

    assert sqlite_busy_timeout_s({}) == 60.0
    assert sqlite_busy_timeout_s({"BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS": " 90 "}) == 90.0
    for bad in ("0", "-1", "nan", "inf", "a minute"):
        with pytest.raises(SettingsError, match="BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS"):
            sqlite_busy_timeout_s({"BACKFILL_SQLITE_BUSY_TIMEOUT_SECONDS": bad})


UPSTREAM = """
import json, sys
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
base = sys.argv[1]
storages = {"runs": SqliteRunStorage.from_local(base + "/runs"),
            "schedules": SqliteScheduleStorage.from_local(base + "/schedules"),
            "index": SqliteEventLogStorage(base + "/events")}
connect = {"runs": storages["runs"].connect, "schedules": storages["schedules"].connect,
           "index": storages["index"].index_connection}
found = {}
for name, open_connection in connect.items():
    with open_connection() as conn:
        found[name] = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
print(json.dumps(found))
"""


def test_upstream_dagster_alone_gives_runs_and_schedules_5_s(tmp_path):
    """The upstream gap the instance's workaround closes, in a process that never loads this project's
    instance class: Dagster's SQLite run and schedule storage wait 5 s, its event log 30 s. When Dagster
    gives all of them its 30 s, this fails: ``dagster_internals.wait_for_sqlite_locks`` can then go."""
    done = subprocess.run([sys.executable, "-c", UPSTREAM, str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"runs": 5000, "schedules": 5000, "index": 30000}
