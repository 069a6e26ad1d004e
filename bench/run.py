"""Backfill throughput benchmark: per-date runs vs chunked runs, through a real Dagster instance.

    make bench          # the full benchmark (tens of minutes on a 2-core machine)
    make bench-quick    # a handful of dates: the CI smoke test
    .venv/bin/python bench/run.py [--quick] [--out DIR] [--only SCENARIO ...]

Every scenario gets its own DAGSTER_HOME (the project's dagster.yaml: QueuedRunCoordinator, 2 concurrent
runs), its own destination table, and its own ``dagster-daemon run`` started with the scenario's
environment (``BACKFILL_MAX_PARTITIONS_PER_RUN`` sets the backfill policy's chunk size). The benchmark
stores an asset backfill of ``destination_data`` in the instance exactly like the UI/CLI do, starts the
daemon, and waits until every requested partition is materialized. Nothing calls the asset directly.

Timing: ``wall_s`` runs from storing the backfill (the launch, before the daemon starts, so it includes
the daemon's start and workspace load) to the last ``destination_data`` materialization event. The
backfill daemon marks the backfill COMPLETED on its next 30 s tick; that fixed lag is not counted.

The sources (10 / 1,000 / 10,000 rows per date) are seeded once, before the scenarios, in this process
(not timed). Results: ``<out>/results.json``, ``<out>/results.png`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*is currently in beta.*")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from event_store import measure_event_store  # noqa: E402
from floor import chunk_suffix, floor_figures, floor_ratios  # noqa: E402 (bench/ is the script's directory)
from table_size import measure_plan, measure_table_size_cost  # noqa: E402
from ui_launch import measure_ui_launch_overhead  # noqa: E402
from upstream import materialize  # noqa: E402

from backfill_platform.settings import Settings  # noqa: E402

RANGE_FIRST, RANGE_LAST = "2024-01-01", "2025-11-20"  # the seed's source range: 474 business days
PER_DATE_DATES = 60
FLOOR_CHUNK = {False: 240, True: 3}  # the floor's commits (full, --quick), as issue 13 defines it
# BACKFILL_MAX_PARTITIONS_PER_RUN's default (500): a full run also measures the floor in these commits
DEFAULT_CHUNK = Settings().max_partitions_per_run
EMBEDDED = {"BACKFILL_SPARK_SERVER": "embedded"}


@dataclasses.dataclass
class Scenario:
    scenario: str
    keys: list[str]
    rows_per_date: int
    chunk_size: int
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    # filled in by run_scenario
    result: dict | None = None

    @property
    def slug(self) -> str:
        return f"{self.scenario}-{len(self.keys)}d-{self.rows_per_date}r-c{self.chunk_size}"


def plan(quick: bool) -> list[Scenario]:
    """The scenarios; each runs on the default deployment (the data dir's shared Spark server) unless its
    env says otherwise (``chunked-embedded``: a JVM per run, the default before 2 Dec 2026)."""
    from backfill_platform.partitions import BusinessDays
    from backfill_platform.settings import CalendarSettings

    full = [str(key) for key in BusinessDays.from_settings(CalendarSettings()).between(RANGE_FIRST, RANGE_LAST)]
    if quick:
        few = full[:3]
        return [
            Scenario("chunked", few, 10, 3),
            Scenario("chunked", few, 100, 3),
            Scenario("chunked-embedded", few, 10, 3, EMBEDDED),
            Scenario("per-date", few[:3], 10, 1),
        ]
    first = full[:PER_DATE_DATES]
    # Cheapest first, the long per-date baseline last: results.json is rewritten after every scenario.
    return [
        Scenario("chunked", first, 10, 60),
        Scenario("chunked", first, 10, 30),
        Scenario("chunked", full, 10, 240),
        Scenario("chunked-clustered", full, 10, 240, {"BACKFILL_TABLE_LAYOUT": "clustered"}),
        Scenario("chunked", full, 10, DEFAULT_CHUNK),  # the default: one run for the whole range
        Scenario("chunked-embedded", full, 10, DEFAULT_CHUNK, EMBEDDED),  # the same with a JVM in the run
        Scenario("chunked", full, 10, 60),  # the default before issue 13
        Scenario("chunked", full, 1_000, 240),
        Scenario("chunked", full, 10_000, 240),
        Scenario("chunked", full, 10_000, DEFAULT_CHUNK),
        Scenario("per-date", first, 10, 1),
    ]


# --------------------------------------------------------------------------------------------------
# seeding (not timed)


def seed_sources(work: Path, rows_options: list[int], last_day: str) -> dict[int, Path]:
    """Materialize source_data (+ business_calendar) once per rows/date option, with one Spark."""
    import dagster as dg

    from backfill_platform.assets import build_assets
    from backfill_platform.partitions import BusinessDays
    from backfill_platform.resources import local_resources
    from backfill_platform.resources.spark import local_spark_config, start_spark_session
    from backfill_platform.settings import Settings

    data_dirs: dict[int, Path] = {}
    spark = None
    try:
        for rows in rows_options:
            data_dir = work / f"data-r{rows}"
            settings = Settings(data_dir=data_dir)
            if spark is None:
                spark = start_spark_session(local_spark_config(settings))
            started = time.monotonic()
            calendar, source, _ = build_assets(settings, BusinessDays.from_settings(settings.calendar))
            result = materialize(
                [source, calendar],
                resources=local_resources(settings),
                run_config={
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                    "ops": {
                        "source_data": {
                            "config": {"first_day": RANGE_FIRST, "last_day": last_day, "rows_per_date": rows}
                        }
                    }
                },
                instance=dg.DagsterInstance.ephemeral(),
            )
            assert result.success, f"seeding {rows} rows/date failed"
            print(f"  seeded source ({rows} rows/date, ..{last_day}) in {time.monotonic() - started:.1f} s",
                  flush=True)
            data_dirs[rows] = data_dir
    finally:
        if spark is not None:
            spark.stop()
    return data_dirs


# --------------------------------------------------------------------------------------------------
# one scenario through instance + daemon + run queue


def delta_write_commits(table_path: Path) -> int:
    """Commits of the destination that wrote data (replaceWhere overwrites), from the Delta log."""
    commits = 0
    for entry in sorted((table_path / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action and action["commitInfo"].get("operation") == "WRITE":
                commits += 1
    return commits


def run_profile(instance, runs) -> dict[str, float]:
    """Median seconds per run phase, from each run's Dagster event log."""
    import dagster as dg

    phases: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            phases.setdefault(name, []).append(value)

    for run in runs:
        first: dict[str, float] = {}
        meta: dict = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            first.setdefault(event.event_type_value, entry.timestamp)
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and not meta:
                meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}

        def span(a: str, b: str, first=first) -> float | None:
            return first[b] - first[a] if a in first and b in first else None

        add("queued", span("PIPELINE_ENQUEUED", "PIPELINE_STARTING"))
        add("process_start_imports_defs", span("PIPELINE_STARTING", "PIPELINE_START"))
        add("executor_to_step", span("PIPELINE_START", "STEP_START"))
        add("step_body", span("STEP_START", "ASSET_MATERIALIZATION"))
        add("after_step", span("ASSET_MATERIALIZATION", "PIPELINE_SUCCESS"))
        add("run_total", span("PIPELINE_STARTING", "PIPELINE_SUCCESS"))
        for key in ("spark_session_s", "read_check_s", "write_commit_s"):
            if key in meta:
                add(key.removesuffix("_s"), float(meta[key]))
    return {name: round(statistics.median(values), 2) for name, values in phases.items()}


