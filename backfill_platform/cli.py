"""``backfill-platform``: the command line of the project.

``backfill-platform backfill --from A --to B`` is the README's main job: it launches a native Dagster
asset backfill of ``destination_data`` over the business days in [A, B] through the instance in
``DAGSTER_HOME`` (the repo's ``dagster_home/`` by default), starts the daemon if none is running,
shows progress until the backfill ends, and prints a summary. Exit codes: 0 all partitions
succeeded, 1 some failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from backfill_platform.settings import PROJECT_ROOT, SettingsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _dagster_home() -> Path:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / "dagster_home")))
    if not (home / "dagster.yaml").exists():
        raise SettingsError(
            f"DAGSTER_HOME={home} has no dagster.yaml; point DAGSTER_HOME at the repo's dagster_home/ "
            "or copy dagster_home/dagster.yaml there."
        )
    return home


def _say(message: str) -> None:
    print(message, flush=True)


def cmd_backfill(args: argparse.Namespace) -> int:
    from backfill_platform.partitions import business_days_between

    keys = business_days_between(args.date_from, args.date_to)
    home = _dagster_home()

    import dagster as dg

    from backfill_platform import backfills, cli_reports
    from backfill_platform.definitions import defs

    tables = defs.resources["tables"]
    instance = dg.DagsterInstance.get()
    # --reprocess / --chunk-size / --newest-first / --max-concurrent / --tags / run config (cli_reports.py)
    run_tags = cli_reports.parse_tags(args.tags)
    run_config = cli_reports.backfill_run_config(args)
    plan = cli_reports.backfill_selection(instance, args, dt.date.fromisoformat(keys[0]), dt.date.fromisoformat(keys[-1]))
    if not plan.selected_keys:
        _say(f"Nothing to backfill with --reprocess {args.reprocess}: see `backfill-platform plan --from {keys[0]} --to {keys[-1]}`.")
        return EXIT_OK
    keys = sorted(plan.selected_keys)
    prerequisites = [
        key for key in backfills.PREREQUISITES if instance.get_latest_materialization_event(key) is None
    ]
    _say(
        f"Backfilling destination_data for {len(keys)} business day(s) {keys[0]}..{keys[-1]} "
        f"(instance: {home})"
    )
    cli_reports.check_prerequisites(prerequisites, args, run_config)
    if prerequisites:
        _say(f"Also materializing {', '.join(k.to_user_string() for k in prerequisites)} first (never materialized here).")

    keeper = backfills.KeepDaemon(instance, home, _say)
    with keeper:
        started = time.monotonic()
        if cli_reports.wants_chunked_launch(args):
            return cli_reports.run_chunked_backfill(instance, plan, args, run_tags, run_config, prerequisites, started)
        backfill_id = backfills.launch_destination_backfill(
            instance, defs, keys, include_prerequisites=prerequisites, title=f"backfill-platform {keys[0]}..{keys[-1]}",
            tags=run_tags, run_config=run_config,
        )
        _say(f"Launched backfill {backfill_id} (open it in the UI: dagster dev, then Overview > Backfills)")
        try:
            progress = backfills.wait_for_backfill(
                instance, backfill_id, timeout_s=args.timeout, on_progress=lambda p: _say("  " + p.line())
            )
        except KeyboardInterrupt:
            _say(
                f"\nInterrupted. Backfill {backfill_id} stays in the instance"
                + (" and resumes when a dagster-daemon runs again." if keeper.daemon else ".")
            )
            return EXIT_FAILED
    wall = time.monotonic() - started
    failed = backfills.failed_partitions(instance, backfill_id)
    _say("")
    _say(f"Backfill {backfill_id}: {progress.status}")
    _say(f"  partitions requested: {progress.requested}")
    _say(f"  partitions succeeded: {progress.succeeded}")
    _say(f"  partitions failed:    {progress.failed}" + (f" ({', '.join(failed)})" if failed else ""))
    _say(f"  rows written:         {backfills.rows_written(instance, backfill_id)}")
    _say(f"  runs:                 {len(backfills.backfill_runs(instance, backfill_id))}")
    _say(f"  wall time:            {wall:.1f} s")
    _say(f"  table:                {tables.destination}")
    if failed or progress.status != "COMPLETED_SUCCESS":
        _say("Some partitions did not land: see the failed runs in the UI (dagster dev) for their errors.")
        return EXIT_FAILED
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Roll destination_data back with Delta RESTORE (restore.py), printing what changed."""
    from backfill_platform.restore import RestoreError, restore_destination
    from backfill_platform.resources import local_resources
    from backfill_platform.settings import load_settings

    settings = load_settings()
    if settings.deployment != "local":
        raise SettingsError(
            "restore runs against the local deployment's tables; on Databricks run "
            "RESTORE TABLE <catalog.schema.destination_data> TO VERSION AS OF <N> in a notebook or SQL editor."
        )
    resources = local_resources(settings)
    spark = resources["pyspark"].spark_session
    try:
        report = restore_destination(
            spark, resources["tables"].destination, version=args.version, timestamp=args.timestamp, dry_run=args.dry_run
        )
    except RestoreError as error:
        print(f"backfill-platform: error: {error} Nothing was changed.", file=sys.stderr)
        return EXIT_USAGE
    for line in report.lines():
        _say(line)
    return EXIT_OK
def cmd_spark_server(args: argparse.Namespace) -> int:
    from backfill_platform.spark_server import serve

    return serve(args.port, say=_say)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill-platform",
        description="Backfill and repair the business-day partitioned destination_data Delta table.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    backfill = commands.add_parser(
        "backfill",
        help="launch a Dagster backfill of destination_data over the business days in [--from, --to]",
    )
    backfill.add_argument("--from", dest="date_from", required=True, metavar="YYYY-MM-DD")
    backfill.add_argument("--to", dest="date_to", required=True, metavar="YYYY-MM-DD")
    backfill.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait (default 6 h)")
    backfill.set_defaults(handler=cmd_backfill)
    restore = commands.add_parser(
        "restore", help="roll destination_data back to an earlier Delta version or timestamp (Delta RESTORE)"
    )
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, metavar="N", help="Delta version to restore")
    target.add_argument("--timestamp", metavar="T", help="restore the version current at T (e.g. 2025-11-20T14:30:00)")
    restore.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    restore.set_defaults(handler=cmd_restore)
    server = commands.add_parser(
        "spark-server",
        help="run a warm local Spark Connect server that local runs share (BACKFILL_SPARK_REMOTE)",
    )
    server.add_argument("--port", type=int, default=15002)
    server.set_defaults(handler=cmd_spark_server)
    from backfill_platform import cli_reports

    cli_reports.add_backfill_options(backfill)
    cli_reports.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    args = build_parser().parse_args(argv)
    from backfill_platform.cli_reports import UsageError
    from backfill_platform.partitions import InvalidPartitionDateError

    try:
        return args.handler(args)
    except (InvalidPartitionDateError, SettingsError, UsageError) as error:
        print(f"backfill-platform: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
