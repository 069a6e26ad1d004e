"""The machine's floor: the same backfill as bare Spark, one process, no orchestrator (issue 13).

    .venv/bin/python bench/floor.py --source DIR --dest DIR --dates 2024-01-02,2024-01-03,... \
        --chunk-size 240 --layout partitioned|clustered --scratch DIR [--one-date-repeats 5]

reads the source Delta table and ``replaceWhere``-overwrites its business dates into a new Delta table
in commits of ``--chunk-size`` dates, with the platform's own local Spark settings (``local_spark_config``:
2 shuffle / 2 snapshot partitions, the same JIT options), the table created the way the asset creates it
(``PARTITIONED BY (position_date)``) or liquid-clustered (``CLUSTER BY (position_date)``). It prints one
JSON line: ``process_s`` is the whole process from ``exec`` to exit (JVM start included, as each platform
run pays its own), ``write_s`` the read+write work after the session is up. With ``--one-date-repeats N``
it then rewrites the middle date N times in the same warm session (``one_date_warm_s``): the floor of a
one-date repair, which the platform runs on its warm shared Spark server. That time (``one_date_total_s``)
is taken out of ``process_s`` and ``wall_s``, which stay the backfill's.

``bench/run.py`` calls :func:`measure_floor` in the same invocation as the platform's scenarios, so the
ratios in ``results.json`` compare figures measured side by side on the same machine state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure_floor(source: Path, dest: Path, dates: list[str], chunk_size: int, layout: str, work: Path,
                  one_date_repeats: int = 0) -> dict:
    """Run this script in a fresh process; its JSON line plus the wall time seen from outside."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, __file__, "--source", str(source), "--dest", str(dest), "--dates", ",".join(dates),
         "--chunk-size", str(chunk_size), "--layout", layout, "--scratch", str(work / "floor-spark"),
         "--one-date-repeats", str(one_date_repeats)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    wall = time.monotonic() - started
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # wall_s is the backfill's: the one-date rewrites after it (timed inside the process) are taken out
    return {**result, "wall_s": round(wall - result.get("one_date_total_s", 0), 2)}


