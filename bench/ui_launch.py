"""What a backfill launched from the UI costs beyond its runs' own time (issue 13: ``ui_launch_overhead_s``).

A fresh instance, a ``dagster-daemon`` and a ``dagster-webserver`` on 127.0.0.1 (both started and warm
before the clock starts); then, as the UI's launcher does, one GraphQL ``launchPartitionBackfill`` of
``destination_data`` over 13 business days, and a poll of the instance until the backfill is
COMPLETED_SUCCESS. ``overhead_s`` = launch -> COMPLETED seen, minus the union of its runs'
[start, end] intervals (what the runs themselves took): the backfill daemon's evaluation latency at
launch and at the end, the queue's dequeue, and run process start before Dagster records the run start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATES = 13
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


LAUNCH_RUN = ("mutation LaunchRun($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename "
              "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }")
REPAIR_DATE_INDEX = 6  # a date of the backfill, materialized again as a repair


def _graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["data"]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _union_s(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def measure_ui_launch_overhead(work: Path, data_dir: Path, keys: list[str], timeout_s: float = 900) -> dict:
    import dagster as dg

    from backfill_platform import processes

    keys = keys[:DATES]
    home = work / "homes" / "ui-launch"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "BACKFILL_DATA_DIR": str(data_dir),
           "BACKFILL_DESTINATION_TABLE": "dest_ui_launch", "BACKFILL_SPARK_REMOTE": "",
           "BACKFILL_SPARK_SERVER": "shared", "PYTHONUNBUFFERED": "1"}
    processes.initialize_instance_storage(home)  # before two processes (webserver, daemon) open it at once
    port = _free_port()
    log = open(work / "logs" / "ui-launch-webserver.log", "wb")
    webserver = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w",
         str(REPO / "workspace.yaml")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    daemon = processes.DaemonProcess(home, env=env, log_path=work / "logs" / "ui-launch-daemon.log").start()
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or webserver.poll() is not None:
                    return {"error": "the webserver did not answer"}
                time.sleep(0.5)
        time.sleep(5)  # the daemon's first iterations (workspace load) happen before the clock starts
        instance = dg.DagsterInstance.from_config(str(home))
        launched = time.time()
        answer = _graphql(port, LAUNCH, {"params": {"assetSelection": [{"path": ["destination_data"]}],
                                                    "partitionNames": keys, "title": "bench ui launch"}})
        backfill_id = answer["launchPartitionBackfill"].get("backfillId")
        if backfill_id is None:
            return {"error": str(answer)}
        while True:
            backfill = instance.get_backfill(backfill_id)
            if backfill.status.value != "REQUESTED":
                completed = time.time()
                break
            if time.time() - launched > timeout_s:
                return {"error": f"backfill not complete after {timeout_s:.0f} s"}
            time.sleep(0.2)
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        intervals = [(r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
        runs_s = _union_s(intervals)
        first_start = min((start for start, _ in intervals), default=completed)
        last_end = max((end for _, end in intervals), default=completed)
        repair = _repair_one_date(port, instance, keys[REPAIR_DATE_INDEX], timeout_s)
        instance.dispose()
        return {
            "repair_one_date": repair,
            "dates": len(keys), "status": backfill.status.value, "runs": len(records),
            "launch_to_completed_s": round(completed - launched, 2), "runs_own_s": round(runs_s, 2),
            "launch_to_first_run_start_s": round(first_start - launched, 2),
            "last_run_end_to_completed_s": round(completed - last_end, 2),
            "overhead_s": round(completed - launched - runs_s, 2),
        }
    finally:
        daemon.stop()
        processes.stop_process_group(webserver, timeout_s=20)
        log.close()


def _repair_one_date(port: int, instance, day: str, timeout_s: float) -> dict:
    """``repair_one_date_s``: one date materialized again as the UI's Materialize of one partition (or
    a rerun request) does it: a run of destination_data_job submitted to the queue, timed from the run's
    creation (queued) to its SUCCESS as the instance records them, with the default deployment
    (a process per run, on the data dir's shared Spark server) and the daemon already warm."""
    import dagster as dg

    answer = _graphql(port, LAUNCH_RUN, {"params": {
        "selector": {"repositoryLocationName": "backfill_platform", "repositoryName": "__repository__",
                     "jobName": "destination_data_job", "assetSelection": [{"path": ["destination_data"]}]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
    }})["launchRun"]
    if answer["__typename"] != "LaunchRunSuccess":
        return {"error": str(answer)}
    run_id = answer["run"]["runId"]
    deadline = time.monotonic() + timeout_s
    while True:
        record = instance.get_run_record_by_id(run_id)
        if record.dagster_run.is_finished:
            break
        if time.monotonic() > deadline:
            return {"error": f"run {run_id} not finished after {timeout_s:.0f} s"}
        time.sleep(0.2)
    status = record.dagster_run.status
    if status != dg.DagsterRunStatus.SUCCESS:
        return {"error": f"run {run_id} ended {status.value}"}
    return {
        "date": day, "queued_to_success_s": round(record.end_time - record.create_timestamp.timestamp(), 2),
        "queued_to_start_s": round(record.start_time - record.create_timestamp.timestamp(), 2),
        "run_own_s": round(record.end_time - record.start_time, 2),
    }
