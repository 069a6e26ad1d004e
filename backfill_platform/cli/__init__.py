"""``backfill-platform``: the command line of the project.

- ``backfill`` (backfill.py): the README's main job, a native Dagster backfill of destination_data;
- ``plan`` / ``status`` (reports.py): a dry run of a backfill, and coverage and retry analytics;
- ``restore`` (restore.py): roll the table back with Delta RESTORE;
- ``repair`` (repair.py): re-execute failed runs from failure (a backfill's, or a date range's);
- ``spark-server``: a warm local Spark Connect server in the foreground, or ``--status`` / ``--stop`` of
  the shared one local runs start (``resources/shared_spark.py``);
- ``dev`` (dev.py): the Dagster UI with the instance's one daemon (``make dev``).

Exit codes (common.py): 0 ok, 1 some partitions failed, 2 bad input or configuration, 3 nothing to
report.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

from backfill_platform.cli import backfill, dev, repair, reports, restore
from backfill_platform.cli.common import EXIT_USAGE, CommandContext, UsageError, say
from backfill_platform.partitions import InvalidPartitionDateError
from backfill_platform.settings import SettingsError


def cmd_spark_server(context: CommandContext, args: argparse.Namespace) -> int:
    from backfill_platform.resources import shared_spark

    state_dir = shared_spark.shared_server_dir(context.settings)
    if args.stop:
        stopped = shared_spark.stop_shared_server(state_dir)
        say(f"Stopped the shared Spark server of {state_dir}." if stopped
            else f"No shared Spark server runs for {state_dir}.")
        return 0
    if args.status:
        state = shared_spark.shared_server_state(state_dir)
        if state is None:
            say(f"No shared Spark server runs for {state_dir}; the next local run starts one.")
        else:
            say(f"The shared Spark server runs on {shared_spark.server_url(state)} (process group {state['pgid']}, "
                f"up {time.time() - state['started_at']:.0f} s; stops after {state['idle_s']:.0f} s with no run; "
                f"log {state_dir / 'server.log'}).")
        return 0
    from backfill_platform.spark_server import serve  # pyspark: only to run a server

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
        help="run a warm local Spark Connect server in the foreground (BACKFILL_SPARK_REMOTE), or show "
             "or stop the shared one that local runs start on their own (BACKFILL_SPARK_SERVER=shared)",
    )
    server.add_argument("--port", type=int, default=15002)
    action = server.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="show the shared server of BACKFILL_DATA_DIR")
    action.add_argument("--stop", action="store_true", help="stop it (runs attached to it fail)")
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
