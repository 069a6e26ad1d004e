"""The emulated workspace's Unity Catalog metastore: ``catalog.schema.table`` names on the cluster's Spark.

A catalog is the folder ``<warehouse>/<catalog>`` (``main`` always exists; creating the folder is the
emulator's ``CREATE CATALOG``), a schema ``<warehouse>/<catalog>/<schema>`` (``CREATE SCHEMA`` works)
and a table a managed Delta table in ``<warehouse>/<catalog>/<schema>/<table>``. The file system is the
metastore, so the cluster's driver JVM and every job cluster's see the same tables, as all clusters of
a workspace do.

Spark serves the names through a catalog plugin, ``catalog/UnityCatalog.java`` (a ``TableCatalog`` +
``StagingTableCatalog`` + ``SupportsNamespaces`` that hands every table operation to Delta's session
catalog for the table's path), registered as ``spark.sql.catalog.<catalog>`` for each catalog folder.
It is compiled on first use with the JDK's ``javac`` against the cluster's Spark jars (no Delta class
is needed at compile time) and cached by content under ``~/.cache/databricks_emulator``.

Used by ``driver.py`` (loaded by path: the driver imports no package), and by tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

SOURCE = Path(__file__).with_name("catalog") / "UnityCatalog.java"
PLUGIN_CLASS = "databricks.emulator.UnityCatalog"
DEFAULT_CATALOGS = ("main",)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def spark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "databricks_emulator"


def _javac() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidates = [Path(java_home) / "bin" / "javac"] if java_home else []
    found = shutil.which("javac")
    candidates += [Path(found)] if found else []
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(
        "The emulated Unity Catalog is compiled on first use and needs a JDK 17 (javac): "
        "apt-get install openjdk-17-jdk-headless, or set JAVA_HOME to a JDK."
    )


def plugin_jar(cache_dir: Path | None = None) -> Path:
    """The catalog plugin's jar, built once per source and Spark version (a few seconds)."""
    jars = spark_jars_dir()
    spark_core = sorted(path.name for path in jars.glob("spark-sql_*.jar"))
    key = hashlib.sha256(SOURCE.read_bytes() + "|".join(spark_core).encode()).hexdigest()[:16]
    cache = cache_dir or _cache_dir()
    jar = cache / f"unity-catalog-{key}.jar"
    if jar.is_file():
        return jar
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as build:
        classes = Path(build) / "classes"
        result = subprocess.run(
            [_javac(), "--release", "17", "-nowarn", "-Xlint:-deprecation", "-d", str(classes),
             "-cp", f"{jars}/*", str(SOURCE)],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"Compiling {SOURCE.name} failed:\n{result.stdout}{result.stderr}")
        built = Path(build) / "plugin.jar"
        with zipfile.ZipFile(built, "w") as archive:
            archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n\n")
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        os.replace(built, jar)  # atomic: concurrent first starts each build, one wins
    return jar


def catalogs(warehouse: Path) -> list[str]:
    """The metastore's catalogs: ``main`` and every catalog folder of the warehouse."""
    for name in DEFAULT_CATALOGS:
        (warehouse / name).mkdir(parents=True, exist_ok=True)
    return sorted(p.name for p in warehouse.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))


def catalog_spark_config(warehouse: Path) -> dict[str, str]:
    """``spark.sql.catalog.<name>`` settings of every catalog (runtime settings: a running session
    takes them too, so a catalog created after the cluster started is found by the next run)."""
    config = {}
    for name in catalogs(warehouse):
        config[f"spark.sql.catalog.{name}"] = PLUGIN_CLASS
        config[f"spark.sql.catalog.{name}.root"] = str(warehouse)
    return config


def with_plugin_jar(spark_config: dict[str, str], jar: Path) -> dict[str, str]:
    """``spark_config`` with the plugin jar added to ``spark.jars`` (the driver's class path)."""
    jars = [j for j in spark_config.get("spark.jars", "").split(",") if j]
    return {**spark_config, "spark.jars": ",".join([*jars, str(jar)])}
