"""``backfill-platform plan`` and ``status``, and the steering options of ``backfill``.

Everything is read from the Dagster instance in ``DAGSTER_HOME`` (run storage, event log, asset
partition status, backfills); nothing here loops over dates to run them.

Exit codes (as in cli.py): 0 ok, 1 failures present (``status``: some business day failed), 2 bad
input, 3 nothing to report (``status`` on an instance without any destination_data run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from backfill_platform.reports.plan import REPROCESS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_EMPTY = 0, 1, 2, 3


class UsageError(ValueError):
    """Bad command line input; the message says what to do."""


def _say(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------- parsing


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return value


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f"--tags {item!r}: use KEY=VALUE, e.g. --tags team=risk")
        if key.startswith("dagster/"):
            raise UsageError(f"--tags {item!r}: keys starting with 'dagster/' are Dagster's own; pick another key")
        tags[key] = value
    return tags


def parse_expectations(items: Sequence[str]) -> dict[str, str]:
    from backfill_platform.checks import DESTINATION_EXPECTATIONS, ExpectationConfigError, with_policies

    overrides: dict[str, str] = {}
    for item in items or ():
        name, sep, policy = item.partition("=")
        if not sep:
            raise UsageError(f"--expect {item!r}: use NAME=warn|drop|fail, e.g. --expect value_in_range=fail")
        overrides[name.strip()] = policy.strip()
    try:
        with_policies(DESTINATION_EXPECTATIONS, overrides)
    except ExpectationConfigError as error:
        raise UsageError(f"--expect: {error}") from None
    return overrides


def add_range_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--from", dest="date_from", required=required, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="date_to", required=required, metavar="YYYY-MM-DD")


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reprocess", choices=REPROCESS, default="missing",
        help="which business days to (re)process: missing (default), failed (missing + failed), all",
    )
    parser.add_argument("--chunk-size", type=positive_int, help="business days per run (default: the asset's backfill policy)")
    parser.add_argument("--newest-first", action="store_true", help="launch the newest dates first")
    parser.add_argument("--max-concurrent", type=positive_int, help="at most N runs of this backfill queued or running at once")


def add_backfill_options(parser: argparse.ArgumentParser) -> None:
    """The steering options of ``backfill`` (besides --from/--to/--timeout)."""
    add_selection_arguments(parser)
    parser.add_argument("--tags", action="append", default=[], metavar="KEY=VALUE", help="run tags (repeatable)")
    parser.add_argument("--full-refresh", action="store_true", help="run config full_refresh=true (see DestinationConfig)")
    parser.add_argument("--expect", action="append", default=[], metavar="NAME=POLICY", help="override an expectation's policy: warn, drop or fail")


def add_commands(commands) -> None:
    plan = commands.add_parser("plan", help="dry run: what a backfill over [--from, --to] would do (launches nothing)")
    add_range_arguments(plan, required=True)
    add_selection_arguments(plan)
    plan.add_argument("--format", choices=("text", "json"), default="text")
    plan.set_defaults(handler=cmd_plan)

    status = commands.add_parser("status", help="coverage, attempts and retry analytics of destination_data")
    add_range_arguments(status, required=False)
    status.add_argument("--format", choices=("table", "json", "csv"), default="table")
    status.add_argument("--png", type=Path, metavar="FILE", help="also draw a calendar heatmap of coverage to FILE")
    status.add_argument("--export-log", action="store_true", help="MERGE the history into the Delta table backfill_log")
    status.set_defaults(handler=cmd_status)


# ----------------------------------------------------------------------------------------- context


def _context():
    """(settings, instance, partitions_def, calendar) of this process."""
    import dagster as dg

    from backfill_platform.cli import _dagster_home
    from backfill_platform.partitions import business_calendar_days, business_day_partitions
    from backfill_platform.settings import load_settings

    _dagster_home()
    return load_settings(), dg.DagsterInstance.get(), business_day_partitions, business_calendar_days


def _range(args) -> tuple[dt.date, dt.date, list[str]]:
    """Validated [from, to] and its business-day keys (errors for bad dates / order / holidays only)."""
    from backfill_platform.partitions import business_days_between

    keys = business_days_between(args.date_from, args.date_to)
    return dt.date.fromisoformat(args.date_from.strip()), dt.date.fromisoformat(args.date_to.strip()), keys


def _max_concurrent_runs(instance) -> int:
    try:
        return int(instance.run_coordinator.get_run_queue_config().max_concurrent_runs)
    except Exception:
        return 1


def build_plan(instance, settings, partitions_def, calendar, first, last, args):
    from backfill_platform.reports.history import destination_runs, load_history
    from backfill_platform.reports.plan import make_plan

    history = load_history(
        instance, first, last, partitions_def=partitions_def, calendar=calendar, ui_url=settings.ui_url, with_events=False
    )
    concurrency = min(args.max_concurrent or 10**6, _max_concurrent_runs(instance))
    return make_plan(
        history,
        partitions_def.get_partition_keys(),
        reprocess=args.reprocess,
        # BACKFILL_MAX_PARTITIONS_PER_RUN=all (single-run policy): one run per consecutive span
        chunk_size=args.chunk_size or settings.max_partitions_per_run or len(partitions_def.get_partition_keys()),
        newest_first=args.newest_first,
        past_runs=destination_runs(instance, partitions_def, with_events=False),
        concurrency=concurrency,
    )


# ----------------------------------------------------------------------------------------- commands


def cmd_plan(args) -> int:
    import json

    first, last, _ = _range(args)
    settings, instance, partitions_def, calendar = _context()
    plan = build_plan(instance, settings, partitions_def, calendar, first, last, args)
    _say(json.dumps(plan.to_dict(), indent=2) if args.format == "json" else plan.render())
    return EXIT_OK


def cmd_status(args) -> int:
    from backfill_platform.reports.history import FAILED, destination_runs, load_history
    from backfill_platform.reports.render import RENDERERS

    if (args.date_from is None) != (args.date_to is None):
        raise UsageError("give both --from and --to, or neither (then the range of all runs is shown)")
    if args.date_from is not None:
        first, last, _ = _range(args)
    settings, instance, partitions_def, calendar = _context()
    runs = destination_runs(instance, partitions_def, with_events=False)
    if not runs:
        print(
            "backfill-platform: no destination_data run in this instance yet "
            f"(DAGSTER_HOME={instance.root_directory}); launch one with "
            "`backfill-platform backfill --from YYYY-MM-DD --to YYYY-MM-DD`.",
            file=sys.stderr,
        )
        return EXIT_EMPTY
    if args.date_from is None:
        keys = sorted(key for run in runs for key in run.partition_keys)
        first, last = dt.date.fromisoformat(keys[0]), dt.date.fromisoformat(keys[-1])
    history = load_history(
        instance, first, last, partitions_def=partitions_def, calendar=calendar, ui_url=settings.ui_url
    )
    _say(RENDERERS[args.format](history).rstrip("\n"))
    if args.png:
        from backfill_platform.reports.heatmap import draw_heatmap

        path = draw_heatmap(history, args.png)
        print(f"heatmap: {path}", file=sys.stderr)
    if args.export_log:
        result = export_history(settings, history)
        print(
            f"backfill_log: {result['history_rows']} row(s) merged into {result['table']}; "
            f"the table has {result['table_rows']} row(s)",
            file=sys.stderr,
        )
    return EXIT_FAILED if history.counts()[FAILED] else EXIT_OK


def export_history(settings, history) -> dict:
    from backfill_platform.reports.export_log import export_log
    from backfill_platform.resources.spark import local_spark_config, start_spark_session
    from backfill_platform.resources.tables import DeltaTables

    if settings.deployment != "local":
        raise UsageError("--export-log writes with the local Spark session; on Databricks run it from a notebook or job")
    mode = "path"
    tables = DeltaTables.from_settings(settings, mode=mode)
    location = tables._location(settings.log_table)
    spark = start_spark_session(local_spark_config(settings))
    result = export_log(spark, location, history)
    return {**result, "table": str(location)}


# ----------------------------------------------------------------------------------------- backfill


def backfill_selection(instance, args, first: dt.date, last: dt.date):
    """The plan a ``backfill`` launches (selection by --reprocess, chunks, order)."""
    from backfill_platform.partitions import business_calendar_days, business_day_partitions
    from backfill_platform.settings import load_settings

    return build_plan(instance, load_settings(), business_day_partitions, business_calendar_days, first, last, args)


def backfill_run_config(args) -> dict | None:
    from backfill_platform.assets.destination_config import destination_run_config

    expectations = parse_expectations(args.expect)
    if not args.full_refresh and not expectations:
        return None  # the asset's defaults; no run config at all
    return destination_run_config(full_refresh=args.full_refresh, expectation_policies=expectations)


def wants_chunked_launch(args) -> bool:
    """Per-backfill chunk size, order or concurrency: the CLI submits chunk runs (launch.py)."""
    return bool(args.chunk_size or args.newest_first or args.max_concurrent)


def check_prerequisites(prerequisites, args, run_config) -> None:
    """A chunked launch runs destination_data_job only, and run config names destination_data's op:
    neither can also materialize never-materialized upstream assets."""
    if prerequisites and (wants_chunked_launch(args) or run_config):
        names = ", ".join(key.to_user_string() for key in prerequisites)
        raise UsageError(
            f"{names} never materialized in this instance, and --chunk-size/--newest-first/--max-concurrent "
            "or run config (--full-refresh/--expect) apply to destination_data only. Run "
            "`backfill-platform backfill --from A --to B` once without them (it materializes the upstream "
            "assets too), then repeat this command."
        )


def run_chunked_backfill(instance, plan, args, run_tags, run_config, prerequisites, started) -> int:
    import time

    from dagster._core.storage.dagster_run import DagsterRunStatus

    from backfill_platform import launch

    check_prerequisites(prerequisites, args, run_config)
    _say(
        f"Submitting {len(plan.runs)} run(s) of at most {plan.chunk_size} business day(s) to the run queue"
        + (", newest first" if plan.newest_first else "")
        + (f", at most {args.max_concurrent} at a time" if args.max_concurrent else "")
    )
    launch_id = launch.launch_chunks(
        instance, plan.runs, tags=run_tags, run_config=run_config, newest_first=plan.newest_first,
        max_concurrent=args.max_concurrent, timeout_s=args.timeout,
        on_submit=lambda run, run_id: _say(f"  submitted {run_id} for {run.first}..{run.last} ({len(run.keys)} day(s))"),
    )
    _say(f"Launch {launch_id}: runs tagged backfill_platform/launch_id={launch_id} (filter by it in the UI's Runs page)")
    runs = launch.wait_for_launch(instance, launch_id, timeout_s=args.timeout, on_progress=lambda line: _say("  " + line))
    failed = [run for run in runs if run.status != DagsterRunStatus.SUCCESS]
    _say("")
    _say(f"Launch {launch_id}: {len(runs) - len(failed)}/{len(runs)} run(s) succeeded, wall time {time.monotonic() - started:.1f} s")
    for run in failed:
        _say(f"  FAILED {run.run_id}: {run.tags.get('dagster/asset_partition_range_start')}..{run.tags.get('dagster/asset_partition_range_end')}")
    return EXIT_FAILED if failed else EXIT_OK
