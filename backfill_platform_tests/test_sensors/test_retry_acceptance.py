"""Acceptance of issue 4 with injected faults: a real instance with the project's dagster.yaml
(date-slot run coordinator, run retries, run monitoring), a real ``dagster-daemon`` (queue, backfills,
run retries, monitoring, sensors), real local Spark + Delta runs, a real SMTP server (aiosmtpd) and a
real HTTP endpoint on 127.0.0.1 receiving the alerts.

All scenarios share one deployment and are launched together at the start (runs are the costly
part: each starts a JVM), then each test checks its own scenario:

- ``S1`` 20 business days of February 2024 (chunks of 10), 6 of them (30%) failing transiently 1-2
  times, plus ``S2`` an overlapping backfill of 10 of those days launched at the same moment;
- ``S3`` a 3-day chunk where 2024-03-06 has a logic error and 2024-03-08 fails transiently forever;
- ``S4`` 2024-03-12: the step worker is SIGKILLed during the Delta write, run retries off for that
  backfill (``dagster/max_retries=0``): the rerun sensor completes the date;
- ``S5`` 2024-03-14: the step hangs; run monitoring ends the run at its maximum runtime (a short
  ``dagster/max_runtime`` here), Dagster's run retry re-executes it from failure and it succeeds;
- ``S6`` 2024-03-19: the run worker is SIGKILLed with run retries on: Dagster's run retry re-executes
  it from failure and it succeeds;
- ``S7`` (after the others settled) Cancel of a run whose Spark write is running, and of a backfill
  with running and queued runs: the runs end CANCELED and nothing is written.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from backfill_platform import backfills, dagster_internals, tags
from backfill_platform.assets.source import source_data
from backfill_platform.definitions import build_defs
from backfill_platform.partitions import BusinessDays
from backfill_platform.processes import DaemonProcess
from backfill_platform.resources import local_resources
from backfill_platform.settings import CalendarSettings, Settings

from .. import fault_location
from ..conftest import ARTIFACTS, free_port, make_dagster_home, subprocess_env
from ..faults import FaultInjector
from ..helpers import SmtpSink, smtp_server

# The scenarios run ~11 Spark runs through the queue; on a loaded 2-core machine that can take long.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

BUSINESS_DAYS = BusinessDays.from_settings(CalendarSettings())
FEBRUARY = BUSINESS_DAYS.between("2024-02-01", "2024-02-29")  # 20 business days (19th: Presidents Day)
OVERLAP = BUSINESS_DAYS.between("2024-02-12", "2024-02-26")  # 10 of them, across both chunks
TRANSIENT = {"2024-02-02": 1, "2024-02-07": 2, "2024-02-13": 1, "2024-02-15": 2, "2024-02-22": 1, "2024-02-28": 2}
CHUNK = BUSINESS_DAYS.between("2024-03-06", "2024-03-08")
LOGIC_DAY, HOPELESS_DAY, KILL_DAY, HANG_DAY = "2024-03-06", "2024-03-08", "2024-03-12", "2024-03-14"
RETRY_KILL_DAY = "2024-03-19"
CANCEL_DAY, CANCEL_BACKFILL_DAYS = "2024-03-21", ["2024-03-25", "2024-03-27", "2024-03-29"]
SLOW_S = 120  # seconds per row of the slow days' write: far longer than a Cancel may take
# The hung run's dagster/max_runtime: run monitoring ends it after this. Its run retry inherits the tag
# and must finish within it: with two test processes on 2 cores a retry took 84 s from STEP_START to its
# write (CI and a fresh clone on 3 Dec ended it at 90 s, then gave the date up).
HANG_MAX_RUNTIME_S = 240
ROWS_PER_DATE = 5
STEP_RETRIES, RERUN_MAX_ATTEMPTS, MAX_RUNTIME = 3, 2, 300
FAULTS = ",".join(
    [f"{day}=transient:{n}" for day, n in TRANSIENT.items()]
    + [f"{LOGIC_DAY}=logic", f"{HOPELESS_DAY}=transient:99", f"{KILL_DAY}=kill:1", f"{HANG_DAY}=hang:1"]
    + [f"{RETRY_KILL_DAY}=kill:1"]
    + [f"{day}=slow:{SLOW_S}" for day in [CANCEL_DAY, *CANCEL_BACKFILL_DAYS]]
)


class WebhookSink(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        WebhookSink.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def _test_home(path: Path) -> Path:
    """The project's dagster.yaml with short intervals for the test (same keys, smaller numbers)."""
    home = make_dagster_home(path)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_monitoring"].update({"poll_interval_seconds": 1, "start_timeout_seconds": 180})
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    config["sensors"] = {"use_threads": True, "num_workers": 2}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("retry_acceptance")
    settings = Settings(data_dir=root / "data")
    home = _test_home(root / "dagster_home")
    smtp_sink = SmtpSink()
    smtp = smtp_server(smtp_sink, free_port())
    WebhookSink.received = []
    webhook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebhookSink)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    env = subprocess_env(
        settings,
        home,
        **{fault_location.FAULTS_VAR: FAULTS, fault_location.FAULT_STATE_DIR_VAR: str(_fault_state_dir(settings))},
        BACKFILL_MAX_PARTITIONS_PER_RUN="10",
        BACKFILL_STEP_MAX_RETRIES=str(STEP_RETRIES),
        BACKFILL_STEP_RETRY_DELAY_SECONDS="0.2",
        BACKFILL_RERUN_MAX_ATTEMPTS=str(RERUN_MAX_ATTEMPTS),
        BACKFILL_RERUN_INTERVAL_SECONDS="2",
        BACKFILL_ALERT_INTERVAL_SECONDS="2",
        BACKFILL_AUTOMATION="running",
        BACKFILL_SCHEDULE_CRON="0 6 1 1 *",  # the schedule must not fire during the test
        BACKFILL_ALERT_SMTP_HOST="127.0.0.1",
        BACKFILL_ALERT_SMTP_PORT=str(smtp.port),
        BACKFILL_ALERT_EMAIL_TO="oncall@example.test",
        BACKFILL_ALERT_WEBHOOK_URL=f"http://127.0.0.1:{webhook.server_address[1]}/hooks/T000/B000",
        BACKFILL_UI_URL="http://127.0.0.1:3000",
    )
    instance = dg.DagsterInstance.from_config(str(home))
    daemon = DaemonProcess(
        home, env=env, log_path=ARTIFACTS / "retry_acceptance_daemon.log",
        workspace=fault_location.workspace_yaml(root),  # the product's definitions + FaultInjector
    )
    defs = build_defs(settings)
    try:
        # The source, written in this process with the shared Spark session and recorded in the instance.
        resources = local_resources(settings)
        result = dg.materialize(
            [source_data],
            instance=instance,
            resources=resources,
            run_config={"ops": {"source_data": {"config": {
                "first_day": "2024-02-01", "last_day": "2024-03-29", "rows_per_date": ROWS_PER_DATE}}}},
        )
        assert result.success
        daemon.start()
        started = time.monotonic()
        launched = {
            "february": backfills.launch_destination_backfill(instance, defs, FEBRUARY, title="S1"),
            "overlap": backfills.launch_destination_backfill(instance, defs, OVERLAP, title="S2"),
            "chunk": backfills.launch_destination_backfill(instance, defs, CHUNK, title="S3"),
            "kill": backfills.launch_destination_backfill(
                instance, defs, [KILL_DAY], title="S4", tags={"dagster/max_retries": "0"}),
            "hang": backfills.launch_destination_backfill(
                instance, defs, [HANG_DAY], title="S5", tags={tags.MAX_RUNTIME: str(HANG_MAX_RUNTIME_S)}),
            "retry_kill": backfills.launch_destination_backfill(instance, defs, [RETRY_KILL_DAY], title="S6"),
        }
        state = _wait_until_settled(instance, smtp_sink, timeout_s=2100)
        state.update(
            instance=instance, settings=settings, resources=resources, backfills=launched, smtp=smtp_sink, env=env,
            defs=defs,
            webhook=WebhookSink.received, wall_s=time.monotonic() - started,
        )
        yield state
    finally:
        daemon.stop()
        smtp.stop()
        webhook.shutdown()
        webhook.server_close()
        instance.dispose()