def run_scenario(scenario: Scenario, work: Path, data_dir: Path, timeout_s: float) -> dict:
    import dagster as dg

    from backfill_platform import backfills, processes

    home = work / "homes" / scenario.slug
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    destination_table = "dest_" + scenario.slug.replace("-", "_")
    env = {
        "BACKFILL_DATA_DIR": str(data_dir),
        "BACKFILL_DESTINATION_TABLE": destination_table,
        "BACKFILL_MAX_PARTITIONS_PER_RUN": str(scenario.chunk_size),
        "PYTHONUNBUFFERED": "1",
        "BACKFILL_SPARK_REMOTE": "",  # empty = unset
        "BACKFILL_SPARK_SERVER": "shared",  # the default deployment, unless the scenario says otherwise
        **scenario.env,
    }
    os.environ.update(env)  # the launch below builds the asset graph from the same settings
    os.environ["DAGSTER_HOME"] = str(home)
    from backfill_platform.definitions import defs  # noqa: PLC0415 (settings read at first import)

    instance = dg.DagsterInstance.from_config(str(home))
    expected = set(scenario.keys)
    daemon = processes.DaemonProcess(home, env=env, log_path=work / "logs" / f"{scenario.slug}-daemon.log")
    launched = time.time()
    backfill_id = backfills.launch_destination_backfill(
        instance, defs, scenario.keys, title=f"bench {scenario.slug}"
    )
    daemon.start()
    error = None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            done = expected <= set(instance.get_materialized_partitions(backfills.DESTINATION))
            runs = backfills.backfill_runs(instance, backfill_id)
            failed = [run for run in runs if run.status == dg.DagsterRunStatus.FAILURE]
            if done:
                # let the runs record their end (RUN_SUCCESS) before the daemon's processes stop;
                # wall_s still ends at the last materialization
                settle = time.monotonic() + 60
                while time.monotonic() < settle and any(
                    not run.is_finished for run in backfills.backfill_runs(instance, backfill_id)
                ):
                    time.sleep(0.5)
                break
            if failed:
                error = f"{len(failed)} run(s) failed, e.g. {failed[0].run_id}"
                break
            if time.monotonic() > deadline:
                error = f"timed out after {timeout_s:.0f} s"
                break
            time.sleep(0.5)
    finally:
        daemon.stop()

    records = instance.fetch_materializations(backfills.DESTINATION, limit=10_000).records
    last_materialization = max((record.timestamp for record in records), default=launched)
    materialized = set(instance.get_materialized_partitions(backfills.DESTINATION)) & expected
    runs = backfills.backfill_runs(instance, backfill_id)
    first_run_created = min((run_record.create_timestamp.timestamp() for run_record in
                             instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))),
                            default=None)
    wall = last_materialization - launched
    table_path = data_dir / "warehouse" / "backfill_demo" / destination_table
    result = {
        "scenario": scenario.scenario,
        "partitions": len(scenario.keys),
        "rows_per_date": scenario.rows_per_date,
        "chunk_size": scenario.chunk_size,
        "runs": len(runs),
        "runs_succeeded": sum(run.status == dg.DagsterRunStatus.SUCCESS for run in runs),
        "wall_s": round(wall, 2),
        "s_per_partition": round(wall / len(scenario.keys), 3),
        "delta_commits": delta_write_commits(table_path) if table_path.exists() else 0,
        "materialized_partitions": len(materialized),
        # differs from s_per_partition only when a scenario was cut short (then error says so)
        "s_per_materialized_partition": round(wall / len(materialized), 3) if materialized else None,
        "first_date": scenario.keys[0],
        "last_date": scenario.keys[-1],
        "launch_to_first_run_s": round(first_run_created - launched, 2) if first_run_created else None,
        "run_phase_medians_s": run_profile(instance, runs),
        "error": error,
    }
    instance.dispose()
    return result


