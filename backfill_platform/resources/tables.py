"""Where the tables live: Delta paths under the local data directory, or named catalog tables.

The asset code only ever asks this resource for a table and gets back something that can read,
write, and open it as a ``DeltaTable``; whether that is ``delta.`/path``` or
``catalog.schema.table`` is the deployment's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from dagster import ConfigurableResource
from pydantic import field_validator

from backfill_platform.resources.guard import refuse_resource_overrides
from backfill_platform.settings import IDENTIFIER, Settings


@dataclasses.dataclass(frozen=True)
class DeltaLocation:
    """One Delta table, by path (local) or by name (metastore / Unity Catalog)."""

    name: str  # catalog.schema.table, for humans and metadata
    path: str | None  # set in path mode

    def read(self, spark: Any) -> Any:
        if self.path:
            return spark.read.format("delta").load(self.path)
        return spark.table(self.name)

    @property
    def sql_name(self) -> str:
        """How Delta SQL names this table: ``delta.`/path``` or ```catalog`.`schema`.`table```
        (each part a validated identifier, quoted all the same)."""
        if self.path:
            return f"delta.`{self.path}`"
        return ".".join(f"`{part}`" for part in self.name.split("."))

    def exists(self, spark: Any) -> bool:
        if self.path:
            return self.version_if_exists(spark) is not None
        return spark.catalog.tableExists(self.name)

    def version_if_exists(self, spark: Any) -> int | None:
        """The latest Delta version, or None when there is no table (ONE query for a path table).

        SQL rather than DeltaTable.isDeltaTable: it also works on a Spark Connect session
        (BACKFILL_SPARK_REMOTE), where Delta's Python API needs a server plugin."""
        if not self.path:
            return self.latest_version(spark) if spark.catalog.tableExists(self.name) else None
        from pyspark.errors import AnalysisException

        try:
            return self.latest_version(spark)
        except AnalysisException:
            return None

    def delta_table(self, spark: Any) -> Any:
        from delta.tables import DeltaTable

        if self.path:
            return DeltaTable.forPath(spark, self.path)
        return DeltaTable.forName(spark, self.name)

    def save(self, writer: Any) -> None:
        """Finish a ``DataFrameWriter`` (format, mode and options already set) into this table, one
        writer of the table at a time on this machine (:meth:`exclusive_commit`)."""
        if self.path:
            with self.exclusive_commit():
                writer.save(self.path)
        else:
            writer.saveAsTable(self.name)

    @contextlib.contextmanager
    def exclusive_commit(self) -> Iterator[None]:
        """Hold this table's cross-process commit lock (path tables on a local file system).

        Delta's log store for local paths keeps two commits from taking the same version only inside
        one JVM; every local run has its own JVM, so two runs committing at once could lose a commit.
        An ``fcntl`` lock on a file beside the table serializes the writers of the table across the
        processes of this machine; the kernel releases it when a holder dies. Tables by name and
        remote paths (``dbfs:/``, ``s3://``...) rely on their catalog's or object store's commit
        coordination instead."""
        if not self.path or "://" in self.path or self.path.startswith("dbfs:"):
            yield
            return
        table = Path(self.path)
        table.parent.mkdir(parents=True, exist_ok=True)
        with open(table.parent / f".{table.name}.commit.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def last_commit(self, spark: Any) -> Any:
        """The latest row of ``DESCRIBE HISTORY`` (version, operation, operationMetrics, ...)."""
        return spark.sql(f"DESCRIBE HISTORY {self.sql_name} LIMIT 1").first()

    def latest_version(self, spark: Any) -> int:
        return int(self.last_commit(spark)["version"])

    def __str__(self) -> str:
        return f"{self.name} ({self.path})" if self.path else self.name


class DeltaTables(ConfigurableResource):
    """The three tables of the project: source, destination and business calendar."""

    mode: Literal["path", "catalog"] = "path"
    warehouse_dir: str = ""  # path mode: tables are <warehouse_dir>/<schema>/<table>
    catalog: str = "demos"
    schema_name: str = "backfill_demo"
    source_table: str = "source_data"
    destination_table: str = "destination_data"
    calendar_table: str = "calendar"
    seed_demo_source: bool = False  # the local demo writes the source; real deployments never do
    layout: Literal["partitioned", "clustered"] = "partitioned"  # of a destination table created new

    @field_validator("catalog", "schema_name", "source_table", "destination_table", "calendar_table")
    @classmethod
    def _identifier(cls, value: str, info) -> str:
        """Names become folder names (path mode) and SQL identifiers: nothing like ``../x`` or ``a; DROP``."""
        if value == "" and info.field_name == "catalog":
            return value  # no catalog: schema.table
        if not IDENTIFIER.fullmatch(value):
            raise ValueError(f"{info.field_name}={value!r} is not a table identifier (letters, digits, underscores)")
        return value

    def setup_for_execution(self, context) -> None:
        refuse_resource_overrides(context.dagster_run)

    @classmethod
    def from_settings(cls, settings: Settings, mode: Literal["path", "catalog"]) -> DeltaTables:
        return cls(
            mode=mode,
            warehouse_dir=str(Path(settings.data_dir) / "warehouse") if mode == "path" else "",
            catalog=settings.tables.catalog,
            schema_name=settings.tables.schema,
            source_table=settings.tables.source_table,
            destination_table=settings.tables.destination_table,
            calendar_table=settings.tables.calendar_table,
            seed_demo_source=mode == "path",
            layout=settings.tables.table_layout,
        )

    def location(self, table: str) -> DeltaLocation:
        name = ".".join(part for part in (self.catalog, self.schema_name, table) if part)
        if self.mode == "path":
            return DeltaLocation(name, str(Path(self.warehouse_dir) / self.schema_name / table))
        return DeltaLocation(name, None)

    @property
    def source(self) -> DeltaLocation:
        return self.location(self.source_table)

    @property
    def destination(self) -> DeltaLocation:
        return self.location(self.destination_table)

    @property
    def calendar(self) -> DeltaLocation:
        return self.location(self.calendar_table)