def _materialized(instance) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey("destination_data")))


def _wait_until_settled(instance, smtp_sink, timeout_s: float) -> dict:
    """Until every date that can land has landed, the hopeless date was given up, both alerts
    arrived, nothing is queued or running, and two more sensor ticks found nothing to do."""
    deadline = time.monotonic() + timeout_s
    expected = set(FEBRUARY) | set(CHUNK) - {LOGIC_DAY, HOPELESS_DAY} | {KILL_DAY, HANG_DAY, RETRY_KILL_DAY}
    quiet_since = None
    while time.monotonic() < deadline:
        busy = instance.get_runs(filters=dg.RunsFilter(statuses=[
            dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]))
        gave_up = instance.get_runs(filters=dg.RunsFilter(tags={tags.GAVE_UP: "true"}))
        gave_up_dates = {d for run in gave_up for d in run.tags.get(tags.GAVE_UP_DATES, "").split(",") if d}
        done = (
            expected <= _materialized(instance)
            and {LOGIC_DAY, HOPELESS_DAY} <= gave_up_dates
            and len(smtp_sink.messages) >= 2
            and not busy
        )
        if done:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 8:  # a few more sensor ticks: nothing else may happen
                return {"settled": True}
        else:
            quiet_since = None
        time.sleep(1)
    return {"settled": False, "materialized": sorted(_materialized(instance))}


