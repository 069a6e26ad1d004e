"""``backfill-platform restore``: Delta RESTORE of destination_data (or of some business dates), with a
report of what changed, commit times compared in UTC, and the Dagster instance kept in step."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform import cli, launch
from backfill_platform.assets.tables_schema import position_struct
from backfill_platform.reports.plan import PlannedRun
from backfill_platform.resources import local_resources
from backfill_platform.settings import PROJECT_ROOT

from .conftest import make_dagster_home, subprocess_env
from .helpers import materialize_destination, rows_per_date, seed_source


def _write(spark, path, days, rows, mode="overwrite", predicate=None):
    data = [(dt.date.fromisoformat(day), i, float(i), "A") for day in days for i in range(rows)]
    frame = spark.createDataFrame(data, schema=position_struct())
    writer = frame.write.format("delta").mode(mode)
    if predicate:
        writer = writer.option("replaceWhere", predicate)
    writer.partitionBy("position_date").save(path)


def _history(spark, path) -> dict[int, tuple[int, str]]:
    """version -> (commit instant in epoch ms, operation), read without any time zone conversion."""
    rows = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").selectExpr(
        "version", "unix_millis(timestamp)", "operation"
    ).collect()
    return {int(row[0]): (int(row[1]), row[2]) for row in rows}


def _counts(spark, path) -> dict[str, int]:
    frame = spark.read.format("delta").load(path)
    return {str(row[0]): int(row[1]) for row in frame.groupBy("position_date").count().collect()}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh DAGSTER_HOME (the project's dagster.yaml) for the in-process CLI."""
    path = make_dagster_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(path))
    return path


@pytest.fixture
def destination(spark, settings, home, monkeypatch):
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
    assert _history(spark, destination)[3][1] == "RESTORE"
    assert "Undo with: backfill-platform restore --version 2" in out


def test_restore_to_a_timestamp_and_bad_targets_change_nothing(destination, spark, capsys):
    v1_millis = _history(spark, destination)[1][0]
    v1_time = dt.datetime.fromtimestamp(v1_millis / 1000, tz=dt.timezone.utc)
    assert cli.main(["restore", "--timestamp", v1_time.isoformat()]) == 0
    out = capsys.readouterr().out
    assert f"Version current at {v1_time.isoformat()}: 1" in out
    assert "to the content of version 1" in out
    assert spark.read.format("delta").load(destination).count() == 9

    versions_before = len(_history(spark, destination))
    assert cli.main(["restore", "--version", "99"]) == 2
    error = capsys.readouterr().err
    assert "Version 99 is not in the table's history" in error and "Nothing was changed" in error
    assert cli.main(["restore", "--timestamp", "2001-01-01"]) == 2
    assert "did not exist yet at 2001-01-01T00:00:00+00:00" in capsys.readouterr().err
    assert cli.main(["restore", "--timestamp", "yesterday"]) == 2
    assert "is not a timestamp" in capsys.readouterr().err
    assert len(_history(spark, destination)) == versions_before
    assert spark.read.format("delta").load(destination).count() == 9


def _set_commit_time(path: str, version: int, instant: dt.datetime) -> None:
    """Delta dates a commit by its log file's modification time: pin it to a known instant."""
    seconds = instant.timestamp()
    os.utime(Path(path, "_delta_log", f"{version:020d}.json"), (seconds, seconds))


