"""Per-step overhead of the Databricks step launcher against the project's workspace emulator.

    python bench/databricks_step_overhead.py [--chunks 1,5,20] [--repeat 2]
        [--out bench/results/databricks_step_overhead.json]

For each chunk size (business dates per run, i.e. BACKFILL_MAX_PARTITIONS_PER_RUN of a backfill) it
executes ``destination_data_job`` for one partition range through the real step launcher (zip +
DBFS upload + ``runs/submit`` + polling + reading the pickled events back) and splits the step's
wall time, from the launcher's own event timestamps, into:

- ``upload_s``: zip + DBFS uploads (first "Uploading" log -> "Waiting for Databricks run");
- ``to_remote_start_s``: submit -> the remote step starts (PENDING, driver process, attaching to
  the cluster, importing Dagster and the definitions from the zip);
- ``remote_step_s``: the step's own run on the cluster (remote STEP_START -> STEP_SUCCESS);
- ``tail_s``: remote step done -> the launcher has seen TERMINATED and read events/stdout/stderr;
- ``overhead_s`` = launcher wall time - remote_step_s.

Runs on the emulator's warm existing cluster (one driver JVM shared by all runs, as a shared
all-purpose cluster) and, once, on a new job cluster (a JVM per run: the emulator's stand-in for
cluster start-up, which on real Databricks is minutes, not seconds). The host starts one local Spark
only to seed the demo source.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", default="1,5,20")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--poll", default="0.5")
    parser.add_argument("--no-job-cluster", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "databricks_step_overhead.json")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]

    from databricks_emulator import DEFAULT_CLUSTER_ID, DatabricksEmulator

    work = Path(tempfile.mkdtemp(prefix="bench_databricks_"))
    token = "dapi-bench-" + secrets.token_hex(8)
    emulator = DatabricksEmulator(work / "workspace", token=token).start()
    os.environ.update({
        "BACKFILL_DEPLOYMENT": "databricks",
        "BACKFILL_DATABRICKS_HOST": emulator.url,
        "BACKFILL_DATABRICKS_TOKEN": token,
        "BACKFILL_DATABRICKS_CLUSTER_ID": DEFAULT_CLUSTER_ID,
        "BACKFILL_DATABRICKS_POLL_INTERVAL_S": args.poll,
        "BACKFILL_DATA_DIR": str(work / "host"),
        "DAGSTER_HOME": str(work / "dagster_home"),
    })
    (work / "dagster_home").mkdir()
    results: dict = {"poll_interval_s": float(args.poll), "runs": []}
    try:
        keys = _seed_source(work, emulator, max(chunks))
        import dagster as dg

        instance = dg.DagsterInstance.get()
        for chunk in chunks:
            for attempt in range(args.repeat):
                results["runs"].append(_measure(instance, keys[:chunk], "existing (warm)", attempt))
                print(json.dumps(results["runs"][-1]), flush=True)
        if not args.no_job_cluster:
            os.environ.pop("BACKFILL_DATABRICKS_CLUSTER_ID")
            os.environ.update({
                "BACKFILL_DATABRICKS_SPARK_VERSION": "15.4.x-scala2.12",
                "BACKFILL_DATABRICKS_NODE_TYPE": "emulated.local",
                "BACKFILL_DATABRICKS_NUM_WORKERS": "0",
            })
            results["runs"].append(_measure(instance, keys[:1], "new job cluster (cold JVM)", 0))
            print(json.dumps(results["runs"][-1]), flush=True)
        results["summary"] = _summary(results["runs"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["summary"], indent=2))
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)


def _seed_source(work: Path, emulator, count: int) -> list[str]:
    import dagster as dg

    from backfill_platform.assets.source import source_data
    from backfill_platform.partitions import BusinessDays
    from backfill_platform.resources import local_resources
    from backfill_platform.settings import Settings

    settings = Settings(data_dir=work / "local")
    resources = local_resources(settings)
    source_config = {"first_day": "2025-01-01", "last_day": "2025-03-31", "rows_per_date": 100}
    result = dg.materialize(
        [source_data], resources=resources,
        run_config={"ops": {"source_data": {"config": source_config}}},
    )
    assert result.success
    shutil.copytree(resources["tables"].source.path, emulator.warehouse / "demos" / "backfill_demo" / "source_data")
    resources["pyspark"].spark_session.stop()
    partitions_def = BusinessDays.from_settings(settings.calendar).partitions_def
    keys = [k for k in partitions_def.get_partition_keys() if "2025-01-02" <= k <= "2025-03-31"]
    return keys[:count]


def _measure(instance, keys: list[str], cluster: str, attempt: int) -> dict:
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    job = ReconstructableRepository.for_module(
        "backfill_platform.definitions", "defs", working_directory=str(ROOT)
    ).get_reconstructable_job("destination_data_job")
    started = time.monotonic()
    result = dg.execute_job(
        job, instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    wall = time.monotonic() - started
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    logs = instance.all_logs(result.run_id)

    def first(predicate):
        return next(e.timestamp for e in logs if predicate(e))

    def last(predicate):
        return [e.timestamp for e in logs if predicate(e)][-1]

    def event(kind):
        return lambda e: e.dagster_event is not None and e.dagster_event.event_type_value == kind

    upload_start = first(lambda e: (e.message or "").startswith("Uploading main file"))
    submitted = first(lambda e: (e.message or "").startswith("Waiting for Databricks run"))
    remote_start = first(event("STEP_START"))
    remote_end = last(event("STEP_SUCCESS"))
    done = first(lambda e: "completed." in (e.message or "") and (e.message or "").startswith("Databricks run"))
    logs_read = last(lambda e: (e.message or "").startswith("Captured stderr"))
    launcher_wall = logs_read - upload_start
    remote = remote_end - remote_start
    return {
        "cluster": cluster,
        "dates": len(keys),
        "attempt": attempt,
        "job_wall_s": round(wall, 2),
        "launcher_wall_s": round(launcher_wall, 2),
        "upload_s": round(submitted - upload_start, 2),
        "to_remote_start_s": round(remote_start - submitted, 2),
        "remote_step_s": round(remote, 2),
        "tail_s": round(logs_read - remote_end, 2),
        "terminated_seen_after_s": round(done - remote_end, 2),
        "overhead_s": round(launcher_wall - remote, 2),
    }


def _summary(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["cluster"], run["dates"]), []).append(run)
    summary = []
    for (cluster, dates), items in groups.items():
        measured = items[1:] if len(items) > 1 else items  # first warm run also warms the JIT
        overhead = statistics.median(r["overhead_s"] for r in measured)
        remote = statistics.median(r["remote_step_s"] for r in measured)
        summary.append({
            "cluster": cluster, "dates_per_run": dates, "runs": len(measured),
            "overhead_s_per_run": overhead, "remote_step_s": remote,
            "overhead_s_per_date": round(overhead / dates, 2),
            "step_s_per_date": round((overhead + remote) / dates, 2),
        })
    return summary


if __name__ == "__main__":
    main()