def _destination_runs(instance) -> list:
    """Backfill runs (asset job) and sensor reruns (destination_data_job, no asset selection)."""
    from backfill_platform.sensors.failures import targets_destination

    return [record for record in instance.get_run_records() if targets_destination(record.dagster_run, instance)]


def _dates(run) -> list[str]:
    return BUSINESS_DAYS.run_keys(run.tags)


def _fault_state_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "fault-injection"


def _attempts(instance, run_id: str) -> int:
    """Step attempts of destination_data in a run, from Dagster's own events."""
    starts = instance.get_records_for_run(run_id, of_type={
        dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED}).records
    return len(starts)


def _attempts_by_date(instance, records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        n = _attempts(instance, record.dagster_run.run_id)
        for day in _dates(record.dagster_run):
            counts[day] = counts.get(day, 0) + n
    return counts


def _table_rows(spark, settings, days):
    tables = local_resources(settings)["tables"]
    from pyspark.sql import functions as F

    dest = tables.destination.read(spark).where(F.col("position_date").isin(days))
    src = tables.source.read(spark).where(F.col("position_date").isin(days)).select(*dest.columns)
    return dest, src


def _report(name: str, lines: list[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "retry_acceptance_report.txt", "a") as out:
        out.write(f"== {name}\n" + "\n".join(lines) + "\n")
    print(f"\n== {name}\n" + "\n".join(lines))


def test_settled(deployment):
    assert deployment["settled"], f"did not settle: {deployment}"
    _report("wall", [f"all scenarios settled in {deployment['wall_s']:.0f} s"])


def test_transient_failures_all_land_within_limits_and_overlapping_backfills_never_overlap(deployment, spark):
    instance, settings = deployment["instance"], deployment["settings"]
    runs = [r for r in _destination_runs(instance) if set(_dates(r.dagster_run)) & set(FEBRUARY)]
    assert {r.dagster_run.tags.get("dagster/backfill") for r in runs} == {
        deployment["backfills"]["february"], deployment["backfills"]["overlap"]}
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.dagster_run.status for r in runs]
    assert len(runs) == 3  # 2 chunks of the 20 days + 1 chunk of the 10 overlapping days; no reruns needed
    assert set(FEBRUARY) <= _materialized(instance)
    # limits: each run attempted its step at most 1 + step retries times ...
    per_run = {r.dagster_run.run_id: _attempts(instance, r.dagster_run.run_id) for r in runs}
    assert all(1 <= n <= 1 + STEP_RETRIES for n in per_run.values()), per_run
    # ... and each date failed exactly as often as injected (counted independently by the injector)
    injector = FaultInjector(spec=FAULTS, state_dir=str(_fault_state_dir(settings)))
    by_date = _attempts_by_date(instance, runs)
    for day, n in TRANSIENT.items():
        assert injector.attempts(day) == by_date[day], (day, injector.attempts(day), by_date[day])
        assert by_date[day] >= n + 1
    # no date had two runs in flight at once
    for a in runs:
        for b in runs:
            if a is b or not set(_dates(a.dagster_run)) & set(_dates(b.dagster_run)):
                continue
            assert a.end_time <= b.start_time or b.end_time <= a.start_time, "overlapping runs shared a date"
    # exactly the source rows, once each
    dest, src = _table_rows(spark, settings, FEBRUARY)
    assert dest.count() == src.count() == len(FEBRUARY) * ROWS_PER_DATE
    assert dest.distinct().count() == dest.count()
    assert dest.exceptAll(src).count() == 0 and src.exceptAll(dest).count() == 0
    assert not [m for m in deployment["smtp"].messages if "2024-02" in m["Subject"]]
    windows = sorted((r.start_time, r.end_time, _dates(r.dagster_run)) for r in runs)
    t0 = windows[0][0]
    _report("S1+S2 transient 30% + overlapping backfills", [
        f"runs: {len(runs)}, all SUCCESS; step attempts per run: {sorted(per_run.values())}",
        "attempts per faulted date (injected failures -> attempts): "
        + ", ".join(f"{d}: {n} -> {by_date[d]}" for d, n in TRANSIENT.items()),
        *[f"run {s - t0:6.1f}..{e - t0:6.1f} s  {d[0]}..{d[-1]} ({len(d)} dates)" for s, e, d in windows],
        f"rows: destination {dest.count()} == source {src.count()}, distinct {dest.distinct().count()}",
    ])


def test_logic_error_fails_once_chunk_is_bisected_and_the_sensor_gives_up(deployment, spark):
    instance, settings = deployment["instance"], deployment["settings"]
    runs = sorted((r for r in _destination_runs(instance) if set(_dates(r.dagster_run)) & set(CHUNK)),
                  key=lambda r: r.create_timestamp)
    chunk_run = runs[0]
    assert _dates(chunk_run.dagster_run) == CHUNK and chunk_run.dagster_run.status == dg.DagsterRunStatus.FAILURE
    assert _attempts(instance, chunk_run.dagster_run.run_id) == 1  # logic error: no step retry
    assert chunk_run.dagster_run.tags.get("dagster/will_retry") == "false"  # and no run retry
    reruns = runs[1:]
    # the logic error names its date, which is not rerun; the chunk's other dates are rerun as their
    # range, which fails (the hopeless date), so the sensor reruns its halves: the bad date alone
    assert [(_dates(r.dagster_run), r.dagster_run.tags[tags.RERUN_ATTEMPT]) for r in reruns] == [
        (["2024-03-07", HOPELESS_DAY], "1"), (["2024-03-07"], "2"), ([HOPELESS_DAY], "2")]
    for rerun in reruns:
        t = rerun.dagster_run.tags
        assert t[tags.REQUESTED_BY] == "rerun_failed_partitions"
        assert t[tags.RERUN_OF_RUN_ID] in {r.dagster_run.run_id for r in runs}
    hopeless = [r for r in reruns if HOPELESS_DAY in _dates(r.dagster_run)]
    assert [r.dagster_run.tags[tags.RERUN_ATTEMPT] for r in hopeless] == ["1", "2"]
    assert hopeless[1].dagster_run.tags[tags.RERUN_OF_RUN_ID] == hopeless[0].dagster_run.run_id
    assert all(_attempts(instance, r.dagster_run.run_id) == 1 + STEP_RETRIES for r in hopeless)
    assert hopeless[1].dagster_run.tags.get(tags.GAVE_UP) == "true"
    assert chunk_run.dagster_run.run_id in {
        r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags={tags.GAVE_UP: "true"}))}
    landed = _materialized(instance)
    assert set(CHUNK) - {LOGIC_DAY, HOPELESS_DAY} <= landed and not {LOGIC_DAY, HOPELESS_DAY} & landed
    dest, src = _table_rows(spark, settings, CHUNK)
    assert dest.count() == (len(CHUNK) - 2) * ROWS_PER_DATE and dest.exceptAll(src).count() == 0
    # the sensor recorded its give-ups where a status report can query them: observations of the
    # partitions (metadata rerun_gave_up / reason) next to the run tags checked above
    observations = {
        record.partition_key: record.asset_observation.metadata
        for record in instance.fetch_observations(dg.AssetKey("destination_data"), limit=100).records
        if record.asset_observation and "rerun_gave_up_reason" in record.asset_observation.metadata
    }
    assert {LOGIC_DAY, HOPELESS_DAY} <= set(observations), observations
    assert "limit 2" in observations[HOPELESS_DAY]["rerun_gave_up_reason"].value
    assert "logic" in observations[LOGIC_DAY]["rerun_gave_up_reason"].value
    skip_messages = [t.skip_reason for t in _sensor_ticks(instance, "rerun_failed_partitions") if t.skip_reason]
    gave_up_messages = [m for m in skip_messages if "gave up on" in m] or ["(the give-ups were in ticks with reruns)"]
    # exactly one alert per finally failed date, on both channels
    mails = deployment["smtp"].messages
    hooks = deployment["webhook"]
    assert len(mails) == 2 and len(hooks) == 2, ([m["Subject"] for m in mails], hooks)
    by_day = {day: [m for m in mails if day in m["Subject"]] for day in (LOGIC_DAY, HOPELESS_DAY)}
    assert all(len(found) == 1 for found in by_day.values()), [m["Subject"] for m in mails]
    logic_body = by_day[LOGIC_DAY][0].get_payload(decode=True).decode()
    assert "logic/data error" in logic_body and "injected data-quality failure" in logic_body
    assert f"http://127.0.0.1:3000/runs/{chunk_run.dagster_run.run_id}" in logic_body
    hopeless_body = by_day[HOPELESS_DAY][0].get_payload(decode=True).decode()
    assert "gave up after 2 sensor rerun(s)" in hopeless_body and "connection reset" in hopeless_body
    assert f"/runs/{hopeless[1].dagster_run.run_id}" in hopeless_body
    assert sorted(LOGIC_DAY in h["text"] for h in hooks) == [False, True]
    assert "hooks/T000" not in logic_body  # the webhook URL (a secret) is not in messages
    _report("S3 logic error in a chunk + bisect + attempt limit + alerts", [
        f"chunk run {CHUNK[0]}..{CHUNK[-1]}: "
        f"FAILURE after {_attempts(instance, chunk_run.dagster_run.run_id)} attempt, "
        f"will_retry={chunk_run.dagster_run.tags.get('dagster/will_retry')}",
        "sensor reruns: " + ", ".join(
            f"{'..'.join(dict.fromkeys([_dates(r.dagster_run)[0], _dates(r.dagster_run)[-1]]))} "
            f"attempt {r.dagster_run.tags[tags.RERUN_ATTEMPT]} "
            f"{r.dagster_run.status.value} ({_attempts(instance, r.dagster_run.run_id)} step attempts)"
            for r in reruns),
        f"gave up: {LOGIC_DAY} (logic), {HOPELESS_DAY} (limit {RERUN_MAX_ATTEMPTS}); "
        f"tick message: {gave_up_messages[0][:200]}",
        f"alerts: {len(mails)} emails {[m['Subject'] for m in mails]}, {len(hooks)} webhook posts",
        f"rows for the chunk: {dest.count()} ({len(CHUNK) - 2} date(s) x {ROWS_PER_DATE})",
    ])


