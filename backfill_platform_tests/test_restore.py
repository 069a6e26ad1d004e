"""``backfill-platform restore``: Delta RESTORE of destination_data, with a report of what changed."""

from __future__ import annotations

import datetime as dt

import pytest

from backfill_platform import cli
from backfill_platform.assets.tables_schema import position_struct
from backfill_platform.resources import local_resources


def _write(spark, path, days, rows, mode="overwrite", predicate=None):
    data = [(dt.date.fromisoformat(day), i, float(i), "A") for day in days for i in range(rows)]
    frame = spark.createDataFrame(data, schema=position_struct())
    writer = frame.write.format("delta").mode(mode)
    if predicate:
        writer = writer.option("replaceWhere", predicate)
    writer.partitionBy("position_date").save(path)


@pytest.fixture
def destination(spark, settings, monkeypatch):
    """destination_data with 3 versions: v0 two dates x 3 rows, v1 a third date, v2 date 1 rewritten."""
    monkeypatch.setenv("BACKFILL_DATA_DIR", str(settings.data_dir))
    path = local_resources(settings)["tables"].destination.path
    _write(spark, path, ["2024-03-04", "2024-03-05"], 3)
    _write(spark, path, ["2024-03-06"], 3, mode="append")
    _write(spark, path, ["2024-03-04"], 5, predicate="position_date = '2024-03-04'")
    return path


def test_restore_to_a_version_prints_what_changed(destination, spark, capsys):
    assert cli.main(["restore", "--version", "0", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "Would restore" in dry and spark.read.format("delta").load(destination).count() == 11

    assert cli.main(["restore", "--version", "0"]) == 0
    out = capsys.readouterr().out
    assert "to the content of version 0 (was version 2, now version 3)" in out
    assert "rows before: 11" in out and "rows after:  6" in out
    assert "dates affected: 2" in out
    assert "2024-03-04: 5 -> 3 rows" in out and "2024-03-06: 3 -> 0 rows" in out
    assert "2024-03-05" not in out  # unchanged dates are not listed
    assert spark.read.format("delta").load(destination).count() == 6
    assert "Undo with: backfill-platform restore --version 2" in out


def test_restore_to_a_timestamp_and_bad_targets_change_nothing(destination, spark, capsys):
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, destination).history().select("version", "timestamp").collect()
    v1_time = next(row[1] for row in history if row[0] == 1)
    assert cli.main(["restore", "--timestamp", v1_time.isoformat()]) == 0
    assert "to the content of version 1" in capsys.readouterr().out
    assert spark.read.format("delta").load(destination).count() == 9

    versions_before = DeltaTable.forPath(spark, destination).history().count()
    assert cli.main(["restore", "--version", "99"]) == 2
    error = capsys.readouterr().err
    assert "Version 99 is not in the table's history" in error and "Nothing was changed" in error
    assert cli.main(["restore", "--timestamp", "2001-01-01"]) == 2
    assert "did not exist yet" in capsys.readouterr().err
    assert cli.main(["restore", "--timestamp", "yesterday"]) == 2
    assert "is not a timestamp" in capsys.readouterr().err
    assert DeltaTable.forPath(spark, destination).history().count() == versions_before
    assert spark.read.format("delta").load(destination).count() == 9
