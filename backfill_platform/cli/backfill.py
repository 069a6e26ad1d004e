"""``backfill-platform backfill --from A --to B``: the README's main job.

It launches a native Dagster asset backfill of ``destination_data`` over the business days in [A, B]
through the instance in ``DAGSTER_HOME`` (the repo's ``dagster_home/`` by default), keeps a daemon
serving it (``processes.KeepDaemon``), shows progress until the backfill ends and prints a summary.
With ``--chunk-size``, ``--newest-first`` or ``--max-concurrent`` it submits one run per chunk
itself instead (``launch.py``). Exit codes: 0 all partitions succeeded, 1 some failed, 2 bad input or
configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence

import dagster as dg

from backfill_platform import backfills, launch, tags
from backfill_platform.assets.destination_config import destination_run_config
from backfill_platform.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandContext,
    UsageError,
    add_range_arguments,
    positive_seconds,
    say,
)
from backfill_platform.cli.reports import add_selection_arguments, build_plan
from backfill_platform.expectations import DESTINATION_EXPECTATIONS, ExpectationConfigError, with_policies
from backfill_platform.jobs import run_timeout_tags
from backfill_platform.processes import KeepDaemon


def add_command(commands) -> None:
    parser = commands.add_parser(
        "backfill",
        help="launch a Dagster backfill of destination_data over the business days in [--from, --to]",
    )
    add_range_arguments(parser, required=True)
    parser.add_argument("--timeout", type=positive_seconds, default=6 * 3600, help="seconds to wait (default 6 h)")
    add_selection_arguments(parser)
    parser.add_argument("--tags", action="append", default=[], metavar="KEY=VALUE", help="run tags (repeatable)")
    parser.add_argument(
        "--full-refresh", action="store_true", help="run config full_refresh=true (see DestinationConfig)"
    )
    parser.add_argument(
        "--expect", action="append", default=[], metavar="NAME=POLICY",
        help="override an expectation's policy: warn, drop or fail",
    )
    parser.set_defaults(handler=cmd_backfill)


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f"--tags {item!r}: use KEY=VALUE, e.g. --tags team=risk")
        if key.startswith("dagster/"):
            raise UsageError(f"--tags {item!r}: keys starting with 'dagster/' are Dagster's own; pick another key")
        if key.startswith(f"{tags.PREFIX}/"):
            raise UsageError(
                f"--tags {item!r}: keys starting with '{tags.PREFIX}/' are the platform's own (rerun lineage, "
                "give-ups, date slots); pick another key"
            )
        parsed[key] = value
    return parsed


def parse_expectations(items: Sequence[str]) -> dict[str, str]:
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


def backfill_run_config(args) -> dict | None:
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


def cmd_backfill(context: CommandContext, args: argparse.Namespace) -> int:
    keys = context.business_days.between(args.date_from, args.date_to)
    run_tags = parse_tags(args.tags)  # all input is checked before the instance is opened
    run_config = backfill_run_config(args)
    home, instance = context.home, context.instance
    plan = build_plan(context, dt.date.fromisoformat(keys[0]), dt.date.fromisoformat(keys[-1]), args)
    if not plan.selected_keys:
        say(
            f"Nothing to backfill with --reprocess {args.reprocess}: "
            f"see `backfill-platform plan --from {keys[0]} --to {keys[-1]}`."
        )
        return EXIT_OK
    keys = sorted(plan.selected_keys)
    prerequisites = [key for key in tags.PREREQUISITES if instance.get_latest_materialization_event(key) is None]
    say(
        f"Backfilling destination_data for {len(keys)} business day(s) {keys[0]}..{keys[-1]} "
        f"(instance: {home})"
    )
    check_prerequisites(prerequisites, args, run_config)
    if prerequisites:
        say(
            f"Also materializing {', '.join(k.to_user_string() for k in prerequisites)} first "
            "(never materialized here)."
        )

    keeper = KeepDaemon(instance, home, say)
    with keeper:
        started = time.monotonic()
        if wants_chunked_launch(args):
            return run_chunked_backfill(instance, plan, args, run_tags, run_config, started)
        backfill_id = backfills.launch_destination_backfill(
            instance, context.defs, keys, include_prerequisites=prerequisites,
            title=f"backfill-platform {keys[0]}..{keys[-1]}", run_config=run_config,
            tags={**run_timeout_tags(context.settings.retries), **run_tags},  # the job's own tags, too
        )
        say(f"Launched backfill {backfill_id} (open it in the UI: make dev, then Overview > Backfills)")
        try:
            progress = backfills.wait_for_backfill(
                instance, backfill_id, timeout_s=args.timeout, on_progress=lambda p: say("  " + p.line())
            )
        except (KeyboardInterrupt, TimeoutError) as stop:
            say(
                f"\n{stopped(stop)} Backfill {backfill_id} stays in the instance and "
                + ("resumes when a dagster-daemon runs again." if keeper.daemon else "goes on with the running daemon.")
            )
            return EXIT_FAILED
    wall = time.monotonic() - started
    failed = backfills.failed_partitions(instance, backfill_id)
    say("")
    say(f"Backfill {backfill_id}: {progress.status}")
    say(f"  partitions requested: {progress.requested}")
    say(f"  partitions succeeded: {progress.succeeded}")
    say(f"  partitions failed:    {progress.failed}" + (f" ({', '.join(failed)})" if failed else ""))
    say(f"  rows written:         {backfills.rows_written(instance, backfill_id)}")
    say(f"  runs:                 {len(backfills.backfill_runs(instance, backfill_id))}")
    say(f"  wall time:            {wall:.1f} s")
    say(f"  table:                {context.defs.resources['tables'].destination}")
    say_shared_spark_server(context.settings)
    if failed or progress.status != "COMPLETED_SUCCESS":
        say("Some partitions did not land: see the failed runs in the UI (make dev) for their errors.")
        return EXIT_FAILED
    return EXIT_OK


def say_shared_spark_server(settings) -> None:
    """Where the runs' Spark is, when it outlives them (BACKFILL_SPARK_SERVER=shared)."""
    if settings.deployment != "local" or settings.spark.server != "shared" or settings.spark.remote:
        return
    from backfill_platform.resources.shared_spark import server_url, shared_server_dir, shared_server_state

    if state := shared_server_state(shared_server_dir(settings)):
        say(f"  spark:                shared server {server_url(state)}, stays up "
            f"{state['idle_s'] / 60:.0f} min after its last run (`backfill-platform spark-server --stop`)")