def _sensor_ticks(instance, name):
    from dagster._core.definitions.run_request import InstigatorType

    state = next(s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.name == name)
    return instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=500)


def test_killed_worker_leaves_no_partial_data_and_the_sensor_completes_the_date(deployment, spark):
    instance, settings = deployment["instance"], deployment["settings"]
    runs = sorted((r for r in _destination_runs(instance) if _dates(r.dagster_run) == [KILL_DAY]),
                  key=lambda r: r.create_timestamp)
    assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]
    killed, rerun = runs
    failure_text = " ".join(
        e.message or "" for e in instance.all_logs(killed.dagster_run.run_id)
        if e.dagster_event and e.dagster_event.event_type in (
            dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT))
    # the code server that launched the run worker saw it die and marked the run failed
    assert "Run execution process" in failure_text and "SIGKILL" in failure_text, failure_text[-500:]
    assert _attempts(instance, killed.dagster_run.run_id) == 1
    assert rerun.dagster_run.tags[tags.RERUN_OF_RUN_ID] == killed.dagster_run.run_id
    assert rerun.dagster_run.tags[tags.RERUN_ATTEMPT] == "1"
    # Delta atomicity: no version of the table ever held part of the date
    tables = local_resources(settings)["tables"]
    from pyspark.sql import functions as F

    counts = {}
    for row in tables.destination.delta_table(spark).history().select("version").collect():
        frame = spark.read.format("delta").option("versionAsOf", row[0]).load(tables.destination.path)
        counts[row[0]] = frame.where(F.col("position_date") == KILL_DAY).count()
    assert set(counts.values()) <= {0, ROWS_PER_DATE} and counts[max(counts)] == ROWS_PER_DATE, counts
    _report("S4 SIGKILL mid-write", [
        f"killed run {killed.dagster_run.run_id[:8]}: FAILURE ({failure_text.strip()[:160]})",
        f"sensor rerun {rerun.dagster_run.run_id[:8]} (attempt 1): SUCCESS",
        f"rows of {KILL_DAY} in each of the {len(counts)} table versions: "
        f"{sorted(set(counts.values()))} (never partial)",
    ])