# --------------------------------------------------------------------------------------------------
# definitions load, sensor tick hook, output


SERVER_IDLE_S = 4 * 3600.0  # the benchmark stops its servers at its end; none may stop between scenarios


def start_shared_server(data_dir: Path) -> float:
    """Start ``data_dir``'s shared Spark server with the Spark settings its runs will have, and let go
    of it (it then waits for them, up to ``SERVER_IDLE_S`` between runs: with the default 900 s, the
    servers of the later scenarios stopped before them in the 13:27 run); seconds it took."""
    from backfill_platform.resources.shared_spark import acquire_shared_server, shared_server_dir
    from backfill_platform.resources.spark import local_spark_config

    settings = Settings.from_env({**os.environ, "BACKFILL_DATA_DIR": str(data_dir)})
    started = time.monotonic()
    acquire_shared_server(shared_server_dir(settings), local_spark_config(settings),
                          max(settings.spark.server_idle_seconds, SERVER_IDLE_S)).release()
    return round(time.monotonic() - started, 1)


def measure_definitions_load() -> dict[str, float]:
    python = sys.executable
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    code = (
        "import time; t = time.perf_counter(); from backfill_platform.definitions import defs; "
        "defs.resolve_asset_graph(); print(time.perf_counter() - t)"
    )
    started = time.monotonic()
    out = subprocess.run([python, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    import_s = float(out.stdout.strip().splitlines()[-1])
    import_process_s = time.monotonic() - started
    dagster = Path(python).with_name("dagster")
    started = time.monotonic()
    subprocess.run([str(dagster), "definitions", "validate", "-m", "backfill_platform.definitions"],
                   cwd=REPO, env=env, capture_output=True, text=True, check=True)
    validate_s = time.monotonic() - started
    return {
        "import_defs_s": round(import_s, 2),
        "import_defs_process_s": round(import_process_s, 2),
        "definitions_validate_s": round(validate_s, 2),
    }


def measure_rerun_sensor_tick(work: Path, quick: bool) -> dict:
    """One tick of every sensor named *rerun* on an empty instance (its fixed cost) and, in full
    mode, the worst case: every partition of 2020-2026 failed (bench/rerun_sensor_tick.py, in its
    own process because it sets BACKFILL_START_DATE before the package is imported)."""
    import dagster as dg

    from backfill_platform.definitions import defs

    sensors = [sensor for sensor in (defs.sensors or []) if "rerun" in sensor.name]
    if not sensors:
        return {"available": False, "note": "no sensor named *rerun* in defs (issue 4 not merged yet)"}
    ticks = {}
    (work / "sensor-home").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(work / "sensor-home")) as instance:
        for sensor in sensors:
            started = time.perf_counter()
            sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
            ticks[sensor.name] = round(time.perf_counter() - started, 3)
    worst: dict = {"skipped": "--quick"}
    if not quick:
        completed = subprocess.run(
            [sys.executable, str(REPO / "bench" / "rerun_sensor_tick.py")],
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )
        lines = completed.stdout.strip().splitlines()
        worst = json.loads(lines[-1]) if completed.returncode == 0 and lines else {
            "error": f"bench/rerun_sensor_tick.py exited {completed.returncode}: {completed.stderr[-500:]}"}
        print(f"rerun sensor tick, worst case: {worst}")
    return {"available": True, "tick_s": ticks, "worst_case_all_partitions_failed": worst}


def print_table(results: list[dict]) -> None:
    header = ("scenario", "partitions", "rows_per_date", "chunk_size", "runs", "wall_s", "s_per_partition",
              "delta_commits", "materialized_partitions")
    widths = [max(len(h), 8) for h in header]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for result in results:
        print("  ".join(str(result[h]).rjust(w) for h, w in zip(header, widths, strict=True)))


def plot(results: list[dict], path: Path, floor: dict | None = None) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", flush=True)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    labels = [f"{r['scenario']}\n{r['partitions']}d c{r['chunk_size']} {r['rows_per_date']}r" for r in results]
    left.bar(range(len(results)), [r["wall_s"] for r in results],
             color=["tab:red" if r["scenario"] == "per-date" else "tab:orange" if r["scenario"] == "chunked-embedded"
                    else "tab:blue" for r in results])
    left.set_xticks(range(len(results)), labels, fontsize=7, rotation=45, ha="right")
    left.set_ylabel("wall time, launch to last partition materialized (s)")
    left.set_title("Wall time per scenario")
    full = max(r["partitions"] for r in results)
    by_rows = [r for r in results if r["scenario"] == "chunked" and r["partitions"] == full]
    best: dict[int, dict] = {}
    for r in by_rows:
        if r["rows_per_date"] not in best or r["wall_s"] < best[r["rows_per_date"]]["wall_s"]:
            best[r["rows_per_date"]] = r
    xs = sorted(best)
    right.plot(xs, [best[x]["wall_s"] for x in xs], marker="o", label="backfill_platform (best chunking)")
    floor_lines = (("partitioned", "s--"), ("clustered", "^:"),  # the machine's floor: bare Spark
                   ("partitioned" + chunk_suffix(DEFAULT_CHUNK), "v-."))  # in the default's commits
    for layout, style in floor_lines:
        figures = [(int(rows), by_layout[layout]) for rows, by_layout in (floor or {}).items()
                   if "wall_s" in by_layout.get(layout, {})]
        if figures:
            points = sorted((rows, figure["wall_s"]) for rows, figure in figures)
            first = figures[0][1]
            right.plot(*zip(*points, strict=True), style,
                       label=f"floor: bare Spark, {first['layout']}, commits of {first['chunk_size']} dates")
    right.set_xscale("log")
    right.set_xlabel(f"source rows per date ({full} dates, chunked)")
    right.set_ylabel("wall time (s)")
    right.set_title("Chunked wall time against data size, and the floor")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_summary(args, results: list[dict], definitions_load: dict, sensor: dict | None,
                  total_started: float, floor: dict | None = None, extra: dict | None = None) -> dict:
    def best(predicate) -> dict | None:
        candidates = [r for r in results if predicate(r) and not r["error"]]
        return min(candidates, key=lambda r: r["wall_s"]) if candidates else None

    same_dates = 3 if args.quick else PER_DATE_DATES
    per_date = next((r for r in results if r["scenario"] == "per-date" and not r["error"]), None)
    if per_date:
        same_dates = per_date["partitions"]
    best_chunked = best(lambda r: r["scenario"] == "chunked" and r["partitions"] == same_dates
                        and r["rows_per_date"] == 10)
    full_partitions = max((r["partitions"] for r in results), default=0)
    full_chunked = best(lambda r: r["scenario"] == "chunked" and r["partitions"] == full_partitions
                        and r["rows_per_date"] == 10)
    summary = {
        "mode": "quick" if args.quick else "full",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": sensor is not None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_now": [round(x, 2) for x in os.getloadavg()]},
        "ratio_per_date_over_chunked": round(per_date["wall_s"] / best_chunked["wall_s"], 2)
        if per_date and best_chunked else None,
        "best_chunked_same_dates": {k: best_chunked[k] for k in ("partitions", "chunk_size", "wall_s")}
        if best_chunked else None,
        "full_range_chunked_wall_s": full_chunked["wall_s"] if full_chunked else None,
        "full_range_partitions": full_partitions,
        "definitions_load": definitions_load,
        "rerun_sensor_tick": sensor,
        "floor": floor,
        **(floor_ratios(results, floor, FLOOR_CHUNK[args.quick]) if floor else {}),
        **(extra or {}),
        "benchmark_wall_s": round(time.monotonic() - total_started, 1),
        "scenarios": results,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def repair_over_floor(repair_s: float | None, floor: dict) -> float | None:
    """The one-date repair (queue -> SUCCESS) over bare Spark rewriting one date in a warm session."""
    one_date = floor.get("10", {}).get("partitioned", {}).get("one_date_warm_median_s")
    return round(repair_s / one_date, 2) if repair_s and one_date else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a handful of dates (CI smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "bench", help="where results.json/png go")
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (default <out>/.work)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these scenario names")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per scenario")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop the whole benchmark after this long: the running scenario is cut "
                             "(its partial figures kept and marked) and later ones are skipped")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout) runs the finally blocks that stop the daemon and the Spark servers; in-process
    # runs keep this handler (bench/upstream.py)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = args.work or args.out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "logs").mkdir()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(work))  # replaced per scenario

    total_started = time.monotonic()
    scenarios = plan(args.quick)
    if args.only:
        scenarios = [s for s in scenarios if s.scenario in args.only]
    last_day = max(key for s in scenarios for key in s.keys)
    print(f"Seeding sources for {sorted({s.rows_per_date for s in scenarios})} rows/date (not timed) ...",
          flush=True)
    data_dirs = seed_sources(work, sorted({s.rows_per_date for s in scenarios}), last_day)
    results: list[dict] = []
    try:
        # the shared Spark server of each data dir, as the first run of a day starts it (timed apart)
        extra: dict = {"shared_server_start_s": {rows: start_shared_server(data_dir)
                                                 for rows, data_dir in data_dirs.items()}}
        print(f"  shared Spark servers started in {extra['shared_server_start_s']} s (not in the scenarios)",
              flush=True)
        definitions_load = measure_definitions_load()
        print(f"definitions load: {definitions_load}", flush=True)
        # The machine's floor (bare Spark, bench/floor.py), measured in this invocation beside the scenarios.
        full_dates = max((s.keys for s in scenarios), key=len)
        layouts = ("partitioned",) if args.quick else ("partitioned", "clustered")
        floor = floor_figures({rows: data_dirs[rows] for rows in data_dirs if rows in (10, 10_000)}, full_dates,
                              FLOOR_CHUNK[args.quick], work, layouts, one_date_repeats=2 if args.quick else 5)
        if not args.quick:
            floor_figures({rows: data_dirs[rows] for rows in data_dirs if rows in (10, 10_000)}, full_dates,
                          DEFAULT_CHUNK, work, ("partitioned",), suffix=chunk_suffix(DEFAULT_CHUNK), figures=floor)
        extra["event_store"] = measure_event_store(work)  # ms per asset event: the platform's instance vs Dagster's
        print(f"  event store: {extra['event_store']}", flush=True)
        plan_figures = measure_plan(work)
        extra.update({"plan_2500_dates": plan_figures, "plan_2500_dates_s": plan_figures["median_s"]})
        if not args.quick:
            extra["table_size_cost"] = measure_table_size_cost(work)
            extra["table_size_cost_ratio"] = extra["table_size_cost"]["ratio"]
            extra["ui_launch"] = measure_ui_launch_overhead(work, data_dirs[10], full_dates)
            extra["ui_launch_overhead_s"] = extra["ui_launch"].get("overhead_s")
            extra["repair_one_date_s"] = (extra["ui_launch"].get("repair_one_date") or {}).get("queued_to_success_s")
            extra["repair_over_one_date_floor"] = repair_over_floor(extra["repair_one_date_s"], floor)
            print(f"  ui launch: {extra['ui_launch']}", flush=True)
        for scenario in scenarios:
            timeout = args.timeout
            if args.budget_minutes is not None:
                timeout = min(timeout, total_started + args.budget_minutes * 60 - time.monotonic())
                if timeout < 30:
                    print(f"Skipping {scenario.slug}: the --budget-minutes budget is used up", flush=True)
                    continue
            print(f"Running {scenario.slug} ({len(scenario.keys)} partitions) ...", flush=True)
            result = run_scenario(scenario, work, data_dirs[scenario.rows_per_date], timeout)
            print(f"  -> {result['wall_s']} s wall, {result['runs']} runs, "
                  f"{result['materialized_partitions']}/{result['partitions']} materialized, "
                  f"phases {result['run_phase_medians_s']}" + (f", ERROR {result['error']}" if result["error"] else ""),
                  flush=True)
            results.append(result)
            write_summary(args, results, definitions_load, None, total_started, floor, extra)
    finally:
        from backfill_platform.resources.shared_spark import shared_server_dir, stop_shared_server

        for data_dir in data_dirs.values():
            stop_shared_server(shared_server_dir(Settings(data_dir=data_dir)))

    summary = write_summary(args, results, definitions_load, measure_rerun_sensor_tick(work, args.quick), total_started,
                            floor, extra)
    print()
    print_table(results)
    print()
    for key in ("ratio_per_date_over_chunked", "full_range_chunked_wall_s", "ratio_over_floor_full_range",
                "ratio_over_floor_large", "ratio_default_over_floor_full_range", "ratio_default_over_floor_large",
                "default_over_best_chunking", "plan_2500_dates_s", "table_size_cost_ratio",
                "ui_launch_overhead_s", "repair_one_date_s", "repair_over_one_date_floor", "event_store",
                "definitions_load", "rerun_sensor_tick", "benchmark_wall_s"):
        print(f"{key}: {summary.get(key)}")
    if plot(results, args.out / "results.png", floor):
        print(f"plot: {args.out / 'results.png'}")
    print(f"results: {args.out / 'results.json'}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
