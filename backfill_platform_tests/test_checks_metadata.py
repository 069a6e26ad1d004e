"""The after-write checks cost the same on a small and on a large table: what they need about the whole
table (which dates are present, whether a NULL date exists) comes from Delta's file list, not the data.
``bench/table_size.py`` measures the cost ratio; these tests show the mechanism and its fallback."""

from __future__ import annotations

import datetime as dt

from backfill_platform import checks

DAYS = [dt.date(2024, 7, 1), dt.date(2024, 7, 2), dt.date(2024, 7, 5)]


def _write(spark, path, rows, partitioned: bool) -> None:
    frame = spark.createDataFrame(rows, "position_date date, id long")
    writer = frame.write.format("delta").mode("overwrite")
    (writer.partitionBy("position_date") if partitioned else writer).save(str(path))


def test_present_dates_of_a_date_partitioned_table_read_no_data_file(spark, tmp_path):
    table = tmp_path / "partitioned"
    _write(spark, table, [(day, i) for day in DAYS for i in range(3)] + [(None, 9)], partitioned=True)
    # Wreck every data file: any check that read data now fails; the file list is in the Delta log.
    for parquet in table.rglob("*.parquet"):
        parquet.write_bytes(b"not parquet")
    frame = spark.read.format("delta").load(str(table))
    assert checks.present_dates(frame) == ({"2024-07-01", "2024-07-02", "2024-07-05"}, True)


def test_present_dates_of_other_layouts_and_plain_frames_scan_the_column(spark, tmp_path):
    table = tmp_path / "flat"
    _write(spark, table, [(day, 1) for day in DAYS], partitioned=False)
    frame = spark.read.format("delta").load(str(table))
    assert checks.present_dates(frame) == ({"2024-07-01", "2024-07-02", "2024-07-05"}, False)
    crafted = spark.createDataFrame([(DAYS[0], 1), (None, 2)], "position_date date, id long")
    assert checks.present_dates(crafted) == ({"2024-07-01"}, True)