def _run_chain(instance, day: str) -> list[dg.DagsterRun]:
    records = (r for r in _destination_runs(instance) if _dates(r.dagster_run) == [day])
    return [r.dagster_run for r in sorted(records, key=lambda r: r.create_timestamp)]


def _worker_pid(instance, run_id: str) -> int:
    """The run worker's pid, from Dagster's own "Started process for run (pid: N)" event."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if event.message and event.message.startswith("Started process for run (pid: "):
            return int(event.message.split("pid: ")[1].split(")")[0])
    raise AssertionError(f"no process start event for run {run_id}")


def _alive_with_parent(pid: int) -> list[int]:
    """``pid`` if it still runs, and its children (a Spark JVM, Python workers) if any survive it."""
    alive = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            lines = (proc / "status").read_text().splitlines()
        except OSError:
            continue
        status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        if int(proc.name) == pid or int(status.get("PPid", "0")) == pid:
            alive.append(int(proc.name))
    return alive


def _assert_run_retry_chain(instance, spark, settings, day: str) -> tuple[dg.DagsterRun, dg.DagsterRun]:
    chain = _run_chain(instance, day)
    assert [run.status for run in chain] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS], chain
    first, retry = chain
    # Dagster's run retry (the daemon) re-executed it from failure and wrote the lineage itself
    assert retry.tags[tags.PARENT_RUN_ID] == first.run_id and retry.tags[tags.ROOT_RUN_ID] == first.run_id
    assert retry.tags[tags.RETRY_NUMBER] == "1" and first.tags.get(tags.WILL_RETRY) == "true"
    assert tags.RERUN_OF_RUN_ID not in retry.tags  # not the rerun sensor
    worker = _worker_pid(instance, first.run_id)
    _wait_for(lambda: _alive_with_parent(worker) == [], 60, "the run worker to exit")  # none left behind
    dest, src = _table_rows(spark, settings, [day])
    assert sorted(map(tuple, dest.collect())) == sorted(map(tuple, src.collect())) and dest.count() == ROWS_PER_DATE
    return first, retry


def test_hung_step_is_ended_at_its_maximum_runtime_and_the_run_retry_succeeds(deployment, spark):
    """Issue 10: a hung local step is ended at the run's maximum runtime, Dagster's run retry
    re-executes it from failure and it succeeds; no worker process is left behind."""
    instance, settings = deployment["instance"], deployment["settings"]
    first, retry = _assert_run_retry_chain(instance, spark, settings, HANG_DAY)
    assert first.tags[tags.MAX_RUNTIME] == str(HANG_MAX_RUNTIME_S) == retry.tags[tags.MAX_RUNTIME]
    failures = instance.all_logs(first.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    failure = " ".join(e.message or "" for e in failures)
    assert f"Exceeded maximum runtime of {HANG_MAX_RUNTIME_S} seconds" in failure, failure
    record = instance.get_run_record_by_id(first.run_id)
    ran_s = record.end_time - record.start_time
    assert HANG_MAX_RUNTIME_S <= ran_s < HANG_MAX_RUNTIME_S + 60, ran_s
    _report("S5 hang -> max runtime -> run retry", [
        f"hung run {first.run_id[:8]}: FAILURE after {ran_s:.1f} s ({failure.strip()[:100]})",
        f"run retry {retry.run_id[:8]} (dagster/retry_number=1): SUCCESS",
    ])


def test_killed_worker_with_run_retries_on_is_re_executed_by_dagster(deployment, spark):
    """Issue 10: SIGKILL of a run worker with run retries on: Dagster's run retry re-executes the run
    from failure and it succeeds (S4 covers the same kill with run retries off: the sensor)."""
    instance, settings = deployment["instance"], deployment["settings"]
    first, retry = _assert_run_retry_chain(instance, spark, settings, RETRY_KILL_DAY)
    failure = " ".join(
        e.message or "" for e in instance.all_logs(first.run_id)
        if e.dagster_event
        and e.dagster_event.event_type in (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT)
    )
    assert "SIGKILL" in failure, failure[-500:]
    _report("S6 SIGKILL -> run retry", [
        f"killed run {first.run_id[:8]}: FAILURE; run retry {retry.run_id[:8]} (dagster/retry_number=1): SUCCESS",
    ])


def test_status_counts_run_retries_from_the_lineage_dagster_wrote(deployment):
    """``backfill-platform status`` counts S5's and S6's run retries from the ``dagster/parent_run_id``
    / ``dagster/root_run_id`` / ``dagster/retry_number`` tags the daemon wrote (no tag written by hand)."""
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "backfill-platform"), "status",
         "--from", "2024-03-13", "--to", RETRY_KILL_DAY, "--format", "json"],
        env=deployment["env"], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    dates = {d["date"]: d for d in report["dates"]}
    for day in (HANG_DAY, RETRY_KILL_DAY):
        assert (dates[day]["attempts"], dates[day]["failed_runs_before_success"]) == (2, 1), dates[day]
        assert dates[day]["last_status"] == "SUCCESS" and dates[day]["succeeded_after_retries"] is True
    assert report["counts"]["materialized"] == 2 and report["counts"]["failed"] == 0
    assert report["analytics"]["retry_runs"] == 2
    _report("status over the run retries", [report["summary"]])


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _daemon_log_since(offset: int) -> str:
    return (ARTIFACTS / "retry_acceptance_daemon.log").read_bytes()[offset:].decode(errors="replace")


def test_cancel_stops_a_running_local_run_and_writes_nothing(deployment, spark):
    """Issue 10: terminating a run whose Spark write is running ends it CANCELED within a bounded
    time, its Spark job and processes stop, the table stays as it was, and no py4j error is logged
    (before the fix pyspark's SIGINT handler logged "reentrant call" and the run went on to SUCCESS)."""
    instance, settings, defs = deployment["instance"], deployment["settings"], deployment["defs"]
    tables = local_resources(settings)["tables"]
    log_offset = (ARTIFACTS / "retry_acceptance_daemon.log").stat().st_size
    version_before = tables.destination.latest_version(spark)
    marker = _fault_state_dir(settings) / f"{CANCEL_DAY}.writing"
    backfill_id = backfills.launch_destination_backfill(instance, defs, [CANCEL_DAY], title="S7 cancel a run")
    _wait_for(marker.exists, 300, "the slow write's Spark task to start")
    run = backfills.backfill_runs(instance, backfill_id)[0]
    canceled_at = time.monotonic()
    instance.run_coordinator.cancel_run(run.run_id)  # what the UI's Terminate button calls
    _wait_for(lambda: instance.get_run_by_id(run.run_id).is_finished, 120, "the run to end")
    cancel_to_end_s = time.monotonic() - canceled_at
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    assert cancel_to_end_s < 30, cancel_to_end_s  # a row takes SLOW_S: the Spark job was stopped
    worker = _worker_pid(instance, run.run_id)
    _wait_for(lambda: _alive_with_parent(worker) == [], 60, "the run worker and its JVM to exit")
    assert tables.destination.latest_version(spark) == version_before
    assert _table_rows(spark, settings, [CANCEL_DAY])[0].count() == 0
    time.sleep(3)  # the daemon's code server writes the run worker's output asynchronously
    log = _daemon_log_since(log_offset)
    assert "reentrant" not in log and "Py4JError" not in log, log[-2000:]
    deployment["cancel_to_end_s"] = cancel_to_end_s
    _report("S7 cancel a running run", [f"run {run.run_id[:8]}: Cancel -> CANCELED in {cancel_to_end_s:.1f} s"])


def test_cancel_of_a_backfill_cancels_its_running_and_queued_runs(deployment, spark):
    instance, settings, defs = deployment["instance"], deployment["settings"], deployment["defs"]
    tables = local_resources(settings)["tables"]
    version_before = tables.destination.latest_version(spark)
    backfill_id = backfills.launch_destination_backfill(
        instance, defs, CANCEL_BACKFILL_DAYS, title="S7 cancel a backfill"
    )

    def running_and_queued():
        statuses = [run.status for run in backfills.backfill_runs(instance, backfill_id)]
        started = statuses.count(dg.DagsterRunStatus.STARTED)
        return started >= 1 and len(statuses) == 3 and statuses

    seen = _wait_for(running_and_queued, 300, "the backfill's three runs, some running")
    _wait_for(lambda: any((_fault_state_dir(settings) / f"{d}.writing").exists() for d in CANCEL_BACKFILL_DAYS),
              300, "a slow write to start")
    canceled_at = time.monotonic()
    dagster_internals.cancel_backfill(instance, backfill_id)  # what the UI's "Cancel backfill" calls
    # The runs end within seconds; marking the backfill CANCELED is the backfill daemon's next
    # iteration, which took over 180 s once on a loaded machine (all three runs were CANCELED by then).
    _wait_for(lambda: instance.get_backfill(backfill_id).status.value == "CANCELED", 600, "the backfill to cancel")
    runs = backfills.backfill_runs(instance, backfill_id)
    assert {run.status for run in runs} == {dg.DagsterRunStatus.CANCELED}, [(r.run_id, r.status) for r in runs]
    assert tables.destination.latest_version(spark) == version_before
    _report("S7 cancel a backfill", [
        f"runs before Cancel: {sorted(s.value for s in seen)}; all {len(runs)} CANCELED "
        f"{time.monotonic() - canceled_at:.1f} s after Cancel"
    ])


def test_status_reports_the_history_the_daemon_and_the_sensor_made(deployment):
    """Issue 6 on real retries: ``backfill-platform status`` over the history above (step retries by
    the step's RetryRequested, a killed run, rerun-sensor reruns and give-ups), exact numbers."""
    instance = deployment["instance"]
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "backfill-platform"), "status",
         "--from", "2024-02-01", "--to", KILL_DAY, "--format", "json"],
        env=deployment["env"], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # 1: some business day failed
    report = json.loads(result.stdout)
    dates = {d["date"]: d for d in report["dates"]}
    # coverage: 28 business days (20 in February 2024, 8 in March up to the 12th), 13 other days
    assert report["business_days"] == 28
    assert report["counts"] == {"materialized": 22, "failed": 2, "missing": 4, "in flight": 0, "not a business day": 13}
    assert [d for d, v in dates.items() if v["state"] == "missing"] == [
        "2024-03-01", "2024-03-04", "2024-03-05", "2024-03-11"
    ]
    assert dates["2024-02-19"]["reason"] == "holiday: Washington's Birthday"  # pandas' name for Presidents Day

    # per-date run attempts, from the runs the daemon and the sensor launched
    s2_run = next(r for r in _destination_runs(instance) if _dates(r.dagster_run) == OVERLAP)
    s2_step_retries = _attempts(instance, s2_run.dagster_run.run_id) - 1
    for day in FEBRUARY:
        runs = 2 if day in OVERLAP else 1  # S1's chunk, and S2's run for the overlapping days
        assert (dates[day]["attempts"], dates[day]["last_status"]) == (runs, "SUCCESS"), dates[day]
        # each S1 chunk needed exactly 2 step retries (2024-02-07 and 2024-02-28 fail twice);
        # S2 needed what its dates' remaining injected failures asked for
        retries = 2 + (s2_step_retries if day in OVERLAP else 0)
        assert dates[day]["step_retries_before_success"] == retries and dates[day]["failed_runs_before_success"] == 0
        assert dates[day]["succeeded_after_retries"] is True
    assert (dates[KILL_DAY]["attempts"], dates[KILL_DAY]["failed_runs_before_success"]) == (2, 1)
    # 03-07: the chunk, the rerun of 03-07..03-08 (failed with 03-08), then its half alone
    assert (dates["2024-03-07"]["attempts"], dates["2024-03-07"]["failed_runs_before_success"]) == (3, 2)
    assert [dates[d]["attempts"] for d in (LOGIC_DAY, HOPELESS_DAY)] == [1, 3]
    assert "injected data-quality failure" in dates[LOGIC_DAY]["last_error"]
    # the last attempt's own error, not Dagster's "Exceeded max_retries of 3" wrapper
    assert "connection reset" in dates[HOPELESS_DAY]["last_error"], dates[HOPELESS_DAY]["last_error"]
    assert dates[HOPELESS_DAY]["last_error"].endswith(f"(after max_retries of {STEP_RETRIES})")

    analytics = report["analytics"]
    landed_after_retries = [entry["date"] for entry in analytics["succeeded_after_retries"]]
    assert landed_after_retries == sorted([*FEBRUARY, "2024-03-07", KILL_DAY])
    # attempt n = the n-th run of a date since its last success
    assert analytics["success_rate_by_attempt"] == {
        "1": {"attempts": 34, "succeeded": 30, "rate": round(30 / 34, 4)},  # 20 + 10 Feb, 3 chunk, kill
        "2": {"attempts": 3, "succeeded": 1, "rate": round(1 / 3, 4)},  # 03-07..08 rerun (2 dates), kill rerun
        "3": {"attempts": 2, "succeeded": 1, "rate": 0.5},  # the halves: 03-07 lands, 03-08 fails
    }
    give_ups = {g["date"]: g for g in analytics["give_ups"]}
    assert sorted(give_ups) == [LOGIC_DAY, HOPELESS_DAY]
    assert "logic" in give_ups[LOGIC_DAY]["reason"] and "limit 2" in give_ups[HOPELESS_DAY]["reason"]
    assert analytics["retry_runs"] == 4  # sensor reruns: 03-07..08, then 03-07 and 03-08, the killed date
    assert analytics["step_retries"] == 4 + s2_step_retries + 2 * STEP_RETRIES  # + the two reruns with 03-08
    _report("issue 6: status over this history", [
        report["summary"],
        f"succeeded only after retries: {len(landed_after_retries)} dates; give-ups: {sorted(give_ups)}; "
        f"success rate by attempt: {analytics['success_rate_by_attempt']}",
    ])
