"""``backfill-platform restore``: roll destination_data back to an earlier Delta version or timestamp,
the whole table (Delta RESTORE) or only the business dates in [--from, --to] (``restore.py``),
printing what changed and recording it in the Dagster instance of ``DAGSTER_HOME``.

It refuses (exit code 2, nothing changed) while destination_data runs that would overwrite the
restore are queued or running, or a backfill still has to launch some, unless ``--force``. It works
on an embedded Spark and on a Spark Connect server (``BACKFILL_SPARK_REMOTE``): only Delta SQL.

On the Databricks deployment (``BACKFILL_DEPLOYMENT=databricks``) this process has no Spark session
on the workspace: the plan and the commit each run on the configured cluster as a one-off run
(``runs/submit`` of a ``spark_python_task``, with the cluster, libraries and timeout of the step
launcher: ``resources/cluster_task.py``), which calls :func:`~backfill_platform.restore.restore_request`
with the table's Unity Catalog name; the request and the report travel through DBFS under the staging
prefix. The Dagster
side (work in flight, the materializations of the restored dates) stays here, as locally.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backfill_platform.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandContext,
    UsageError,
    add_range_arguments,
    say,
)
from backfill_platform.resources import local_resources
from backfill_platform.resources.cluster_task import ClusterRunFailed, ClusterTask
from backfill_platform.restore import (
    RestoreError,
    RestoreReport,
    WorkInFlight,
    apply_dagster_update,
    commit_restore,
    destination_work_in_flight,
    plan_dagster_update,
    plan_restore,
    report_from_json,
    report_to_json,
)
from backfill_platform.settings import Settings


def add_command(commands) -> None:
    parser = commands.add_parser(
        "restore",
        help="roll destination_data (or only the business dates in [--from, --to]) back to an earlier Delta "
        "version or timestamp",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", type=int, metavar="N", help="Delta version to restore")
    target.add_argument(
        "--timestamp", metavar="T",
        help="restore the version current at T: ISO 8601, e.g. 2025-11-20T14:30:00+01:00; without an offset, UTC",
    )
    add_range_arguments(parser, required=False)
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    parser.add_argument(
        "--force", action="store_true",
        help="restore even while destination_data runs are queued or running (they may overwrite the restore)",
    )
    parser.set_defaults(handler=cmd_restore)


def cmd_restore(context: CommandContext, args: argparse.Namespace) -> int:
    settings = context.settings
    if (args.date_from is None) != (args.date_to is None):
        raise UsageError("give both --from and --to (restore only those business dates), or neither (the whole table)")
    dates = None if args.date_from is None else context.business_days.between(args.date_from, args.date_to)

    instance = context.instance
    in_flight = destination_work_in_flight(instance, context.business_days, dates)
    if in_flight and not (args.force or args.dry_run):
        return refuse("destination_data work in flight would overwrite the restore:", in_flight)

    table = ClusterRestore(settings) if settings.deployment == "databricks" else LocalRestore(settings)
    try:
        report = table.plan(version=args.version, timestamp=args.timestamp, dates=dates)
    except RestoreError as error:
        print(f"backfill-platform: error: {error} Nothing was changed.", file=sys.stderr)
        return EXIT_USAGE
    update = plan_dagster_update(instance, context.business_days.partitions_def, report)
    if update.wipes and dates is not None:
        # rebuilding the partition status forgets which dates every unfinished run is writing
        in_flight = destination_work_in_flight(instance, context.business_days)
        if in_flight and not (args.force or args.dry_run):
            return refuse(
                f"recording {', '.join(update.missing)} as missing rebuilds destination_data's partition status in "
                "Dagster, which would forget this work in flight:",
                in_flight,
            )
    if in_flight and args.dry_run:
        say("Note: a real restore would be refused now (or need --force); work in flight:")
    elif in_flight:
        say("Restoring despite work in flight (--force); it may overwrite the restored dates:")
    for line in in_flight.lines():
        say(line)

    if not args.dry_run:
        try:
            report = table.commit(report)
        except RestoreError as error:
            print(f"backfill-platform: error: {error}", file=sys.stderr)
            return EXIT_FAILED
    for line in report.lines():
        say(line)
    if not args.dry_run:
        apply_dagster_update(instance, update, report)
    for line in update.lines(dry_run=args.dry_run):
        say(line)
    return EXIT_OK


def refuse(reason: str, in_flight: WorkInFlight) -> int:
    print(
        f"backfill-platform: error: {reason}\n" + "\n".join(in_flight.lines())
        + "\nWait for it to finish or cancel it (UI: Runs / Overview > Backfills), or repeat with --force. "
        "Nothing was changed.",
        file=sys.stderr,
    )
    return EXIT_USAGE


class LocalRestore:
    """The restore on this process's Spark session (embedded, or Spark Connect)."""

    def __init__(self, settings: Settings):
        resources = local_resources(settings)
        self.spark, self.destination = resources["pyspark"].spark_session, resources["tables"].destination

    def plan(self, **target: Any) -> RestoreReport:
        return plan_restore(self.spark, self.destination, **target)

    def commit(self, planned: RestoreReport) -> RestoreReport:
        return commit_restore(self.spark, self.destination, planned)


class ClusterRestore:
    """The restore on the Databricks deployment's cluster: each step a one-off Databricks run."""

    def __init__(self, settings: Settings):
        from backfill_platform.resources.databricks import databricks_tables

        self.destination = databricks_tables(settings).destination
        self.task = ClusterTask(settings, "restore", run_name=f"backfill_platform restore {self.destination.name}")

    def plan(self, **target: Any) -> RestoreReport:
        dates = target.pop("dates")
        return self._run({"action": "plan", **target, "dates": None if dates is None else list(dates)})

    def commit(self, planned: RestoreReport) -> RestoreReport:
        return self._run({"action": "commit", "planned": report_to_json(planned)})

    def _run(self, request: dict[str, Any]) -> RestoreReport:
        action = request["action"]
        request = {**request, "table": self.destination.name, "path": self.destination.path}
        try:
            answer = self.task.run(action, request, f"restore {action} of {self.destination.name}")
        except ClusterRunFailed as failure:
            raise RestoreError(
                f"Databricks run {failure.run_id} of the restore's {action} did not succeed: {failure.detail}"
                + ("" if action == "plan" else " Check DESCRIBE HISTORY: the table may have changed.")
            ) from None
        if answer.get("error"):
            raise RestoreError(answer["error"])
        return report_from_json(answer["report"])