def _cli_subprocess(settings, home, *argv, timeout=300, **env) -> subprocess.CompletedProcess:
    """The installed ``backfill-platform`` script in its own process (its own JVM, its own TZ);
    PYTHONPATH makes it import the package of the checkout these tests belong to."""
    script = Path(sys.executable).parent / "backfill-platform"
    environment = subprocess_env(settings, home, PYTHONPATH=str(PROJECT_ROOT), BACKFILL_SPARK_REMOTE="", **env)
    return subprocess.run(
        [str(script), *argv], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


def test_a_timestamp_picks_the_same_version_whatever_the_machine_time_zone(destination, settings, home):
    """v0 committed at 14:00 UTC yesterday, v1 at 15:00, v2 now: 14:30 UTC is version 0 in New York
    (UTC-5/-4: v1 looked like 10:00 there) and in Tokyo (UTC+9: v0 looked like 23:00 there). Yesterday,
    not a fixed date: Delta refuses to time travel further back than its file retention (7 days)."""
    base = dt.datetime.now(dt.timezone.utc).replace(hour=14, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
    _set_commit_time(destination, 0, base)
    _set_commit_time(destination, 1, base + dt.timedelta(hours=1))
    at = (base + dt.timedelta(minutes=30)).isoformat()  # e.g. 2025-11-20T14:30:00+00:00

    new_york = _cli_subprocess(settings, home, "restore", "--timestamp", at, TZ="America/New_York")
    assert new_york.returncode == 0, new_york.stderr[-3000:]
    assert "to the content of version 0 (was version 2, now version 3)" in new_york.stdout
    assert f"Version current at {at}: 0 (committed {base.isoformat(timespec='milliseconds')})" in new_york.stdout

    # the same instant without an offset is UTC too (a dry run: the table stays at version 3)
    tokyo = _cli_subprocess(settings, home, "restore", "--timestamp", at.removesuffix("+00:00"), "--dry-run",
                            TZ="Asia/Tokyo")
    assert tokyo.returncode == 0, tokyo.stderr[-3000:]
    assert f"Version current at {at}: 0" in tokyo.stdout
    assert "Would restore" in tokyo.stdout and "to the content of version 0 (was version 3)" in tokyo.stdout


def test_restore_of_some_dates_puts_back_only_their_rows(destination, spark, capsys):
    at_v0 = sorted(tuple(row) for row in spark.read.format("delta").option("versionAsOf", 0).load(destination)
                   .where("position_date = '2024-03-04'").collect())

    assert cli.main(["restore", "--from", "2024-03-04", "--to", "2024-03-04", "--version", "0"]) == 0
    out = capsys.readouterr().out
    assert "Restored 1 business date(s) 2024-03-04..2024-03-04 of" in out
    assert "to the content of version 0 (was version 2, now version 3)" in out
    assert "2024-03-04: 5 -> 3 rows" in out and "every other date is unchanged" in out
    assert "Undo with: backfill-platform restore --from 2024-03-04 --to 2024-03-04 --version 2" in out
    assert _counts(spark, destination) == {"2024-03-04": 3, "2024-03-05": 3, "2024-03-06": 3}  # 03-06 stays
    assert sorted(tuple(row) for row in spark.read.format("delta").load(destination)
                  .where("position_date = '2024-03-04'").collect()) == at_v0
    history = _history(spark, destination)
    assert len(history) == 4 and history[3][1] == "WRITE"  # one commit

    # a date without rows at the version is emptied; dates outside [from, to] stay
    v0_time = dt.datetime.fromtimestamp(history[0][0] / 1000, tz=dt.timezone.utc).isoformat()
    assert cli.main(["restore", "--from", "2024-03-05", "--to", "2024-03-06", "--timestamp", v0_time]) == 0
    out = capsys.readouterr().out
    assert "2024-03-06: 3 -> 0 rows" in out and "dates affected: 1" in out
    assert _counts(spark, destination) == {"2024-03-04": 3, "2024-03-05": 3}
    assert len(_history(spark, destination)) == 5

    assert cli.main(["restore", "--from", "2024-03-05", "--to", "2024-03-05", "--version", "0"]) == 2
    assert "already have their content of version 0" in capsys.readouterr().err
    assert len(_history(spark, destination)) == 5


def _plan(capsys, first, last) -> dict[str, str]:
    assert cli.main(["plan", "--from", first, "--to", last, "--format", "json"]) == 0
    return {day["date"]: day["action"] for day in json.loads(capsys.readouterr().out)["days"]}


def test_restore_is_refused_while_runs_are_in_flight_and_keeps_dagster_in_step(
    settings, resources, home, spark, monkeypatch, capsys
):
    """Real materializations in the instance of DAGSTER_HOME: v0 create, v1 03-04..05, v2 03-06..07."""
    monkeypatch.setenv("BACKFILL_DATA_DIR", str(settings.data_dir))
    destination = resources["tables"].destination
    with dg.DagsterInstance.get() as instance:
        seed_source(resources, instance, first_day="2024-03-01", last_day="2024-03-08", rows_per_date=4)
        materialize_destination(resources, "2024-03-04", "2024-03-05", instance=instance)
        materialize_destination(resources, "2024-03-06", "2024-03-07", instance=instance)
        assert destination.latest_version(spark) == 2
        launch_id = launch.launch_chunks(instance, [PlannedRun(("2024-03-06",))])  # a queued run, no daemon
        (queued,) = launch.launch_runs(instance, launch_id)
    assert set(_plan(capsys, "2024-03-04", "2024-03-07").values()) <= {
        "skip: materialized (use --reprocess all)", "skip: in flight"
    }

    # the whole table: the queued run of 2024-03-06 would overwrite it
    assert cli.main(["restore", "--version", "1"]) == 2
    error = capsys.readouterr().err
    assert f"run {queued.run_id} (QUEUED, 2024-03-06)" in error
    assert "repeat with --force" in error and "Nothing was changed" in error
    assert destination.latest_version(spark) == 2

    # only 2024-03-04, which no run targets: it would be emptied, so missing again in Dagster, which
    # rebuilds the asset's partition status: that would forget the queued run, so it is refused too
    assert cli.main(["restore", "--from", "2024-03-04", "--to", "2024-03-04", "--version", "0"]) == 2
    error = capsys.readouterr().err
    assert "recording 2024-03-04 as missing rebuilds destination_data's partition status" in error
    assert queued.run_id in error and destination.latest_version(spark) == 2

    with dg.DagsterInstance.get() as instance:
        instance.delete_run(queued.run_id)  # nothing in flight any more
    assert cli.main(["restore", "--from", "2024-03-04", "--to", "2024-03-04", "--version", "0"]) == 0
    out = capsys.readouterr().out
    assert "2024-03-04: 4 -> 0 rows" in out
    assert "missing again (no rows after the restore): 2024-03-04" in out
    assert rows_per_date(spark, destination) == {"2024-03-05": 4, "2024-03-06": 4, "2024-03-07": 4}
    plan = _plan(capsys, "2024-03-04", "2024-03-07")
    assert plan["2024-03-04"] == "materialize"
    assert {plan[day] for day in ("2024-03-05", "2024-03-06", "2024-03-07")} == {
        "skip: materialized (use --reprocess all)"
    }

    # the whole table to version 1: 2024-03-04 comes back (materialized), 03-06..07 go (missing)
    assert cli.main(["restore", "--version", "1"]) == 0
    out = capsys.readouterr().out
    assert rows_per_date(spark, destination) == {"2024-03-04": 4, "2024-03-05": 4}
    assert "missing again (no rows after the restore): 2024-03-06, 2024-03-07" in out
    plan = _plan(capsys, "2024-03-04", "2024-03-07")
    assert plan["2024-03-04"] == plan["2024-03-05"] == "skip: materialized (use --reprocess all)"
    assert plan["2024-03-06"] == plan["2024-03-07"] == "materialize"
    with dg.DagsterInstance.get() as instance:
        event = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("destination_data"), asset_partitions=["2024-03-04"]),
            limit=1,
        ).records[0].event_log_entry.asset_materialization
    assert event.metadata["restored_from_version"].value == 1 and event.metadata["rows"].value == 4
    assert event.metadata["delta_version"].value == destination.latest_version(spark) == 4
