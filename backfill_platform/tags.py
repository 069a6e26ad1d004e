"""Names the platform declares once: asset keys, the job, and every run tag it writes or reads.

Retry lineage and status reports are queries on these tags. Dagster's own tags are used where they
exist and are named here too, so no module spells a tag string itself.
"""

import dagster as dg

# --- assets and jobs ---------------------------------------------------------------------------
DESTINATION = dg.AssetKey("destination_data")
SOURCE = dg.AssetKey("source_data")
CALENDAR = dg.AssetKey("business_calendar")
PREREQUISITES = (SOURCE, CALENDAR)  # what destination_data reads
DESTINATION_JOB = "destination_data_job"

# --- Dagster's own run tags ---------------------------------------------------------------------
PARTITION = "dagster/partition"  # a single-partition run
RANGE_START = "dagster/asset_partition_range_start"  # a range run (a backfill chunk) ...
RANGE_END = "dagster/asset_partition_range_end"  # ... and its last key
BACKFILL = "dagster/backfill"  # id of the backfill that launched the run
PRIORITY = "dagster/priority"  # the run queue's order
RETRY_NUMBER = "dagster/retry_number"  # run retries: 1, 2, ...
PARENT_RUN_ID = "dagster/parent_run_id"  # run retries / re-execution: the run this one retries
ROOT_RUN_ID = "dagster/root_run_id"  # ... and the first run of the chain
WILL_RETRY = "dagster/will_retry"  # "true" on a failed run that run retries will retry
MAX_RUNTIME = "dagster/max_runtime"  # seconds; run monitoring ends (fails) a run that runs longer
DAGSTER_PREFIXES = ("dagster/", ".dagster/")  # Dagster's system and hidden tags

# --- the platform's run tags --------------------------------------------------------------------
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
# Set by `backfill-platform backfill` on every run it submits itself (chunked mode), to follow them.
LAUNCH_ID = f"{PREFIX}/launch_id"
# Set by the Spark resource on a run whose session is on a Spark Connect server (sc://host:port):
# the run's end interrupts what that session still runs (resources/spark_connect.py). Empty: a run
# retry of such a run that runs an embedded JVM (run retries copy their parent's tags).
SPARK_REMOTE = f"{PREFIX}/spark_remote"
# Set with it when that server is the data dir's shared one: the folder of its state, where the process
# that records the run's end finds the server's token (never in a tag: resources/shared_spark.py).
SPARK_SERVER_DIR = f"{PREFIX}/spark_server_dir"


def user_tags(tags) -> dict[str, str]:
    """The tags a user (or a launcher's config) put on a run: neither Dagster's (``dagster/...``,
    ``.dagster/...``: partitions, backfill, retry lineage, which Dagster sets for each run) nor the
    platform's (``backfill_platform/...``: lineage, give-ups, date slots, which their writers set)."""
    return {
        key: value for key, value in tags.items() if not key.startswith((*DAGSTER_PREFIXES, f"{PREFIX}/"))
    }


def partition_range(tags) -> tuple[str, str] | None:
    """The first and last partition key a run covers, from its tags (None: not partitioned)."""
    if tags.get(PARTITION):
        return tags[PARTITION], tags[PARTITION]
    start, end = tags.get(RANGE_START), tags.get(RANGE_END)
    if start and end:
        return start, end
    return None
