"""What a one-date run costs as the destination grows, and what ``plan`` costs over 10 years (issue 13).

    .venv/bin/python bench/table_size.py [--work DIR]

``measure_table_size_cost``: the same one-date ``destination_data`` materialization (the real asset, its
data gates and its five asset checks, through ``dagster.materialize`` on one warm local Spark) on a
destination that holds 60 business dates and on one that holds 1,724 (seven years). The tables are
filled with bare Spark first (not timed) in 11 commits, so each has the checkpoint Delta writes every 10
commits, as a table that lived through a few backfills has; each size is run once to warm up (not counted: the
first size measured would otherwise pay the JVM's warm-up), then ``repeats`` times, and the median is
kept, so JVM start and process start are out of the figure: only what grows with the table is left.

``measure_plan``: ``backfill-platform plan`` over 10 years of business days in a fresh process and a
fresh instance (``BACKFILL_START_DATE`` 2016-01-01), wall time from ``exec`` to exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from upstream import materialize  # noqa: E402 (bench/ is the script's directory)

RUN_DATE = "2025-11-20"
SIZES = (60, 1724)
# (dates in the table, layout): the ratio compares the default layout's two sizes; the clustered one
# is a one-date rerun inside the large clustered files that a chunked backfill writes
CASES = ((60, "partitioned"), (1724, "partitioned"), (1724, "clustered"))
FILL_COMMITS = 11  # versions 0..10: Delta writes a checkpoint every 10 commits (delta.checkpointInterval)
# the step's own timing metadata (assets/destination.py); the rest of the run is the checks and Dagster
PHASES = ("spark_session_s", "read_check_s", "write_commit_s")


def measure_table_size_cost(work: Path, repeats: int = 3) -> dict:
    import dagster as dg

    from backfill_platform.assets import build_assets
    from backfill_platform.assets.tables_schema import POSITION_COLUMNS
    from backfill_platform.partitions import BusinessDays
    from backfill_platform.resources import local_resources
    from backfill_platform.resources.spark import local_spark_config, start_spark_session
    from backfill_platform.settings import CalendarSettings, Settings

    calendar_settings = CalendarSettings(start_date=dt.date(2017, 1, 2))
    business_days = BusinessDays.from_settings(calendar_settings)
    keys = [str(key) for key in business_days.partitions_def.get_partition_keys() if str(key) <= RUN_DATE]
    assert len(keys) >= max(SIZES), f"only {len(keys)} business days before {RUN_DATE}"
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    figures: dict[str, dict] = {}
    spark = None
    try:
        for size, layout in CASES:
            name = f"{size}" if layout == "partitioned" else f"{size}-{layout}"
            data_dir = work / f"table-size-{name}"
            shutil.rmtree(data_dir, ignore_errors=True)
            settings = dataclasses.replace(Settings(data_dir=data_dir), calendar=calendar_settings)
            settings = settings.replace(tables=dataclasses.replace(settings.tables, table_layout=layout))
            spark = spark or start_spark_session(local_spark_config(settings))
            _, source, destination = build_assets(settings, business_days)
            resources = local_resources(settings)
            # the source: 10 rows for every business date of the table (not timed)
            with dg.DagsterInstance.ephemeral() as instance:  # disposed: see the timed runs below
                result = materialize(
                    [source], resources=resources, instance=instance,
                    run_config={**quiet, "ops": {"source_data": {"config": {
                        "first_day": keys[-size], "last_day": RUN_DATE, "rows_per_date": 10}}}},
                )
            assert result.success
            held = keys[-size:]
            # the destination holding `size` dates, written by bare Spark in FILL_COMMITS commits (not timed),
            # so that it has a checkpoint as every table that lived through 10 commits has
            warehouse = data_dir / "warehouse" / settings.tables.schema
            source_rows = spark.read.format("delta").load(str(warehouse / settings.tables.source_table))
            table = warehouse / settings.tables.destination_table
            columns = ", ".join(f"{column} {kind}" for column, kind in POSITION_COLUMNS.items())
            spark.sql(f"CREATE TABLE delta.`{table}` ({columns}) USING DELTA "
                      + ("PARTITIONED BY" if layout == "partitioned" else "CLUSTER BY") + " (position_date)")
            step = -(-size // FILL_COMMITS)
            for at in range(0, size, step):
                chunk = held[at:at + step]
                (source_rows.where(f"position_date >= '{chunk[0]}' AND position_date <= '{chunk[-1]}'")
                 .write.format("delta").mode("append").save(str(table)))
            steps, phases = [], []
            for attempt in range(repeats + 1):  # the first is a warm-up (JIT, caches), not counted
                # disposed here: an ephemeral instance's in-memory SQLite connection left to the garbage collector
                # can be finalized in another thread (the run's cancel watcher polls from its own), and SQLAlchemy
                # then logs "SQLite objects created in a thread can only be used in that same thread"
                with dg.DagsterInstance.ephemeral() as instance:
                    started = time.monotonic()
                    result = materialize([destination], partition_key=RUN_DATE, resources=resources,
                                            instance=instance, run_config=quiet)
                    elapsed = time.monotonic() - started
                assert result.success
                if attempt == 0:
                    continue
                steps.append(elapsed)
                metadata = result.asset_materializations_for_node(destination.op.name)[0].metadata
                phases.append({key: metadata[key].value for key in PHASES}
                              | {"checks_s": round(elapsed - sum(metadata[key].value for key in PHASES), 2)})
            reads = []
            for _ in range(repeats):  # reading one date back, as a user's query does
                started = time.monotonic()
                spark.read.format("delta").load(str(table)).where(f"position_date = '{RUN_DATE}'").collect()
                reads.append(time.monotonic() - started)
            figures[name] = {"dates_in_table": size, "layout": layout, "run_s": [round(s, 2) for s in steps],
                             "read_one_date_median_s": round(statistics.median(reads), 3),
                             "median_run_s": round(statistics.median(steps), 2),
                             "phase_medians_s": {key: round(statistics.median(p[key] for p in phases), 2)
                                                 for key in phases[0]}}
            print(f"  one-date run on a {layout} table of {size} dates: {figures[name]}", flush=True)
    finally:
        if spark is not None:
            spark.stop()
    small, large = (figures[str(size)]["median_run_s"] for size in SIZES)
    return {"sizes": figures, "ratio": round(large / small, 3)}  # the default layout (partitioned)


def measure_plan(work: Path) -> dict:
    home = work / "plan-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "BACKFILL_DATA_DIR": str(work / "plan-data"),
           "BACKFILL_START_DATE": "2016-01-01", "PYTHONWARNINGS": "ignore"}
    command = [str(Path(sys.executable).with_name("backfill-platform")), "plan", "--from", "2016-01-01",
               "--to", "2025-12-31"]
    walls = []
    for _ in range(3):  # the first also creates the instance's SQLite storage
        started = time.monotonic()
        out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
        walls.append(round(time.monotonic() - started, 2))
    partitions = next((line for line in out.stdout.splitlines() if "business day" in line), "").strip()
    return {"wall_s": walls, "median_s": statistics.median(walls), "first_line": partitions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work-table-size")
    parser.add_argument("--only-table-size", action="store_true")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    plan = None if args.only_table_size else measure_plan(args.work)
    print(json.dumps({"plan_2500_dates": plan, "table_size_cost": measure_table_size_cost(args.work)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
