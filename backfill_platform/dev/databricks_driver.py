"""The driver of the emulated Databricks cluster: ``python databricks_driver.py FILE [PARAMS...]``.

Started by ``databricks_emulator.py`` for each ``spark_python_task``. Like the Databricks runtime it
starts the cluster's Spark session (local Spark + Delta here), defines the ``spark``, ``sc`` and
``dbutils`` globals and runs FILE as ``__main__`` with PARAMS as ``sys.argv[1:]`` (the emulator has
already mapped ``/dbfs/...`` parameters to its storage). It deliberately imports nothing from
``backfill_platform``: the step gets the project's code from the launcher's zip, as on a real cluster.
"""

import json
import os
import runpy
import shutil
import sys
from pathlib import Path

DBFS_ROOT = Path(os.environ["EMULATOR_DBFS_ROOT"])
SECRETS_DIR = Path(os.environ.get("EMULATOR_SECRETS_DIR", "/nonexistent"))


def _local(path: str) -> Path:
    if path.startswith("dbfs:"):
        path = path[len("dbfs:"):]
    if path.startswith("/dbfs/"):
        path = path[len("/dbfs"):]
    if not path.startswith("/") or ".." in Path(path).parts:
        raise ValueError(f"not an absolute DBFS path: {path}")
    return DBFS_ROOT / path.lstrip("/")


class _FileInfo(tuple):
    def __new__(cls, path, name, size):
        self = super().__new__(cls, (path, name, size))
        self.path, self.name, self.size = path, name, size
        return self


class _Fs:
    """The part of ``dbutils.fs`` a step needs, on the emulator's DBFS storage."""

    def ls(self, path):
        local = _local(path)
        children = [local] if local.is_file() else sorted(local.iterdir())
        return [
            _FileInfo(f"dbfs:/{c.relative_to(DBFS_ROOT)}" + ("/" if c.is_dir() else ""), c.name, c.stat().st_size)
            for c in children
        ]

    def mkdirs(self, path):
        _local(path).mkdir(parents=True, exist_ok=True)
        return True

    def put(self, path, contents, overwrite=False):
        local = _local(path)
        if local.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (overwrite=False)")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(contents)
        return True

    def head(self, path, max_bytes=65536):
        return _local(path).read_bytes()[:max_bytes].decode(errors="replace")

    def rm(self, path, recurse=False):
        local = _local(path)
        if local.is_dir():
            if not recurse and any(local.iterdir()):
                raise OSError(f"{path} is a non-empty directory (recurse=False)")
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        return True

    def cp(self, source, target, recurse=False):
        src, dst = _local(source), _local(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        return True


class _Secrets:
    """``dbutils.secrets.get``: secrets the emulator stores as ``<secrets>/<scope>/<key>`` files."""

    def get(self, scope, key):
        path = SECRETS_DIR / scope / key
        if not path.is_file():
            raise KeyError(f"Secret does not exist with scope: {scope} and key: {key}")
        return path.read_text()


class _Widgets:
    def get(self, name):
        raise KeyError(f"No input widget named {name} is defined (spark_python_task has none)")


class DBUtils:
    def __init__(self):
        self.fs, self.secrets, self.widgets = _Fs(), _Secrets(), _Widgets()


def main() -> None:
    python_file, parameters = sys.argv[1], sys.argv[2:]
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in json.loads(Path(os.environ["EMULATOR_SPARK_CONFIG"]).read_text()).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    sys.argv = [python_file, *parameters]
    try:
        runpy.run_path(
            python_file,
            init_globals={"spark": spark, "sc": spark.sparkContext, "dbutils": DBUtils(), "display": print},
            run_name="__main__",
        )
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
