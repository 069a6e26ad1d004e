"""``backfill-platform``: the command line of the project.

- ``backfill`` (backfill.py): the README's main job, a native Dagster backfill of destination_data;
- ``plan`` / ``status`` (reports.py): a dry run of a backfill, and coverage and retry analytics;
- ``restore`` (restore.py): roll the table back with Delta RESTORE;
- ``repair`` (repair.py): re-execute failed runs from failure (a backfill's, or a date range's);
- ``spark-server``: a warm local Spark Connect server that local runs share;
- ``dev`` (dev.py): the Dagster UI with the instance's one daemon (``make dev``).

Exit codes (common.py): 0 ok, 1 some partitions failed, 2 bad input or configuration, 3 nothing to
report.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from backfill_platform.cli import backfill, dev, repair, reports, restore
from backfill_platform.cli.common import EXIT_USAGE, CommandContext, UsageError, say
from backfill_platform.partitions import InvalidPartitionDateError
from backfill_platform.settings import SettingsError


def cmd_spark_server(context: CommandContext, args: argparse.Namespace) -> int:
    from backfill_platform.spark_server import serve  # pyspark: only for this command

    return serve(args.port, settings=context.settings, say=say)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill-platform",
        description="Backfill and repair the business-day partitioned destination_data Delta table.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    backfill.add_command(commands)
    restore.add_command(commands)
    repair.add_command(commands)
    server = commands.add_parser(
        "spark-server",
        help="run a warm local Spark Connect server that local runs share (BACKFILL_SPARK_REMOTE)",
    )
    server.add_argument("--port", type=int, default=15002)
    server.set_defaults(handler=cmd_spark_server)
    reports.add_commands(commands)
    dev.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(CommandContext.load(), args)
    except (InvalidPartitionDateError, SettingsError, UsageError) as error:
        print(f"backfill-platform: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
