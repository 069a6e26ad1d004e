"""The Spark Connect client side: a run's session on a warm server, and stopping what it left running.

On the data dir's shared server (``BACKFILL_SPARK_SERVER=shared``, the default) or the one that
``BACKFILL_SPARK_REMOTE=sc://HOST:PORT`` names, a run opens a thin client session on a Spark Connect
server (``resources/shared_spark.py``, ``spark_server.py``) instead of starting a JVM. The server runs
an operation to its end even when its client died: a run worker SIGKILLed mid-write (the OOM killer, a
lost host) would still commit its Delta write after Dagster recorded the run FAILED, and a rerun of its
dates could then race with it. So:

- a run's session id is its Dagster run id (both are UUID4), and the run is tagged with the server it
  uses (``tags.SPARK_REMOTE``, the URL without its parameters; settings.py refuses a token in them);
- before a RUN_FAILURE or RUN_CANCELED of such a run is stored (``BackfillPlatformInstance``, in
  whatever process records it: the code server that launched a worker that died), the session's operations
  are interrupted and awaited (:func:`stop_run_operations`): once the run's end is recorded, nothing
  it started on the server can commit.

Importing this module imports no pyspark: the instance loads it in every process.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlparse

DEFAULT_PORT = 15002  # Spark Connect's, when the URL names none
# GetStatusResponse.OperationStatus.OperationState: RUNNING, TERMINATING (still able to commit)
_OPERATION_STILL_RUNNING = (2, 3)


class SparkStartError(RuntimeError):
    """Spark could not start; the message says what is missing and how to fix it."""


def run_session_id(run_id: str | None) -> str | None:
    """The Spark Connect session id of run ``run_id``: the run id itself when it is a UUID4 (Dagster's
    run ids are), which Spark Connect requires; else None (a random session, never interrupted)."""
    try:
        return run_id if run_id and uuid.UUID(run_id).version == 4 else None
    except ValueError:
        return None


def session_url(remote: str, session_id: str | None, token: str | None = None) -> str:
    """``remote`` (``sc://host:port`` with optional ``/;param=value;...``) with ``session_id`` and
    ``token`` (the shared server's) set. The result may hold a secret: it goes to the client only."""
    added = {name: value for name, value in (("session_id", session_id), ("token", token)) if value}
    if not added:
        return remote
    base, _, params = remote.partition("/;")
    kept = [param for param in params.split(";") if param and param.split("=")[0] not in added]
    return f"{base.rstrip('/')}/;" + ";".join([*kept, *(f"{name}={value}" for name, value in added.items())])


def server_address(remote: str) -> str:
    """``sc://host:port`` of ``remote``, without its parameters."""
    parsed = urlparse(remote)
    return f"sc://{parsed.hostname}:{parsed.port or DEFAULT_PORT}"


def start_remote_session(remote: str, session_id: str | None = None, token: str | None = None):
    """A Spark Connect client session on a running server (no JVM in this process); ``session_id``:
    the server-side session to use (a run's: :func:`run_session_id`), else a new random one;
    ``token``: the server's pre-shared token (the shared server's), kept out of every message."""
    try:
        import pyspark.sql.connect.session  # noqa: F401  (the client libraries are installed)
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise SparkStartError(
            f"BACKFILL_SPARK_REMOTE={remote} needs the Spark Connect client libraries ({error}). "
            "Install them with: pip install -e . (they are dependencies: pyspark[connect])."
        ) from error
    _check_reachable(remote)
    try:
        # builder.remote() also switches this process's pyspark.sql.functions to Connect mode.
        builder = SparkSession.builder.remote(session_url(remote, session_id, token))
        session = builder.create() if session_id else builder.getOrCreate()
        session.sql("SELECT 1").collect()
    except Exception as error:  # grpc errors come in many classes
        raise SparkStartError(
            f"No Spark Connect server answers at BACKFILL_SPARK_REMOTE={remote} ({type(error).__name__}). "
            "Start one with `backfill-platform spark-server`, or unset BACKFILL_SPARK_REMOTE to start "
            "an embedded Spark in each run."
        ) from error
    return session


def _check_reachable(remote: str) -> None:
    """Fail in a second, not after the Connect client's minutes of retries, when nothing listens."""
    import socket

    parsed = urlparse(remote)
    if parsed.scheme != "sc" or not parsed.hostname:
        raise SparkStartError(
            f"BACKFILL_SPARK_REMOTE={remote!r} is not a Spark Connect URL like sc://127.0.0.1:15002."
        )
    try:
        with socket.create_connection((parsed.hostname, parsed.port or DEFAULT_PORT), timeout=5):
            pass
    except OSError as error:
        raise SparkStartError(
            f"No Spark Connect server answers at BACKFILL_SPARK_REMOTE={remote} ({error}). "
            "Start one with `backfill-platform spark-server`, or unset BACKFILL_SPARK_REMOTE to start "
            "an embedded Spark in each run."
        ) from None


def stop_run_operations(remote: str, run_id: str, timeout_s: float = 60.0, token: str | None = None) -> list[str]:
    """Interrupt every operation of run ``run_id``'s session on the server ``remote`` and wait until
    none is running or terminating: after this returns, nothing the run started there commits.
    Returns the ids of the operations interrupted ([] when the session is gone or was idle). Raises
    ``SparkStartError`` when no server answers, ``TimeoutError`` when an operation outlives
    ``timeout_s``."""
    session_id = run_session_id(run_id)
    if session_id is None:
        return []
    _check_reachable(remote)
    from pyspark.sql.connect.client import SparkConnectClient

    # a few quick retries, not the client's default ten minutes: a run's end is waiting for this
    client = SparkConnectClient(session_url(remote, session_id, token),
                                retry_policy={"max_retries": 3, "max_backoff": 1000})
    try:
        try:
            interrupted = client.interrupt_all() or []
        except Exception as error:
            if "SESSION_NOT_FOUND" in str(error) or "SESSION_CLOSED" in str(error):
                return []  # the server dropped the session: nothing of it runs
            raise
        deadline = time.monotonic() + timeout_s
        while True:
            # pyspark's own client method for the GetStatus RPC (Spark 4.1+), which has no public wrapper
            statuses = client._get_operation_statuses().operation_statuses
            running = [status.operation_id for status in statuses if status.state in _OPERATION_STILL_RUNNING]
            if not running:
                return interrupted
            if time.monotonic() > deadline:
                raise TimeoutError(f"Spark Connect operations {running} of run {run_id} still run after "
                                   f"{timeout_s:.0f} s on {server_address(remote)}")
            client.interrupt_all()
            time.sleep(0.2)
    finally:
        client.close()