def main(argv: list[str] | None = None) -> int:
    process_started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--dates", required=True, help="comma-separated business dates, in order")
    parser.add_argument("--chunk-size", type=int, required=True)
    parser.add_argument("--layout", choices=["partitioned", "clustered"], default="partitioned")
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--one-date-repeats", type=int, default=0,
                        help="then rewrite one date this many times in the warm session (a repair's floor)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from backfill_platform.assets.tables_schema import POSITION_COLUMNS
    from backfill_platform.resources.spark import local_spark_config, start_spark_session
    from backfill_platform.settings import Settings

    dates = args.dates.split(",")
    spark = start_spark_session(local_spark_config(Settings(data_dir=args.scratch)))
    session_s = time.monotonic() - process_started
    started = time.monotonic()
    columns = ", ".join(f"{name} {kind}" for name, kind in POSITION_COLUMNS.items())
    layout = "PARTITIONED BY (position_date)" if args.layout == "partitioned" else "CLUSTER BY (position_date)"
    spark.sql(f"CREATE TABLE delta.`{args.dest}` ({columns}) USING DELTA {layout}")
    for at in range(0, len(dates), args.chunk_size):
        chunk = dates[at:at + args.chunk_size]
        listed = ", ".join(f"'{day}'" for day in chunk)
        rows = spark.read.format("delta").load(str(args.source)).where(f"position_date IN ({listed})")
        (rows.write.format("delta").mode("overwrite").option("replaceWhere", f"position_date IN ({listed})")
         .save(str(args.dest)))
    write_s = time.monotonic() - started
    rows = spark.read.format("delta").load(str(args.dest)).count()
    one_date = rewrite_one_date(spark, args.source, args.dest, dates[len(dates) // 2], args.one_date_repeats)
    spark.stop()
    print(json.dumps({
        "layout": args.layout, "partitions": len(dates), "chunk_size": args.chunk_size,
        "commits": -(-len(dates) // args.chunk_size), "rows": rows,
        "session_s": round(session_s, 2), "write_s": round(write_s, 2),
        # the backfill's process: the one-date rewrites are not part of it
        "process_s": round(time.monotonic() - process_started - one_date.get("one_date_total_s", 0), 2),
    } | one_date))
    return 0


def rewrite_one_date(spark, source: Path, dest: Path, day: str, repeats: int) -> dict:
    """A repair's floor: read one date of the source and ``replaceWhere`` it into the full table, ``repeats``
    times in the warm session (the platform's repair runs on the warm shared Spark server)."""
    if repeats <= 0:
        return {}
    walls, started_all = [], time.monotonic()
    for _ in range(repeats):
        started = time.monotonic()
        rows = spark.read.format("delta").load(str(source)).where(f"position_date = '{day}'")
        rows.write.format("delta").mode("overwrite").option("replaceWhere", f"position_date = '{day}'").save(str(dest))
        walls.append(round(time.monotonic() - started, 2))
    rows_after = spark.read.format("delta").load(str(dest)).count()  # the rewrites keep every row
    return {"one_date": day, "one_date_warm_s": walls, "one_date_warm_median_s": round(statistics.median(walls), 2),
            "rows_after_one_date": rows_after, "one_date_total_s": round(time.monotonic() - started_all, 2)}


if __name__ == "__main__":
    sys.exit(main())


def chunk_suffix(chunk_size: int) -> str:
    """The key suffix of a floor in other commits than issue 13's 240 dates: ``partitioned_c500``."""
    return f"_c{chunk_size}"


def floor_figures(data_dirs: dict[int, Path], dates: list[str], chunk_size: int, work: Path,
                  layouts: tuple[str, ...] = ("partitioned", "clustered"), suffix: str = "",
                  figures: dict | None = None, one_date_repeats: int = 0) -> dict:
    """The floor for each seeded rows/date option and layout: {"10": {"partitioned": {...}, ...}}; with
    ``suffix`` the figures go under ``layout + suffix`` (another chunking of the same layout)."""
    figures = {} if figures is None else figures
    for rows, data_dir in sorted(data_dirs.items()):
        source = data_dir / "warehouse" / "backfill_demo" / "source_data"
        for layout in layouts:
            dest = work / f"floor-{rows}r-{layout}{suffix}"
            result = measure_floor(source, dest, dates, chunk_size, layout, work, one_date_repeats)
            figures.setdefault(str(rows), {})[layout + suffix] = result
            print(f"  floor {rows} rows/date {layout}{suffix}: {result}", flush=True)
    return figures


def floor_ratios(results: list[dict], floors: dict, chunk_size: int) -> dict:
    """platform wall / floor wall (same dates, rows, chunking, the platform's layout: partitioned), and the
    default chunking over the best one tried, from scenarios measured in the same invocation."""
    def scenario(rows: int, chunk: int | None = None) -> dict | None:
        full = max((r["partitions"] for r in results), default=0)
        found = [r for r in results if r["scenario"] == "chunked" and r["partitions"] == full
                 and r["rows_per_date"] == rows and not r["error"] and (chunk is None or r["chunk_size"] == chunk)]
        return min(found, key=lambda r: r["wall_s"]) if found else None

    def ratio(rows: int, chunk: int = chunk_size, floor_layout: str = "partitioned") -> float | None:
        platform_run, floor_run = scenario(rows, chunk), floors.get(str(rows), {}).get(floor_layout, {})
        if platform_run is None or "wall_s" not in floor_run:
            return None
        return round(platform_run["wall_s"] / floor_run["wall_s"], 2)

    from backfill_platform.settings import Settings

    default_chunk = Settings().max_partitions_per_run
    at_default = "partitioned" + chunk_suffix(default_chunk)  # the floor in the default's commits (run.py)
    default, best = scenario(10, default_chunk), scenario(10)
    clustered = [r for r in results if r["scenario"] == "chunked-clustered" and not r["error"]]
    clustered_floor = floors.get("10", {}).get("clustered", {})
    return {
        "ratio_clustered_over_clustered_floor": round(clustered[0]["wall_s"] / clustered_floor["wall_s"], 2)
        if clustered and "wall_s" in clustered_floor else None,
        "ratio_over_floor_full_range": ratio(10),
        "ratio_over_floor_large": ratio(10_000),
        # the default chunking (one run for the range) against the floor in the same commits
        "ratio_default_over_floor_full_range": ratio(10, default_chunk, at_default),
        "ratio_default_over_floor_large": ratio(10_000, default_chunk, at_default),
        "default_over_best_chunking": round(default["wall_s"] / best["wall_s"], 2) if default and best else None,
        "default_chunk_size": default_chunk,
        "best_chunk_size": best["chunk_size"] if best else None,
    }
