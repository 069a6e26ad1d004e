"""``backfill-platform plan`` and ``status``: read from the Dagster instance in ``DAGSTER_HOME`` (run
storage, event log, asset partition status, backfills); nothing here loops over dates to run them.

Exit codes: 0 ok, 1 failures present (``status``: some business day failed), 2 bad input, 3 nothing
to report (``status`` on an instance without any destination_data run).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path

from backfill_platform.cli.common import (
    EXIT_EMPTY,
    EXIT_FAILED,
    EXIT_OK,
    CommandContext,
    UsageError,
    add_range_arguments,
    positive_int,
    say,
)
from backfill_platform.partitions import InvalidPartitionDateError, parse_iso_date
from backfill_platform.reports.history import FAILED, destination_runs, load_history
from backfill_platform.reports.plan import REPROCESS, Plan, make_plan, read_calendar_changes
from backfill_platform.reports.render import RENDERERS


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reprocess", choices=REPROCESS, default="missing",
        help="which business days to (re)process: missing (default), failed (missing + failed), all",
    )
    parser.add_argument(
        "--chunk-size", type=positive_int, help="business days per run (default: the asset's backfill policy)"
    )
    parser.add_argument("--newest-first", action="store_true", help="launch the newest dates first")
    parser.add_argument(
        "--max-concurrent", type=positive_int, help="at most N runs of this backfill queued or running at once"
    )


def add_commands(commands) -> None:
    plan = commands.add_parser("plan", help="dry run: what a backfill over [--from, --to] would do (launches nothing)")
    add_range_arguments(plan, required=True)
    add_selection_arguments(plan)
    plan.add_argument("--format", choices=("text", "json"), default="text")
    plan.set_defaults(handler=cmd_plan)

    explain = commands.add_parser("explain", help="is DATE a business day and a partition of destination_data, and why")
    explain.add_argument("dates", nargs="+", metavar="YYYY-MM-DD")
    explain.add_argument("--format", choices=("text", "json"), default="text")
    explain.set_defaults(handler=cmd_explain)

    status = commands.add_parser("status", help="coverage, attempts and retry analytics of destination_data")
    add_range_arguments(status, required=False)
    status.add_argument("--format", choices=("table", "json", "csv"), default="table")
    status.add_argument("--png", type=Path, metavar="FILE", help="also draw a calendar heatmap of coverage to FILE")
    status.add_argument("--export-log", action="store_true", help="MERGE the history into the Delta table backfill_log")
    status.set_defaults(handler=cmd_status)


def date_range(context: CommandContext, args) -> tuple[dt.date, dt.date, list[str]]:
    """Validated [from, to] and its business-day keys (errors for bad dates / order / holidays only)."""
    keys = context.business_days.between(args.date_from, args.date_to)
    return dt.date.fromisoformat(args.date_from.strip()), dt.date.fromisoformat(args.date_to.strip()), keys


def _max_concurrent_runs(instance) -> int:
    try:
        return int(instance.run_coordinator.get_run_queue_config().max_concurrent_runs)
    except Exception:
        return 1


def build_plan(context: CommandContext, first: dt.date, last: dt.date, args) -> Plan:
    """What a backfill over [first, last] would do with these options (selection, chunks, order)."""
    settings, instance = context.settings, context.instance
    partitions_def = context.business_days.partitions_def
    history = load_history(
        instance, first, last, business_days=context.business_days, ui_url=settings.ui_url, with_events=False
    )
    concurrency = min(args.max_concurrent or 10**6, _max_concurrent_runs(instance))
    all_keys = partitions_def.get_partition_keys()
    return make_plan(
        history,
        all_keys,
        reprocess=args.reprocess,
        # BACKFILL_MAX_PARTITIONS_PER_RUN=all (single-run policy): one run per consecutive span
        chunk_size=args.chunk_size or settings.max_partitions_per_run or len(all_keys),
        newest_first=args.newest_first,
        past_runs=destination_runs(instance, context.business_days, with_events=False),
        concurrency=concurrency,
    )


def cmd_plan(context: CommandContext, args) -> int:
    first, last, _ = date_range(context, args)
    plan = build_plan(context, first, last, args)
    # plan only (backfill builds plans too): new business days without rows, rows on dates no longer partitions
    changes = read_calendar_changes(context.settings, context.business_days, first, last)
    plan = dataclasses.replace(plan, calendar_changes=changes)
    say(json.dumps(plan.to_dict(), indent=2) if args.format == "json" else plan.render())
    return EXIT_OK


def cmd_explain(context: CommandContext, args) -> int:
    """The current calendar's answer (BACKFILL_HOLIDAY_CALENDAR, BACKFILL_EXTRA_CLOSURES) for each date."""
    business_days, answers = context.business_days, []
    for value in args.dates:
        day = parse_iso_date(value)
        verdict = business_days.calendar.explain(day)
        partition = business_days.partitions_def.has_partition_key(day.isoformat())
        if partition:
            note = "a partition of destination_data"
        elif not verdict.is_business_day:
            note = "not a business day, not a partition of destination_data"
        else:
            try:
                business_days.parse_date(day.isoformat())
                note = "not a partition of destination_data"
            except InvalidPartitionDateError as error:
                note = f"not a partition of destination_data: {error}"
        answers.append((verdict, partition, note))
    if args.format == "json":
        say(json.dumps([
            {"date": v.day.isoformat(), "weekday": f"{v.day:%A}", "business_day": v.is_business_day,
             "partition": partition, "reason": v.reason}
            for v, partition, _ in answers
        ], indent=2))
    else:
        say("\n".join(f"{verdict}: {note}" for verdict, _, note in answers))
    return EXIT_OK


