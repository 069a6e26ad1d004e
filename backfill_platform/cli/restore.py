"""``backfill-platform restore``: roll destination_data back with Delta RESTORE (``restore.py``),
printing what changed."""

from __future__ import annotations

import argparse
import sys

from backfill_platform.cli.common import EXIT_OK, EXIT_USAGE, CommandContext, say
from backfill_platform.resources import local_resources
from backfill_platform.restore import RestoreError, restore_destination
from backfill_platform.settings import SettingsError


def add_command(commands) -> None:
    parser = commands.add_parser(
        "restore", help="roll destination_data back to an earlier Delta version or timestamp (Delta RESTORE)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, metavar="N", help="Delta version to restore")
    target.add_argument("--timestamp", metavar="T", help="restore the version current at T (e.g. 2025-11-20T14:30:00)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    parser.set_defaults(handler=cmd_restore)


def cmd_restore(context: CommandContext, args: argparse.Namespace) -> int:
    settings = context.settings
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
        say(line)
    return EXIT_OK
