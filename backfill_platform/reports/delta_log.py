"""Reading a local path Delta table without Spark, for ``backfill-platform plan``'s calendar changes.

A JVM start costs seconds and ``plan`` must stay fast, so this reads the live files of a table's
snapshot from its last checkpoint and the JSON commits after it (the Delta protocol's own log replay,
read-only). It is a shortcut, never the authority: every function returns None when the log uses
something this reader does not follow (column mapping, v2 or missing checkpoints, an unknown reader
feature, a gap in the commits), and the caller then asks Spark (one query). It never writes.
``test_calendar_change.py::test_delta_log_dates_agree_with_spark_across_a_checkpoint`` compares it
with Spark across a checkpoint and a DELETE.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

_KNOWN_READER_FEATURES = {"deletionVectors", "timestampNtz", "vacuumProtocolCheck", "typeWidening", "variantType"}


def delta_live_files(path: str | Path) -> list[dict] | None:
    log = Path(path) / "_delta_log"
    if not log.is_dir():
        return []
    files: dict[str, dict] = {}
    version = -1
    actions: list[dict] = []
    last_checkpoint = log / "_last_checkpoint"
    if last_checkpoint.exists():
        info = json.loads(last_checkpoint.read_text())
        version, parts = int(info["version"]), info.get("parts")
        names = (
            [f"{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet" for i in range(1, parts + 1)]
            if parts else [f"{version:020d}.checkpoint.parquet"]
        )
        if info.get("v2Checkpoint") or not all((log / name).exists() for name in names):
            return None
        import pyarrow.parquet  # only for a checkpoint (0.17 s): plan imports this module on every call

        for name in names:
            table = pyarrow.parquet.read_table(log / name)
            for column in ("add", "metaData", "protocol"):
                if column in table.column_names:
                    actions += [{column: value} for value in table.column(column).to_pylist() if value]
    commits = sorted(int(p.stem) for p in log.glob("*.json") if p.stem.isdigit() and int(p.stem) > version)
    if commits != list(range(version + 1, version + 1 + len(commits))) or (version < 0 and not commits):
        return None
    for number in commits:
        text = (log / f"{number:020d}.json").read_text()
        actions += [json.loads(line) for line in text.splitlines() if line.strip()]
    for action in actions:
        if "protocol" in action and set(action["protocol"].get("readerFeatures") or ()) - _KNOWN_READER_FEATURES:
            return None
        if "metaData" in action:
            configuration = dict(action["metaData"].get("configuration") or {})
            if configuration.get("delta.columnMapping.mode", "none") != "none":
                return None
        if "add" in action:
            files[action["add"]["path"]] = action["add"]
        elif "remove" in action:
            files.pop(action["remove"]["path"], None)
    return list(files.values())


def delta_partition_dates(path: str | Path, column: str = "position_date") -> set[str] | None:
    """The values of a date partition column with at least one row, from the Delta log alone."""
    files = delta_live_files(path)
    if files is None:
        return None
    dates = set()
    for add in files:
        stats = json.loads(add.get("stats") or "{}")
        value = dict(add.get("partitionValues") or {}).get(column)
        if value and stats.get("numRecords", 1) > 0:
            dates.add(value)
    return dates


def delta_stored_calendar(path: str | Path) -> dict[str, tuple[str, str]] | None:
    """date -> (us_business_or_holiday_flag, day_reason) of a calendar table's parquet files ({} when the
    table does not exist, None when it cannot be read without Spark)."""
    files = delta_live_files(path)
    if files is None or any(add.get("deletionVector") for add in files):
        return None
    if not files:
        return {}
    import pyarrow.parquet

    columns = ["calendar_date", "us_business_or_holiday_flag", "day_reason"]
    paths = [add["path"] for add in files]
    if any("://" in name or name.startswith("/") for name in paths):
        return None
    stored: dict[str, tuple[str, str]] = {}
    for name in paths:
        table = pyarrow.parquet.read_table(Path(path) / unquote(name), columns=columns).to_pydict()
        for day, flag, reason in zip(*(table[c] for c in columns), strict=True):
            stored[day.isoformat()] = (flag, reason)
    return stored


