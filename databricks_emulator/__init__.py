"""A Databricks workspace on 127.0.0.1, for tests and offline development.

Serves the REST calls that ``dagster_databricks.databricks_pyspark_step_launcher`` makes through
``databricks-sdk``, with Databricks' documented request/response shapes and error bodies
(``{"error_code": ..., "message": ...}``):

- DBFS 2.0: ``put``, ``create``/``add-block``/``close``, ``read``, ``get-status``, ``list``,
  ``mkdirs``, ``delete`` (1 MB block / read limits as documented);
- Jobs 2.1/2.2: ``runs/submit`` (single ``spark_python_task``), ``runs/get``, ``runs/get-output``,
  ``runs/cancel``; ``clusters/get``; ``permissions`` PATCH/PUT/GET;
- OAuth M2M: ``/oidc/.well-known/oauth-authorization-server`` and a ``client_credentials`` token
  endpoint. Every ``/api/`` call without the expected bearer token gets 401.

``runs/submit`` really runs the submitted file: a subprocess (``driver.py``) starts a local
Spark with Delta, defines the ``spark``/``sc``/``dbutils`` globals of the Databricks runtime and runs the
file as ``__main__``. Life cycle PENDING -> RUNNING -> TERMINATING -> TERMINATED with result_state
SUCCESS/FAILED/TIMEDOUT/CANCELED (or INTERNAL_ERROR), ``timeout_seconds`` honoured.

``/dbfs/`` (the FUSE mount of a real cluster): the emulator translates the ``/dbfs/...`` and
``dbfs:/...`` paths it hands to the run (the python file and the task parameters) into its own
storage folder, and ``dbutils.fs`` does the same. That is the boundary the emulator controls, needs
no privileges and works on any OS; a mount namespace (``unshare``) would also cover arbitrary paths
opened by user code, but needs root/user namespaces and is Linux-only. Code that builds ``/dbfs/``
paths itself on the cluster is therefore not supported by the emulator.

Tables: the cluster's Spark has a Unity Catalog metastore (``metastore.py``, a Spark catalog plugin
compiled from ``catalog/UnityCatalog.java`` on first use): ``catalog.schema.table`` names, ``CREATE
SCHEMA``, ``saveAsTable``, ``DESCRIBE HISTORY``, ``RESTORE TABLE``, ``DeltaTable.forName``, MERGE and
time travel work by name, as on a workspace. A catalog is the folder ``<root>/warehouse/<catalog>``
(``main`` always exists), a table the managed Delta table ``<root>/warehouse/<catalog>/<schema>/<table>``.
The file system is the metastore: every cluster JVM sees the same tables, and no metastore lock is
shared by concurrent runs (an embedded Derby metastore would lock them out).

``idempotency_token`` is honoured: a submit repeating an earlier submit's token creates nothing and
answers that run's id. Every ``runs/submit`` received is recorded (``submit_requests``).

Fault injection (Python methods, or ``POST /emulator/faults``; ``faults.py`` lists the kinds): refuse
the next N submits (an HTTP error, or no answer), create a run and lose the answer (the client retries
the call), fail ``runs/get``, end the next run with INTERNAL_ERROR (before or after its task), lose
its driver after N seconds, time it out, keep it PENDING or RUNNING, make its first Spark write fail,
delay state transitions.

Run it: ``python -m databricks_emulator --port 8765`` (prints the environment to export); in tests
use :class:`DatabricksEmulator` as a context manager.

Modules: ``server`` (:class:`DatabricksEmulator`, HTTP routing, auth, OAuth), ``dbfs`` (DBFS 2.0 and
``/dbfs`` path translation), ``runs`` (jobs/runs life cycle, permissions), ``clusters``
(``clusters/get``, the clusters' driver processes), ``faults`` (fault injection), ``errors``
(Databricks' error body), ``driver`` (the emulated cluster's driver process), ``metastore`` (its
Unity Catalog), ``__main__`` (the CLI).
A separate package from ``backfill_platform``, so it is not in the code the Databricks launcher
uploads; it uses ``backfill_platform`` only for the cluster's Spark settings
(:func:`default_cluster_spark_config`).
"""

from databricks_emulator.clusters import DEFAULT_CLUSTER_ID, RUNTIME_VERSION, default_cluster_spark_config
from databricks_emulator.errors import ApiError
from databricks_emulator.faults import Fault, Faults
from databricks_emulator.runs import EmulatedRun
from databricks_emulator.server import DatabricksEmulator

__all__ = [
    "DEFAULT_CLUSTER_ID",
    "RUNTIME_VERSION",
    "ApiError",
    "DatabricksEmulator",
    "EmulatedRun",
    "Fault",
    "Faults",
    "default_cluster_spark_config",
]
