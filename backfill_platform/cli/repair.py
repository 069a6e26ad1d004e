"""``backfill-platform repair``: re-execute failed runs of destination_data from failure (``repair.py``).

Select the failed runs with ``--backfill ID`` (that Dagster backfill's runs) and/or ``--from A --to B``
(runs whose dates intersect the range); ``--dry-run`` lists what would be re-executed and why others
are skipped. The re-executions go to the run queue; the command keeps a dagster-daemon serving it
(``processes.KeepDaemon``) and waits for them, or returns at once with ``--no-wait``.
Exit codes: 0 ok (also when there is nothing to repair), 1 a re-executed run failed or the wait timed
out, 2 bad input (unknown or still running backfill, bad dates).
"""

from __future__ import annotations

import argparse
import time

import dagster as dg

from backfill_platform import dagster_internals, repair
from backfill_platform.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandContext,
    UsageError,
    add_range_arguments,
    positive_seconds,
    say,
)
from backfill_platform.daemon_lock import daemon_lock_holder
from backfill_platform.processes import KeepDaemon


def add_command(commands) -> None:
    parser = commands.add_parser(
        "repair",
        help="re-execute the failed runs of destination_data from failure (a backfill's, or a date range's)",
    )
    parser.add_argument("--backfill", dest="backfill_id", metavar="ID", help="the failed runs of this Dagster backfill")
    add_range_arguments(parser, required=False)
    parser.add_argument("--dry-run", action="store_true", help="list what would be re-executed; launch nothing")
    parser.add_argument("--no-wait", action="store_true", help="submit the re-executions and return")
    parser.add_argument("--timeout", type=positive_seconds, default=6 * 3600, help="seconds to wait (default 6 h)")
    parser.set_defaults(handler=cmd_repair)


def check_backfill(instance: dg.DagsterInstance, backfill_id: str) -> None:
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        recent = ", ".join(b.backfill_id for b in instance.get_backfills(limit=5)) or "none"
        raise UsageError(
            f"there is no backfill {backfill_id!r} in this instance (most recent: {recent}); "
            "see Overview > Backfills in the UI."
        )
    if backfill.status.value not in dagster_internals.BACKFILL_TERMINAL_STATUSES:
        raise UsageError(
            f"backfill {backfill_id} has not ended ({backfill.status.value}): wait for it to finish, or "
            "cancel it in the UI, then repair it."
        )


def cmd_repair(context: CommandContext, args: argparse.Namespace) -> int:
    if bool(args.date_from) != bool(args.date_to):
        raise UsageError("--from and --to go together, e.g. --from 2024-07-01 --to 2024-07-31.")
    if not args.backfill_id and not args.date_from:
        raise UsageError("say which failed runs to repair: --backfill ID and/or --from A --to B.")
    keys = context.business_days.between(args.date_from, args.date_to) if args.date_from else None
    instance = context.instance
    if args.backfill_id:
        check_backfill(instance, args.backfill_id)
    scope = " and ".join(
        part for part in (
            f"of backfill {args.backfill_id}" if args.backfill_id else "",
            f"with dates in {keys[0]}..{keys[-1]}" if keys else "",
        ) if part
    )
    failed = repair.select_failed_runs(instance, context.business_days, backfill_id=args.backfill_id, keys=keys)
    if not failed:
        say(f"No failed run of destination_data {scope}: nothing to repair.")
        return EXIT_OK
    todo = [item for item in failed if item.skip_reason is None]
    say(
        f"{len(failed)} failed run(s) of destination_data {scope}: {len(todo)} to re-execute from failure, "
        f"{len(failed) - len(todo)} skipped"
    )
    for item in failed:
        if item.skip_reason is None:
            say(f"  re-execute  {item.run_id}  {item.dates}")
        else:
            say(f"  skip        {item.run_id}  {item.dates}: {item.skip_reason}")
    if not todo:
        say("Nothing to re-execute.")
        return EXIT_OK
    if args.dry_run:
        say("Dry run: nothing was launched.")
        return EXIT_OK
    if args.no_wait:
        submit(instance, todo)
        say(
            "Submitted to the run queue"
            + ("" if daemon_lock_holder(context.home) else ": no dagster-daemon is running, start one (make dev)")
            + ". Follow them in the UI (Runs) or with `backfill-platform status`."
        )
        return EXIT_OK
    started = time.monotonic()
    with KeepDaemon(instance, context.home, say):
        new_ids = submit(instance, todo)
        try:
            runs = repair.wait_for_runs(instance, new_ids, timeout_s=args.timeout, on_progress=lambda p: say("  " + p))
        except (KeyboardInterrupt, TimeoutError) as error:
            say(
                f"{'Interrupted' if isinstance(error, KeyboardInterrupt) else error}: the re-executions stay in "
                "the instance. Follow them in the UI (Runs) or with `backfill-platform status`."
            )
            return EXIT_FAILED
    bad = [run for run in runs if run.status != dg.DagsterRunStatus.SUCCESS]
    say(f"Repair: {len(runs) - len(bad)}/{len(runs)} re-executed run(s) succeeded, wall time "
        f"{time.monotonic() - started:.1f} s")
    for run in bad:
        say(f"  {run.status.value} {run.run_id} (re-execution of {run.parent_run_id}): see its error in the UI")
    return EXIT_FAILED if bad else EXIT_OK


def submit(instance: dg.DagsterInstance, todo: list[repair.FailedRun]) -> list[str]:
    return repair.reexecute(
        instance, todo, on_submit=lambda item, new_id: say(f"  re-executed {item.run_id} ({item.dates}) as {new_id}")
    )