def run_chunked_backfill(instance, plan, args, run_tags, run_config, started) -> int:
    say(
        f"Submitting {len(plan.runs)} run(s) of at most {plan.chunk_size} business day(s) to the run queue"
        + (", newest first" if plan.newest_first else "")
        + (f", at most {args.max_concurrent} at a time" if args.max_concurrent else "")
    )
    submitted: list[str] = []

    def on_submit(run, run_id: str) -> None:
        submitted.append(run_id)
        say(f"  submitted {run_id} for {run.first}..{run.last} ({len(run.keys)} day(s))")

    try:
        launch_id = launch.launch_chunks(
            instance, plan.runs, base_tags=run_tags, run_config=run_config, newest_first=plan.newest_first,
            max_concurrent=args.max_concurrent, timeout_s=args.timeout, on_submit=on_submit,
        )
        say(f"Launch {launch_id}: runs tagged {tags.LAUNCH_ID}={launch_id} (filter by it in the UI's Runs page)")
        runs = launch.wait_for_launch(
            instance, launch_id, timeout_s=args.timeout, on_progress=lambda line: say("  " + line)
        )
    except (KeyboardInterrupt, TimeoutError) as stop:
        unsent = len(plan.runs) - len(submitted)
        say(
            f"\n{stopped(stop)} The {len(submitted)} run(s) submitted stay in the instance"
            + (
                f"; {unsent} chunk(s) were never submitted: repeat this command to submit them "
                "(--reprocess missing skips the dates that landed or are in flight)."
                if unsent else "."
            )
        )
        return EXIT_FAILED
    failed = [run for run in runs if run.status != dg.DagsterRunStatus.SUCCESS]
    say("")
    say(
        f"Launch {launch_id}: {len(runs) - len(failed)}/{len(runs)} run(s) succeeded, "
        f"wall time {time.monotonic() - started:.1f} s"
    )
    for run in failed:
        say(f"  FAILED {run.run_id}: {run.tags.get(tags.RANGE_START)}..{run.tags.get(tags.RANGE_END)}")
    return EXIT_FAILED if failed else EXIT_OK


def stopped(stop: BaseException) -> str:
    """How the wait ended early: Ctrl-C or --timeout (the error says after how long)."""
    return "Interrupted." if isinstance(stop, KeyboardInterrupt) else f"Stopped waiting: {stop}."
