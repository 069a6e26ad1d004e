"""How long one tick of ``rerun_failed_partitions`` takes with ~1,750 partitions (2020-2026).

Usage: ``python bench/rerun_sensor_tick.py [N_SINGLE_FAILED_RUNS]`` (default 100).

A temporary SQLite instance gets real failed runs of ``destination_data``'s partitions: one range run
over ALL business days since 2020-01-01 (so every partition is failed and pending: the worst case
for the sensor) plus N single-date failed runs. The runs are executed in process by a stand-in for
``destination_data`` (same key and partitions, fails at once with a classified transient error,
no Spark), so the event log holds exactly what real failures leave there. Then the sensor is
evaluated several times with its cursor, as the daemon would.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

import dagster as dg  # noqa: E402

from backfill_platform.classification import classified_failures  # noqa: E402
from backfill_platform.definitions import build_defs  # noqa: E402
from backfill_platform.settings import CalendarSettings, Settings  # noqa: E402

defs = build_defs(Settings(calendar=CalendarSettings(start_date=dt.date(2020, 1, 1))))
business_day_partitions = defs.resolve_job_def("destination_data_job").partitions_def


@dg.asset(name="destination_data", partitions_def=business_day_partitions)
def failing_destination(context):
    with classified_failures(context.partition_keys):
        raise ConnectionResetError("benchmark: connection reset by peer")


def main(single_runs: int) -> None:
    keys = business_day_partitions.get_partition_keys()
    print(f"partitions: {len(keys)} ({keys[0]}..{keys[-1]})")
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        started = time.perf_counter()
        dg.materialize(
            [failing_destination], instance=instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        for key in random.Random(1).sample(keys, single_runs):
            dg.materialize([failing_destination], instance=instance, partition_key=key, raise_on_error=False)
        print(f"setup: 1 range run + {single_runs} single-date failed runs in {time.perf_counter() - started:.0f} s")
        sensor = defs.get_sensor_def("rerun_failed_partitions")  # default settings: batch 20, 7 days
        cursor, timings = None, []
        for tick in range(1, 6):
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, repository_def=defs.get_repository_def()
            ) as context:
                t0 = time.perf_counter()
                result = sensor.evaluate_tick(context)
                timings.append(time.perf_counter() - t0)
                cursor = result.cursor
            print(f"tick {tick}: {timings[-1] * 1000:.0f} ms, {len(result.run_requests)} reruns requested, "
                  f"cursor {len(cursor or '') / 1024:.0f} KiB")
        print(f"first tick {timings[0] * 1000:.0f} ms; "
              f"later ticks median {statistics.median(timings[1:]) * 1000:.0f} ms")
        # last line: the figures for bench/run.py
        print(json.dumps({
            "partitions": len(keys), "failed_runs": 1 + single_runs,
            "first_tick_s": round(timings[0], 3), "later_ticks_median_s": round(statistics.median(timings[1:]), 3),
        }))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
