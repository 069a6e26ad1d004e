"""The driver of the emulated Databricks cluster: ``python driver.py FILE [PARAMS...]``.

Started by ``databricks_emulator.runs`` for each ``spark_python_task``. Like the Databricks runtime it
gives the task the cluster's Spark session (local Spark + Delta here: on an existing cluster it
attaches to the cluster's long-lived driver JVM, started once with ``--cluster STATE_FILE``; on a new
job cluster it starts its own), defines the ``spark``, ``sc`` and
``dbutils`` globals and runs FILE as ``__main__`` with PARAMS as ``sys.argv[1:]`` (the emulator has
already mapped ``/dbfs/...`` parameters to its storage). It deliberately imports nothing from
``backfill_platform``: the step gets the project's code from the launcher's zip, as on a real cluster.

The session has the workspace's Unity Catalog (``metastore.py``): ``catalog.schema.table`` names are
managed Delta tables under the emulator's warehouse folder. The cluster environment names that folder
(``EMULATOR_WAREHOUSE``); the driver takes it out of the task's environment, so the task's code sees a
workspace with catalog names and no paths.

Two faults act here, in the task's process: ``EMULATOR_HOLD_S`` (the run is RUNNING, its driver waits
before it runs the task) and ``EMULATOR_FAIL_FIRST_WRITE`` (the task's first Spark write raises
``ConnectionResetError``: its own code meets a transient error).
"""

import json
import os
import runpy
import shutil
import sys
import time
from pathlib import Path

DBFS_ROOT = Path(os.environ["EMULATOR_DBFS_ROOT"])
SECRETS_DIR = Path(os.environ.get("EMULATOR_SECRETS_DIR", "/nonexistent"))
_WAREHOUSE_VARS = ("EMULATOR_WAREHOUSE",)
WAREHOUSE = Path(next((os.environ[n] for n in _WAREHOUSE_VARS if os.environ.get(n)), DBFS_ROOT.parent / "warehouse"))
for _name in _WAREHOUSE_VARS:
    os.environ.pop(_name, None)


def _metastore():
    """``metastore.py`` beside this file, loaded by path (the task's ``sys.path`` stays the task's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_emulator_metastore", Path(__file__).with_name("metastore.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _attach_to_cluster():
    """A Python process on an already running cluster: attach to its JVM (as a Databricks task on a
    shared cluster gets its own Python process next to the cluster's one driver JVM)."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_GATEWAY_PORT"] = os.environ["EMULATOR_GATEWAY_PORT"]
    os.environ["PYSPARK_GATEWAY_SECRET"] = os.environ["EMULATOR_GATEWAY_SECRET"]
    gateway = launch_gateway()  # connects to the running JVM (PYSPARK_GATEWAY_PORT), starts nothing
    jvm = gateway.jvm
    jsc = jvm.org.apache.spark.api.java.JavaSparkContext.fromSparkContext(
        jvm.org.apache.spark.SparkContext.getOrCreate()
    )
    SparkContext(gateway=gateway, jsc=jsc, conf=SparkConf(_jvm=jvm, _jconf=jsc.getConf()))  # the `sc` the session wraps
    spark = SparkSession.builder.getOrCreate()  # the cluster's default session; never stop it
    # Every Spark job of this run carries its tag (this thread's, and threads it starts), so the
    # emulator can cancel them when the run ends early (timeout, cancel, lost driver).
    spark.sparkContext.addJobTag(os.environ["EMULATOR_RUN_TAG"])
    for key, value in _metastore().catalog_spark_config(WAREHOUSE).items():
        spark.conf.set(key, value)  # catalogs created since the cluster started
    return spark, False


def _start_spark():
    from pyspark.sql import SparkSession

    metastore = _metastore()
    config = json.loads(Path(os.environ["EMULATOR_SPARK_CONFIG"]).read_text())
    config = {**metastore.with_plugin_jar(config, metastore.plugin_jar()), **metastore.catalog_spark_config(WAREHOUSE)}
    builder = SparkSession.builder
    for key, value in config.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def serve_cluster(state_file: str) -> None:
    """The long-lived driver JVM of an existing (all-purpose) cluster."""
    import signal
    import threading

    spark, _ = _start_spark()
    parameters = spark.sparkContext._gateway.gateway_parameters
    state = Path(state_file)
    temporary = state.with_name(state.name + ".tmp")
    temporary.write_text(json.dumps({"port": parameters.port, "secret": parameters.auth_token}))
    os.chmod(temporary, 0o600)
    os.replace(temporary, state)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    spark.stop()


def _fail_first_write(message: str) -> None:
    """Make the first ``DataFrameWriter.save``/``saveAsTable`` of this process raise, before Spark
    writes anything (a storage connection reset, from the task's point of view)."""
    from pyspark.sql.readwriter import DataFrameWriter

    state = {"failed": False}

    def failing(original):
        def write(self, *args, **kwargs):
            if not state["failed"]:
                state["failed"] = True
                raise ConnectionResetError(message)
            return original(self, *args, **kwargs)

        return write

    DataFrameWriter.save = failing(DataFrameWriter.save)
    DataFrameWriter.saveAsTable = failing(DataFrameWriter.saveAsTable)


def main() -> None:
    if sys.argv[1] == "--cluster":
        serve_cluster(sys.argv[2])
        return
    python_file, parameters = sys.argv[1], sys.argv[2:]
    if os.environ.get("EMULATOR_HOLD_S"):
        time.sleep(float(os.environ["EMULATOR_HOLD_S"]))  # a cancel kills the process group meanwhile
    if os.environ.get("EMULATOR_FAIL_FIRST_WRITE"):
        _fail_first_write(os.environ["EMULATOR_FAIL_FIRST_WRITE"])
    spark, owned = _attach_to_cluster() if os.environ.get("EMULATOR_GATEWAY_PORT") else _start_spark()
    sys.argv = [python_file, *parameters]
    try:
        runpy.run_path(
            python_file,
            init_globals={"spark": spark, "sc": spark.sparkContext, "dbutils": DBUtils(), "display": print},
            run_name="__main__",
        )
    finally:
        if owned:
            spark.stop()


if __name__ == "__main__":
    main()
