"""Instance storage benchmark: the same chunked backfill on SQLite (the embedded default) and on Postgres.

    .venv/bin/python bench/storage.py [--from 2024-01-01] [--to 2024-06-28] [--chunk-size 20]
                                      [--max-concurrent 2] [--out FILE.json]

Needs the ``test`` extra (dagster-postgres, pytest) and Debian's PostgreSQL server binaries
(``make postgresql``). For each backend, in this order:

- ``sqlite``: a fresh DAGSTER_HOME with ``dagster_home/dagster.yaml`` (SQLite files under DAGSTER_HOME);
- ``postgres``: a fresh throwaway PostgreSQL server on 127.0.0.1 (``backfill_platform_tests/postgres_server.py``)
  and a DAGSTER_HOME with ``dagster_home/postgres/dagster.yaml`` (the DAGSTER_PG_* variables set);

each with its own data directory where source_data (10 rows per business day) and business_calendar are
materialized and recorded in that instance first (not timed). Then, timed from start to exit:
``backfill-platform backfill --from A --to B --chunk-size N --max-concurrent M`` as a subprocess,
which starts its own ``dagster-daemon`` and waits for every chunk run. ``ratio`` is postgres_s / sqlite_s.
The JSON also holds the median run duration (run start to end, from each instance's run storage).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*is currently in beta.*")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_backend(backend: str, work: Path, args, server=None) -> dict:
    """Seed a fresh instance of ``backend`` (not timed), then time the CLI's chunked backfill on it."""
    import dagster as dg

    from backfill_platform import tags
    from backfill_platform.resources import local_resources
    from backfill_platform.settings import Settings
    from backfill_platform_tests.conftest import make_dagster_home, subprocess_env
    from backfill_platform_tests.postgres_server import postgres_dagster_home, seed_prerequisites

    root = work / backend
    settings = Settings(data_dir=root / "data")
    home = postgres_dagster_home(root / "dagster_home") if server else make_dagster_home(root / "dagster_home")
    pg_env = server.env() if server else {}
    os.environ.update(pg_env)  # this process loads the instance to seed it and to read the runs
    env = subprocess_env(settings, home, **pg_env)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        seeded = time.monotonic()
        seed_prerequisites(instance, local_resources(settings), args.date_from, args.date_to)
        print(f"  {backend}: seeded source + calendar in {time.monotonic() - seeded:.1f} s (not timed)", flush=True)
        command = [str(Path(sys.executable).with_name("backfill-platform")), "backfill", "--from", args.date_from,
                   "--to", args.date_to, "--chunk-size", str(args.chunk_size),
                   "--max-concurrent", str(args.max_concurrent)]
        load_before = [round(x, 2) for x in os.getloadavg()]
        started = time.monotonic()
        completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=args.timeout)
        wall = time.monotonic() - started
        (root / "cli.log").write_text(completed.stdout + completed.stderr)
        records = instance.get_run_records(dg.RunsFilter(tags={tags.REQUESTED_BY: "cli"}))
        durations = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
        result = {
            "wall_s": round(wall, 1),
            "exit_code": completed.returncode,
            "runs": len(records),
            "runs_succeeded": sum(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records),
            "median_run_s": round(statistics.median(durations), 1) if durations else None,
            "load_average_before": load_before,  # 1/5/15-minute load: other work on the machine skews wall_s
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
    for variable in pg_env:
        os.environ.pop(variable, None)
    print(f"  {backend}: {result}", flush=True)
    if completed.returncode != 0:
        print(completed.stdout[-3000:] + completed.stderr[-3000:], flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="date_from", default="2024-01-01")
    parser.add_argument("--to", dest="date_to", default="2024-06-28")
    parser.add_argument("--chunk-size", type=int, default=20)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per backend")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from backfill_platform.resources.spark import local_spark_config, start_spark_session
    from backfill_platform.settings import Settings
    from backfill_platform_tests.postgres_server import PostgresServer

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        spark = start_spark_session(local_spark_config(Settings(data_dir=work / "spark")))  # seeding only
        stack.callback(spark.stop)
        results["sqlite"] = run_backend("sqlite", work, args)
        server = stack.enter_context(PostgresServer(work))
        results["postgres"] = run_backend("postgres", work, args, server=server)

    sqlite_s, postgres_s = results["sqlite"]["wall_s"], results["postgres"]["wall_s"]
    summary = {
        "date": dt.date.today().isoformat(),
        "range": [args.date_from, args.date_to],
        "chunk_size": args.chunk_size,
        "max_concurrent": args.max_concurrent,
        "sqlite_s": sqlite_s,
        "postgres_s": postgres_s,
        "ratio": round(postgres_s / sqlite_s, 3),
        "cpus": os.cpu_count(),
        "backends": results,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"results: {args.out}")
    return 0 if all(r["exit_code"] == 0 and r["runs"] == r["runs_succeeded"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