def cmd_status(context: CommandContext, args) -> int:
    if (args.date_from is None) != (args.date_to is None):
        raise UsageError("give both --from and --to, or neither (then the range of all runs is shown)")
    if args.date_from is not None:
        first, last, _ = date_range(context, args)
    instance = context.instance
    runs = destination_runs(instance, context.business_days, with_events=False)
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
        instance, first, last, business_days=context.business_days, ui_url=context.settings.ui_url
    )
    say(RENDERERS[args.format](history).rstrip("\n"))
    if args.png:
        from backfill_platform.reports.heatmap import draw_heatmap  # matplotlib: only when asked

        path = draw_heatmap(history, args.png)
        print(f"heatmap: {path}", file=sys.stderr)
    if args.export_log:
        result = export_history(context, history)
        print(
            f"backfill_log: {result['history_rows']} row(s) merged into {result['table']}; "
            f"the table has {result['table_rows']} row(s)",
            file=sys.stderr,
        )
    return EXIT_FAILED if history.counts()[FAILED] else EXIT_OK


def export_history(context: CommandContext, history) -> dict:
    """The seed's backfill_log (``reports/export_log.py``); a table in an older format is a usage error
    (exit 2) saying what to do. Locally the command's Spark session writes the path table; on the
    Databricks deployment a one-off run on the cluster writes the Unity Catalog table by name."""
    settings = context.settings
    if settings.deployment == "databricks":
        return _export_on_the_cluster(context, history)
    from backfill_platform.reports.export_log import LogFormatError, export_log
    from backfill_platform.resources.spark import local_spark_config, start_spark_session
    from backfill_platform.resources.tables import DeltaTables

    location = DeltaTables.from_settings(settings, mode="path").location(settings.tables.log_table)
    spark = start_spark_session(local_spark_config(settings))
    try:
        result = export_log(spark, location, history, instance=context.instance)
    except LogFormatError as error:
        raise UsageError(str(error)) from None
    return {**result, "table": str(location)}


def _export_on_the_cluster(context: CommandContext, history) -> dict:
    """The rows made here from the Dagster instance, MERGEd by ``export_request`` on the cluster."""
    from backfill_platform.reports.export_log import history_rows, rows_to_json
    from backfill_platform.resources.cluster_task import ClusterRunFailed, ClusterTask
    from backfill_platform.resources.databricks import databricks_tables

    location = databricks_tables(context.settings).location(context.settings.tables.log_table)
    rows = history_rows(history, context.instance)
    task = ClusterTask(context.settings, "export_log", run_name=f"backfill_platform export_log {location.name}")
    try:
        answer = task.run(
            "merge", {"table": location.name, "rows": rows_to_json(rows)},
            f"MERGE of {len(rows)} backfill_log row(s) into {location.name}",
        )
    except ClusterRunFailed as failure:
        raise UsageError(f"{failure} Check DESCRIBE HISTORY {location.name}.") from None
    if answer.get("error"):
        raise UsageError(answer["error"])  # LogFormatError's message: what to do
    return {**answer["counts"], "table": str(location)}
