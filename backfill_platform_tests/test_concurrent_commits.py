"""Concurrent commits to one local Delta table from separate processes (separate JVMs), as local runs
do: every writer's commit must land, as its own version, and no row may be lost.

Delta's log store for local paths keeps two commits from taking the same version only inside one JVM;
``DeltaLocation.save`` adds a cross-process lock (``resources/tables.py``). Eight writer processes
start their Spark sessions, wait at a barrier, then each replaces its own business date at the same
moment.
"""

import subprocess
import sys
import time

import pytest

from backfill_platform.resources.tables import DeltaLocation
from backfill_platform.settings import PROJECT_ROOT

WRITERS = 8
DATES = ["2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05", "2024-07-08", "2024-07-09", "2024-07-10",
         "2024-07-11"]
ROWS = 10

WRITER = r"""
import sys, time
from pathlib import Path
from backfill_platform.resources.spark import local_spark_config, start_spark_session
from backfill_platform.resources.tables import DeltaLocation
from backfill_platform.settings import Settings, SparkSettings

data_dir, table, day, ready, go = sys.argv[1:6]
settings = Settings(data_dir=Path(data_dir), spark=SparkSettings(master="local[1]"))
spark = start_spark_session({**local_spark_config(settings), "spark.driver.memory": "512m"})
frame = spark.range(ROWS).selectExpr(
    f"DATE'{day}' AS position_date", "id", "CAST(id AS DOUBLE) AS value", "'A' AS category"
)
frame.cache().count()
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
writer = frame.write.format("delta").mode("overwrite").option("replaceWhere", f"position_date = '{day}'")
DeltaLocation(name=table, path=table).save(writer)
print("committed", day, flush=True)
""".replace("ROWS", str(ROWS))


@pytest.mark.slow
def test_eight_processes_committing_at_once_each_land_as_one_version(spark, tmp_path):
    table = str(tmp_path / "warehouse" / "destination_data")
    spark.sql(
        f"CREATE TABLE delta.`{table}` (position_date DATE, id BIGINT, value DOUBLE, category STRING) "
        "USING DELTA PARTITIONED BY (position_date)"
    )
    go = tmp_path / "go"
    writers = []
    for index, day in enumerate(DATES[:WRITERS]):
        ready = tmp_path / f"ready-{index}"
        log = open(tmp_path / f"writer-{index}.log", "wb")
        writers.append((day, ready, log, subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / f"writer-{index}"), table, day, str(ready), str(go)],
            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )))
    try:
        deadline = time.monotonic() + 600
        while not all(ready.exists() for _, ready, _, _ in writers):
            assert all(process.poll() is None for *_, process in writers), "a writer died before the barrier"
            assert time.monotonic() < deadline, "the writers' Spark sessions did not start in 600 s"
            time.sleep(0.2)
        go.touch()  # all eight commit now
        codes = [process.wait(timeout=600) for *_, process in writers]
    finally:
        for _, _, log, process in writers:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = {day: (tmp_path / f"writer-{index}.log").read_text()[-2000:] for index, (day, *_) in enumerate(writers)}
    assert codes == [0] * WRITERS, logs

    history = spark.sql(f"DESCRIBE HISTORY delta.`{table}`").select("version", "operation").collect()
    versions = sorted(int(row[0]) for row in history)
    assert versions == list(range(WRITERS + 1))  # CREATE + one version per writer, none lost or shared
    assert sorted(row[1] for row in history if int(row[0]) > 0) == ["WRITE"] * WRITERS
    counts = {str(row[0]): int(row[1]) for row in
              DeltaLocation("t", table).read(spark).groupBy("position_date").count().collect()}
    assert counts == {day: ROWS for day in DATES[:WRITERS]}  # every writer's rows, no row lost
    assert (tmp_path / "warehouse" / ".destination_data.commit.lock").exists()  # the writers took the lock
