"""``backfill-platform dev`` (``make dev``): the Dagster UI on 127.0.0.1, with the instance's one daemon.

Unlike ``dagster dev``, which always starts its own daemon, it uses the daemon that already serves
the instance (a CLI's, say) and starts one only when none holds the instance's daemon lock, or when
that one stops (``processes.KeepDaemon``). Ctrl-C stops the webserver and the daemon this command
started, never the runs in flight.
"""

from __future__ import annotations

import argparse
import subprocess

from backfill_platform.cli.common import EXIT_OK, CommandContext, say
from backfill_platform.daemon_lock import daemon_lock_holder
from backfill_platform.processes import WORKSPACE_YAML, KeepDaemon, dagster_command
from backfill_platform.settings import PROJECT_ROOT


def add_command(commands) -> None:
    parser = commands.add_parser(
        "dev", help="the Dagster UI on 127.0.0.1 plus the instance's one dagster-daemon (make dev)"
    )
    parser.add_argument("--port", type=int, default=3000)
    parser.set_defaults(handler=cmd_dev)


def cmd_dev(context: CommandContext, args: argparse.Namespace) -> int:
    keeper = KeepDaemon(context.instance, context.home, say, check_every_s=5, purpose="the UI")
    with keeper:
        if keeper.daemon is None:
            say(
                f"A dagster-daemon (pid {daemon_lock_holder(context.home)}) already serves this instance: the UI "
                "uses it, and this command starts one if it stops."
            )
        webserver = subprocess.Popen(
            [dagster_command("dagster-webserver"), "-w", str(WORKSPACE_YAML), "-h", "127.0.0.1", "-p", str(args.port)],
            cwd=PROJECT_ROOT,
        )
        say(f"Dagster UI: http://127.0.0.1:{args.port} (Ctrl-C stops it, and the daemon this command started)")
        try:
            webserver.wait()
        except KeyboardInterrupt:
            webserver.terminate()
            try:
                webserver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                webserver.kill()
                webserver.wait()
    return EXIT_OK
