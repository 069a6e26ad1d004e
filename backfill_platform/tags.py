"""Run tags the platform writes and reads (retry lineage and status reports are queries on these).

Dagster's own tags are used where they exist: ``dagster/partition``,
``dagster/asset_partition_range_start`` / ``_end``, ``dagster/backfill``, and for run retries
``dagster/parent_run_id``, ``dagster/root_run_id``, ``dagster/retry_number``.
"""

PREFIX = "backfill_platform"

# Set by the rerun_failed_partitions sensor on every rerun it requests.
RERUN_OF_RUN_ID = f"{PREFIX}/rerun_of_run_id"  # the failed run this rerun repairs
RERUN_ATTEMPT = f"{PREFIX}/rerun_attempt"  # 1, 2, ... sensor-driven attempts for this partition
RERUN_REASON = f"{PREFIX}/rerun_reason"  # short reason (error class / message) of the failure
REQUESTED_BY = f"{PREFIX}/requested_by"  # "rerun_failed_partitions", "schedule", "cli", ...

# Set by the rerun sensor on a failed run it will not rerun (attempt limit reached, or a logic error);
# a status report finds give-ups with RunsFilter(tags={GAVE_UP: "true"}).
GAVE_UP = f"{PREFIX}/rerun_gave_up"
GAVE_UP_REASON = f"{PREFIX}/rerun_gave_up_reason"
GAVE_UP_DATES = f"{PREFIX}/rerun_gave_up_dates"
# Set by the run coordinator (concurrency.py): one tag per business date a run processes.
DATE_SLOT_PREFIX = f"{PREFIX}/date_slot/"
DATE_SLOTS_STATUS = f"{PREFIX}/date_slots"
# Set by `backfill-platform backfill` on every run it submits itself (chunked mode), to follow them.
LAUNCH_ID = f"{PREFIX}/launch_id"
