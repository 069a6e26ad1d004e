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

``runs/submit`` really runs the submitted file: a subprocess (``databricks_driver.py``) starts a local
Spark with Delta, defines the ``spark``/``sc``/``dbutils`` globals of the Databricks runtime and runs the
file as ``__main__``. Life cycle PENDING -> RUNNING -> TERMINATING -> TERMINATED with result_state
SUCCESS/FAILED/TIMEDOUT/CANCELED (or INTERNAL_ERROR), ``timeout_seconds`` honoured.

``/dbfs/`` (the FUSE mount of a real cluster): the emulator translates the ``/dbfs/...`` and
``dbfs:/...`` paths it hands to the run (the python file and the task parameters) into its own
storage folder, and ``dbutils.fs`` does the same. That is the boundary the emulator controls, needs
no privileges and works on any OS; a mount namespace (``unshare``) would also cover arbitrary paths
opened by user code, but needs root/user namespaces and is Linux-only. Code that builds ``/dbfs/``
paths itself on the cluster is therefore not supported by the emulator.

Tables: the emulator's Spark has no Unity Catalog, so its "cluster" runs with
``BACKFILL_DATABRICKS_TABLE_PATH_ROOT=<root>/warehouse`` (a cluster environment variable, like any
``spark_env_vars``): ``catalog.schema.table`` is the Delta table at
``<root>/warehouse/<catalog>/<schema>/<table>``. No metastore, so concurrent runs cannot lock each
other out (an embedded Derby metastore would).

Fault injection (Python methods, or ``POST /emulator/faults``): fail the next N submits, end the next
run with INTERNAL_ERROR, lose the driver of the next run after N seconds, delay state transitions.

Run it: ``python -m backfill_platform.dev.databricks_emulator --port 8765`` (prints the environment
to export); in tests use :class:`DatabricksEmulator` as a context manager.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import secrets as secrets_module
import shutil
import signal
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_BLOCK = 1024 * 1024
DRIVER_SCRIPT = Path(__file__).with_name("databricks_driver.py")
RUNTIME_VERSION = "15.4-emulated"
DEFAULT_CLUSTER_ID = "0101-000000-emulated"
# The only host variables the emulated cluster sees (a real cluster shares nothing with the host).
_HOST_ENV_PASSED = ("PATH", "HOME", "JAVA_HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "TZ")


class ApiError(Exception):
    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


@dataclasses.dataclass
class Fault:
    """One injected fault: used by the first submit whose JSON body contains ``match`` (any if None)."""

    kind: str  # fail_submit | internal_error | lose_driver | timeout | pending
    value: Any
    match: str | None = None


@dataclasses.dataclass
class Faults:
    queued: list[Fault] = dataclasses.field(default_factory=list)
    pending_delay_s: float = 0.0
    terminating_delay_s: float = 0.0

    def take(self, kind: str, body_text: str) -> Fault | None:
        for fault in self.queued:
            if fault.kind == kind and (fault.match is None or fault.match in body_text):
                self.queued.remove(fault)
                return fault
        return None


@dataclasses.dataclass
class EmulatedRun:
    run_id: int
    task_run_id: int
    job_id: int
    run_name: str
    task: dict[str, Any]
    cluster_id: str
    timeout_seconds: int
    submitted_at_ms: int
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = "Waiting for cluster"
    start_time: int = 0
    end_time: int = 0
    error: str | None = None
    error_trace: str | None = None
    process: subprocess.Popen | None = None
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    done_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    run_dir: Path | None = None


class DatabricksEmulator:
    """The emulated workspace: storage under ``root``, HTTP on 127.0.0.1:``port`` (0 = any free)."""

    def __init__(
        self,
        root: Path,
        token: str,
        port: int = 0,
        *,
        oauth_clients: dict[str, str] | None = None,
        cluster_ids: tuple[str, ...] = (DEFAULT_CLUSTER_ID,),
        spark_config: dict[str, str] | None = None,
        warm_existing_clusters: bool = True,
    ):
        self.root = Path(root).resolve()
        self.dbfs_root = self.root / "dbfs"
        self.warehouse = self.root / "warehouse"
        self.runs_root = self.root / "runs"
        for folder in (self.dbfs_root, self.warehouse, self.runs_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._token = token
        self._oauth_clients = dict(oauth_clients or {})
        self._access_tokens: set[str] = set()
        self._port = port
        self._spark_config = spark_config
        self.faults = Faults()
        self.calls: list[tuple[str, str, int]] = []
        self.cancel_requests: list[int] = []
        self.submitted: list[dict[str, Any]] = []
        self.permission_updates: list[tuple[str, str, dict[str, Any]]] = []
        self.runs: dict[int, EmulatedRun] = {}
        self.clusters: dict[str, dict[str, Any]] = {
            cid: {
                "cluster_id": cid,
                "cluster_name": f"emulated shared cluster {cid}",
                "spark_version": RUNTIME_VERSION,
                "node_type_id": "emulated.local",
                "num_workers": 0,
                "state": "RUNNING",
                "cluster_source": "UI",
            }
            for cid in cluster_ids
        }
        self._handles: dict[int, tuple[PurePosixPath, bytearray]] = {}
        self._next_id = 1000
        self._idempotency: dict[str, int] = {}
        self._lock = threading.RLock()
        self.warm_existing_clusters = warm_existing_clusters
        self._cluster_lock = threading.Lock()
        self._cluster_processes: dict[str, subprocess.Popen] = {}
        self._cluster_gateways: dict[str, dict[str, Any]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DatabricksEmulator:
        if self._spark_config is None:
            self._spark_config = default_cluster_spark_config(self.root / "cluster")
        (self.root / "cluster").mkdir(exist_ok=True)
        (self.root / "cluster" / "spark_config.json").write_text(json.dumps(self._spark_config))
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="databricks-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            run.cancel_event.set()
            _kill(run.process)
        for run in runs:
            run.done_event.wait(timeout=15)
        with self._cluster_lock:
            for process in self._cluster_processes.values():
                _kill(process)
            self._cluster_processes.clear()
            self._cluster_gateways.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> DatabricksEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ fault injection

    def fail_next_submits(self, count: int = 1, status: int = 500, error_code: str = "INTERNAL_ERROR",
                          message: str = "Internal error happened while submitting the run (emulated).",
                          match: str | None = None) -> None:
        """The next ``count`` submits (whose body contains ``match``) are refused with this error."""
        with self._lock:
            self.faults.queued.extend(Fault("fail_submit", (status, error_code, message), match) for _ in range(count))

    def end_next_run_with_internal_error(
        self, message: str = "Run result unavailable: the cluster failed to start (emulated internal error).",
        match: str | None = None,
    ) -> None:
        with self._lock:
            self.faults.queued.append(Fault("internal_error", message, match))

    def lose_driver_of_next_run(self, after_s: float = 1.0, match: str | None = None) -> None:
        """Kill the next run's driver process ``after_s`` seconds after it starts RUNNING."""
        with self._lock:
            self.faults.queued.append(Fault("lose_driver", after_s, match))

    def time_out_next_run(self, after_s: int = 1, match: str | None = None) -> None:
        """The next run gets ``timeout_seconds=after_s`` whatever the submit asked for."""
        with self._lock:
            self.faults.queued.append(Fault("timeout", after_s, match))

    def delay_next_run(self, pending_s: float, match: str | None = None) -> None:
        """The next run stays PENDING for ``pending_s`` seconds (or until cancelled)."""
        with self._lock:
            self.faults.queued.append(Fault("pending", pending_s, match))

    def delay_transitions(self, pending_s: float = 0.0, terminating_s: float = 0.0) -> None:
        """Every run stays PENDING ``pending_s`` and TERMINATING ``terminating_s`` seconds."""
        with self._lock:
            self.faults.pending_delay_s = pending_s
            self.faults.terminating_delay_s = terminating_s

    def clear_faults(self) -> None:
        with self._lock:
            self.faults = Faults()

    def wait_for_run(self, run_id: int, timeout_s: float = 120) -> EmulatedRun:
        run = self.runs[run_id]
        if not run.done_event.wait(timeout_s):
            raise TimeoutError(f"emulated run {run_id} still {run.life_cycle_state} after {timeout_s}s")
        return run

    def wait_for_submit(self, count: int = 1, timeout_s: float = 120) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.runs) >= count:
                    return sorted(self.runs)
            time.sleep(0.1)
        raise TimeoutError(f"fewer than {count} runs submitted after {timeout_s}s")

    # ------------------------------------------------------------------ auth

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        presented = header[len("Bearer "):].strip()
        with self._lock:
            valid = [self._token, *self._access_tokens]
        return any(secrets_module.compare_digest(presented, token) for token in valid)

    def issue_oauth_token(self, client_id: str | None, client_secret: str | None) -> str | None:
        expected = self._oauth_clients.get(client_id or "")
        if expected is None or not secrets_module.compare_digest(expected, client_secret or ""):
            return None
        token = "emulated-oauth-" + secrets_module.token_hex(16)
        with self._lock:
            self._access_tokens.add(token)
        return token

    # ------------------------------------------------------------------ DBFS

    def dbfs_local(self, path: str) -> Path:
        """``/x``, ``dbfs:/x`` or ``/dbfs/x`` -> the file in the emulator's storage."""
        if not isinstance(path, str) or not path:
            raise _bad("Path must be a non-empty string.")
        if path.startswith("dbfs:"):
            path = path[len("dbfs:"):]
        if path.startswith("/dbfs/"):
            path = path[len("/dbfs"):]
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            raise _bad(f"Path must be absolute: {path}")
        if ".." in pure.parts:
            raise _bad(f"Path must not contain '..': {path}")
        return self.dbfs_root.joinpath(*pure.parts[1:])

    @staticmethod
    def _missing(path: str) -> ApiError:
        return ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {path}.")

    def _file_info(self, api_path: str, local: Path) -> dict[str, Any]:
        stat = local.stat()
        return {
            "path": api_path,
            "is_dir": local.is_dir(),
            "file_size": 0 if local.is_dir() else stat.st_size,
            "modification_time": int(stat.st_mtime * 1000),
        }

    def dbfs(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        path = body.get("path")
        if action == "put":
            local = self.dbfs_local(path)
            data = base64.b64decode(body.get("contents") or "")
            if len(data) > MAX_BLOCK:
                raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "The contents exceed 1 MB; use create/add-block/close.")
            self._check_writable(path, local, bool(body.get("overwrite")))
            _atomic_write(local, data)
            return {}
        if action == "create":
            local = self.dbfs_local(path)
            self._check_writable(path, local, bool(body.get("overwrite")))
            with self._lock:
                self._next_id += 1
                handle = self._next_id
                self._handles[handle] = (PurePosixPath(str(path)), bytearray())
            return {"handle": handle}
        if action == "add-block":
            data = base64.b64decode(body.get("data") or "")
            if len(data) > MAX_BLOCK:
                raise ApiError(400, "MAX_BLOCK_SIZE_EXCEEDED", "A block may hold at most 1 MB.")
            with self._lock:
                entry = self._handles.get(int(body.get("handle", -1)))
                if entry is None:
                    raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No stream with handle {body.get('handle')}.")
                entry[1].extend(data)
            return {}
        if action == "close":
            with self._lock:
                entry = self._handles.pop(int(body.get("handle", -1)), None)
            if entry is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No stream with handle {body.get('handle')}.")
            _atomic_write(self.dbfs_local(str(entry[0])), bytes(entry[1]))
            return {}
        if action == "read":
            local = self.dbfs_local(path)
            offset = int(body.get("offset") or 0)
            length = int(body.get("length") or 0) or 0
            if offset < 0 or length < 0:
                raise _bad("offset and length must not be negative.")
            if length > MAX_BLOCK:
                raise ApiError(400, "MAX_READ_SIZE_EXCEEDED", "Cannot read more than 1 MB at a time.")
            if not local.exists():
                raise self._missing(path)
            if local.is_dir():
                raise ApiError(400, "NOT_A_FILE", f"Path {path} is a directory.")
            with open(local, "rb") as handle:
                handle.seek(offset)
                data = handle.read(length or MAX_BLOCK)
            return {"bytes_read": len(data), "data": base64.b64encode(data).decode()}
        if action == "get-status":
            local = self.dbfs_local(path)
            if not local.exists():
                raise self._missing(path)
            return self._file_info(_api_path(path), local)
        if action == "list":
            local = self.dbfs_local(path)
            if not local.exists():
                raise self._missing(path)
            if local.is_file():
                return {"files": [self._file_info(_api_path(path), local)]}
            base = _api_path(path).rstrip("/")
            return {
                "files": [self._file_info(f"{base}/{child.name}", child) for child in sorted(local.iterdir())
                          if not child.name.startswith(".tmp-")]
            }
        if action == "mkdirs":
            local = self.dbfs_local(path)
            if local.is_file():
                raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A file already exists at path {path}.")
            local.mkdir(parents=True, exist_ok=True)
            return {}
        if action == "delete":
            local = self.dbfs_local(path)
            if not local.exists():
                return {}
            if local.is_dir():
                if any(local.iterdir()) and not body.get("recursive"):
                    raise ApiError(400, "IO_ERROR", f"Path {path} is a non-empty directory; set recursive=true.")
                shutil.rmtree(local)
            else:
                local.unlink()
            return {}
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for 'dbfs/{action}'.")

    def _check_writable(self, path: str, local: Path, overwrite: bool) -> None:
        if local.is_dir():
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A directory already exists at path {path}.")
        if local.exists() and not overwrite:
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A file or directory already exists at the input path {path}.")

    # ------------------------------------------------------------------ clusters, permissions

    def cluster(self, cluster_id: str | None) -> dict[str, Any]:
        with self._lock:
            info = self.clusters.get(cluster_id or "")
        if info is None:
            raise _bad(f"Cluster {cluster_id} does not exist")
        return info

    def update_permissions(self, object_type: str, object_id: str, body: dict[str, Any]) -> dict[str, Any]:
        acl = body.get("access_control_list")
        if not isinstance(acl, list):
            raise _bad("access_control_list must be a list.")
        for entry in acl:
            if not entry.get("permission_level") or not any(
                entry.get(k) for k in ("user_name", "group_name", "service_principal_name")
            ):
                raise _bad(f"Invalid access control entry {entry}.")
        if object_type == "jobs":
            with self._lock:
                known = any(str(run.job_id) == object_id for run in self.runs.values())
            if not known:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Job {object_id} does not exist.")
        elif object_type == "clusters":
            self.cluster(object_id)
        with self._lock:
            self.permission_updates.append((object_type, object_id, body))
        return {
            "object_id": f"/{object_type}/{object_id}",
            "object_type": object_type.rstrip("s"),
            "access_control_list": [
                {**{k: v for k, v in e.items() if k != "permission_level"},
                 "all_permissions": [{"permission_level": e["permission_level"], "inherited": False}]}
                for e in acl
            ],
        }

    # ------------------------------------------------------------------ jobs

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        body_text = json.dumps(body, sort_keys=True)
        with self._lock:
            refused = self.faults.take("fail_submit", body_text)
            if refused is not None:
                raise ApiError(*refused.value)
            token = body.get("idempotency_token")
            if token and token in self._idempotency:
                return {"run_id": self._idempotency[token]}
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or len(tasks) != 1:
            raise _bad("The emulator runs submits with exactly one task (tasks must hold one task).")
        task = tasks[0]
        if not task.get("task_key"):
            raise _bad("Task key must be set.")
        if "spark_python_task" not in task:
            raise _bad("The emulator supports spark_python_task only.")
        python_task = task["spark_python_task"]
        if not python_task.get("python_file"):
            raise _bad("spark_python_task.python_file must be set.")
        existing, new = task.get("existing_cluster_id"), task.get("new_cluster")
        if bool(existing) == bool(new):
            raise _bad("Exactly one of existing_cluster_id and new_cluster must be set.")
        timeout = int(body.get("timeout_seconds") or 0)
        if timeout < 0:
            raise _bad("timeout_seconds must not be negative.")
        if existing:
            self.cluster(existing)
            cluster_id = existing
        else:
            _validate_new_cluster(new)
        with self._lock:
            self._next_id += 1
            run_id = self._next_id
            self._next_id += 1
            task_run_id = self._next_id
            if new:
                cluster_id = f"{time.strftime('%m%d-%H%M%S')}-job{run_id}"
                self.clusters[cluster_id] = {
                    "cluster_id": cluster_id, "cluster_name": f"job-{run_id}-run-{run_id}",
                    "spark_version": new["spark_version"], "node_type_id": new.get("node_type_id"),
                    "state": "PENDING", "cluster_source": "JOB", "spark_env_vars": new.get("spark_env_vars", {}),
                    **({"num_workers": new["num_workers"]} if "num_workers" in new else {"autoscale": new["autoscale"]}),
                }
            run = EmulatedRun(
                run_id=run_id, task_run_id=task_run_id, job_id=run_id + 500_000,
                run_name=body.get("run_name") or "Untitled", task=task, cluster_id=cluster_id,
                timeout_seconds=timeout, submitted_at_ms=_now_ms(),
            )
            self.runs[run_id] = run
            self.submitted.append(body)
            if token:
                self._idempotency[token] = run_id
            delayed = self.faults.take("pending", body_text)
            pending_s = delayed.value if delayed else self.faults.pending_delay_s
            internal = self.faults.take("internal_error", body_text)
            internal = internal.value if internal else None
            lost = self.faults.take("lose_driver", body_text)
            lose_after = lost.value if lost else None
            timeout = self.faults.take("timeout", body_text)
            if timeout is not None:
                run.timeout_seconds = int(timeout.value)
        threading.Thread(
            target=self._execute, args=(run, pending_s, internal, lose_after), name=f"run-{run_id}", daemon=True
        ).start()
        return {"run_id": run_id}

    def _find_run(self, run_id: Any) -> EmulatedRun:
        try:
            key = int(run_id)
        except (TypeError, ValueError):
            raise _bad(f"Invalid run_id {run_id!r}.") from None
        with self._lock:
            for run in self.runs.values():
                if key in (run.run_id, run.task_run_id):
                    return run
        raise _bad(f"Run {run_id} does not exist.")

    def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        run = self._find_run(body.get("run_id"))
        with self._lock:
            self.cancel_requests.append(run.run_id)
        run.cancel_event.set()
        return {}

    def _state(self, run: EmulatedRun) -> dict[str, Any]:
        state = {"life_cycle_state": run.life_cycle_state, "state_message": run.state_message,
                 "user_cancelled_or_timedout": run.result_state in ("CANCELED", "TIMEDOUT")}
        if run.result_state:
            state["result_state"] = run.result_state
        return state

    def run_json(self, run: EmulatedRun) -> dict[str, Any]:
        with self._lock:
            cluster_instance = {"cluster_id": run.cluster_id, "spark_context_id": str(run.run_id * 7919)}
            task = {
                "run_id": run.task_run_id,
                "task_key": run.task.get("task_key"),
                "state": self._state(run),
                "spark_python_task": run.task["spark_python_task"],
                "libraries": run.task.get("libraries", []),
                "cluster_instance": cluster_instance,
                "start_time": run.start_time or run.submitted_at_ms,
                "end_time": run.end_time,
                "attempt_number": 0,
            }
            if run.task.get("existing_cluster_id"):
                task["existing_cluster_id"] = run.task["existing_cluster_id"]
            else:
                task["new_cluster"] = run.task["new_cluster"]
            return {
                "job_id": run.job_id,
                "run_id": run.run_id,
                "number_in_job": run.run_id,
                "creator_user_name": "emulated-user@example.com",
                "run_name": run.run_name,
                "run_type": "SUBMIT_RUN",
                "state": self._state(run),
                "tasks": [task],
                "cluster_instance": cluster_instance,
                "start_time": run.start_time or run.submitted_at_ms,
                "end_time": run.end_time,
                "setup_duration": 0,
                "execution_duration": max(run.end_time - run.start_time, 0) if run.end_time and run.start_time else 0,
                "cleanup_duration": 0,
                "run_page_url": f"{self.url}/#job/{run.job_id}/run/{run.run_id}",
                "timeout_seconds": run.timeout_seconds,
            }

    def run_output(self, run: EmulatedRun) -> dict[str, Any]:
        output: dict[str, Any] = {"metadata": self.run_json(run)}
        if run.error:
            output["error"] = run.error
        if run.error_trace:
            output["error_trace"] = run.error_trace
        if run.run_dir and (run.run_dir / "stdout.log").exists():
            text = (run.run_dir / "stdout.log").read_text(errors="replace")
            output["logs"] = text[-5 * MAX_BLOCK:]
            output["logs_truncated"] = len(text) > 5 * MAX_BLOCK
        return output

    def _set(self, run: EmulatedRun, life_cycle: str, message: str, result: str | None = None) -> None:
        with self._lock:
            run.life_cycle_state, run.state_message = life_cycle, message
            if result:
                run.result_state = result

    def _finish(self, run: EmulatedRun, result: str, message: str, life_cycle: str = "TERMINATED") -> None:
        if life_cycle == "TERMINATED":
            self._set(run, "TERMINATING", message)
            if self.faults.terminating_delay_s:
                time.sleep(self.faults.terminating_delay_s)
        with self._lock:
            run.life_cycle_state, run.result_state, run.state_message = life_cycle, result, message
            run.end_time = _now_ms()
            cluster = self.clusters.get(run.cluster_id)
            if cluster and cluster.get("cluster_source") == "JOB":
                cluster["state"] = "TERMINATED"
        run.done_event.set()

    def _cluster_env(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in _HOST_ENV_PASSED if name in os.environ}
        env.update({
            "DATABRICKS_RUNTIME_VERSION": RUNTIME_VERSION,
            "BACKFILL_DATABRICKS_TABLE_PATH_ROOT": str(self.warehouse),
            "EMULATOR_DBFS_ROOT": str(self.dbfs_root),
            "EMULATOR_SPARK_CONFIG": str(self.root / "cluster" / "spark_config.json"),
            "EMULATOR_SECRETS_DIR": str(self.root / "secrets"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def cluster_gateway(self, cluster_id: str, timeout_s: float = 600) -> dict[str, Any]:
        """The running driver JVM of an existing cluster, started on first use (like starting a
        terminated all-purpose cluster) and kept warm for every later run on it."""
        with self._cluster_lock:
            process = self._cluster_processes.get(cluster_id)
            if process is not None and process.poll() is None and cluster_id in self._cluster_gateways:
                return self._cluster_gateways[cluster_id]
            folder = self.root / "clusters" / cluster_id
            folder.mkdir(parents=True, exist_ok=True)
            state_file = folder / "gateway.json"
            state_file.unlink(missing_ok=True)
            with self._lock:
                self.clusters[cluster_id]["state"] = "PENDING"
            with open(folder / "driver.log", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, str(DRIVER_SCRIPT), "--cluster", str(state_file)],
                    cwd=folder, env=self._cluster_env(), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._cluster_processes[cluster_id] = process
            deadline = time.monotonic() + timeout_s
            while not state_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    _kill(process)
                    with self._lock:
                        self.clusters[cluster_id]["state"] = "ERROR"
                    tail = (folder / "driver.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"Cluster {cluster_id} failed to start: {tail}")
                time.sleep(0.2)
            self._cluster_gateways[cluster_id] = json.loads(state_file.read_text())
            with self._lock:
                self.clusters[cluster_id]["state"] = "RUNNING"
            return self._cluster_gateways[cluster_id]

    def _execute(self, run: EmulatedRun, pending_s: float, internal: str | None, lose_after: float | None) -> None:
        try:
            self._execute_inner(run, pending_s, internal, lose_after)
        except Exception as error:  # the emulator's own bug: never leave a run hanging
            run.error = f"{error.__class__.__name__}: {error}"
            self._finish(run, "FAILED", f"Emulator error: {error}", life_cycle="INTERNAL_ERROR")

    def _execute_inner(self, run: EmulatedRun, pending_s: float, internal: str | None, lose_after: float | None) -> None:
        started = time.monotonic()
        if run.cancel_event.wait(pending_s):
            self._finish(run, "CANCELED", "Run cancelled while pending.")
            return
        if internal:
            run.error = internal
            self._finish(run, "FAILED", internal, life_cycle="INTERNAL_ERROR")
            return
        python_task = run.task["spark_python_task"]
        try:
            python_file = self.dbfs_local(python_task["python_file"])
        except ApiError as error:
            python_file = None
            problem = error.message
        else:
            problem = None if python_file.is_file() else f"Cannot read the python file {python_task['python_file']}."
        if problem:
            run.error = problem
            self._finish(run, "FAILED", problem)
            return
        run.run_dir = self.runs_root / str(run.run_id)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        parameters = [self._translate(p) for p in python_task.get("parameters", [])]
        with self._lock:
            cluster = self.clusters.get(run.cluster_id, {})
            cluster_env = dict(cluster.get("spark_env_vars") or {})
            if cluster.get("cluster_source") == "JOB":
                cluster["state"] = "RUNNING"
        env = self._cluster_env()
        env.update(cluster_env)
        if self.warm_existing_clusters and run.task.get("existing_cluster_id"):
            try:
                gateway = self.cluster_gateway(run.cluster_id)
            except RuntimeError as error:
                run.error = str(error)
                self._finish(run, "FAILED", f"Cluster {run.cluster_id} failed to start.", life_cycle="INTERNAL_ERROR")
                return
            env["EMULATOR_GATEWAY_PORT"] = str(gateway["port"])
            env["EMULATOR_GATEWAY_SECRET"] = str(gateway["secret"])
            if run.cancel_event.is_set():
                self._finish(run, "CANCELED", "Run cancelled while pending.")
                return
        with open(run.run_dir / "stdout.log", "wb") as out, open(run.run_dir / "stderr.log", "wb") as err:
            run.process = subprocess.Popen(
                [sys.executable, str(DRIVER_SCRIPT), str(python_file), *parameters],
                cwd=run.run_dir, env=env, stdout=out, stderr=err, start_new_session=True,
            )
        with self._lock:
            run.start_time = _now_ms()
        self._set(run, "RUNNING", "In run")
        running_since = time.monotonic()
        while True:
            code = run.process.poll()
            if code is not None:
                break
            if run.cancel_event.is_set():
                _kill(run.process)
                self._finish(run, "CANCELED", "Run cancelled.")
                return
            if run.timeout_seconds and time.monotonic() - started > run.timeout_seconds:
                _kill(run.process)
                run.error = f"Run timed out after {run.timeout_seconds} seconds."
                self._finish(run, "TIMEDOUT", f"Run timed out after {run.timeout_seconds} seconds (timeout_seconds).")
                return
            if lose_after is not None and time.monotonic() - running_since > lose_after:
                _kill(run.process, signal.SIGKILL)
                message = "The Spark driver has stopped unexpectedly and is restarting (driver lost, emulated)."
                run.error = message
                self._finish(run, "FAILED", message)
                return
            time.sleep(0.1)
        if code == 0:
            self._finish(run, "SUCCESS", "")
            return
        stderr = (run.run_dir / "stderr.log").read_text(errors="replace")
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        run.error = lines[-1] if lines else f"Python process exited with code {code}."
        run.error_trace = stderr[-20000:]
        self._finish(run, "FAILED", "Workload failed, see run output for details")

    def _translate(self, parameter: Any) -> str:
        text = str(parameter)
        if text.startswith("/dbfs/") or text.startswith("dbfs:/"):
            return str(self.dbfs_local(text))
        return text

    # ------------------------------------------------------------------ HTTP routing

    def route(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "api" and parts[2] == "dbfs" and len(parts) == 4:
            return self.dbfs(parts[3], body)
        if parts[:1] == ["api"] and len(parts) >= 4 and parts[2] == "jobs":
            action = "/".join(parts[3:])
            if action == "runs/submit" and method == "POST":
                return self.submit(body)
            if action == "runs/get" and method == "GET":
                return self.run_json(self._find_run(body.get("run_id")))
            if action == "runs/get-output" and method == "GET":
                return self.run_output(self._find_run(body.get("run_id")))
            if action == "runs/cancel" and method == "POST":
                return self.cancel(body)
        if parts[:1] == ["api"] and parts[2:] == ["clusters", "get"]:
            return self.cluster(body.get("cluster_id"))
        if parts[:1] == ["api"] and len(parts) == 5 and parts[2] == "permissions":
            if method in ("PATCH", "PUT"):
                return self.update_permissions(parts[3], parts[4], body)
            return {"object_id": f"/{parts[3]}/{parts[4]}", "object_type": parts[3].rstrip("s"), "access_control_list": []}
        if parts == ["api", "2.0", "dbfs"]:
            pass
        if parts == ["emulator", "faults"] and method == "POST":
            match = body.get("match")
            if body.get("fail_next_submits"):
                self.fail_next_submits(int(body["fail_next_submits"]), match=match)
            for _ in range(int(body.get("internal_error_next", 0))):
                self.end_next_run_with_internal_error(match=match)
            if body.get("lose_driver_next_after_s") is not None:
                self.lose_driver_of_next_run(float(body["lose_driver_next_after_s"]), match=match)
            if body.get("time_out_next_run_s"):
                self.time_out_next_run(int(body["time_out_next_run_s"]), match=match)
            if body.get("delay_next_run_s"):
                self.delay_next_run(float(body["delay_next_run_s"]), match=match)
            if "pending_delay_s" in body or "terminating_delay_s" in body:
                self.delay_transitions(float(body.get("pending_delay_s", 0)), float(body.get("terminating_delay_s", 0)))
            with self._lock:
                return {"faults": dataclasses.asdict(self.faults)}
        if parts == ["emulator", "calls"]:
            with self._lock:
                return {"calls": [list(c) for c in self.calls], "cancel_requests": list(self.cancel_requests)}
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'.")


class _Handler(BaseHTTPRequestHandler):
    emulator: DatabricksEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; calls are recorded instead
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with self.emulator._lock:
            self.emulator.calls.append((self.command, urlparse(self.path).path, status))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        parsed = urlparse(self.path)
        raw = self._body()
        if parsed.path == "/oidc/.well-known/oauth-authorization-server":
            base = self.emulator.url
            return self._send(200, {
                "issuer": f"{base}/oidc",
                "authorization_endpoint": f"{base}/oidc/v1/authorize",
                "token_endpoint": f"{base}/oidc/v1/token",
            })
        if parsed.path == "/oidc/v1/token":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            if form.get("grant_type") != "client_credentials":
                return self._send(400, {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"})
            token = self.emulator.issue_oauth_token(client_id, client_secret)
            if token is None:
                return self._send(401, {"error": "invalid_client", "error_description": "Client authentication failed"})
            return self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "all-apis"})
        if not self.emulator.authorized(self.headers.get("Authorization")):
            return self._send(401, {
                "error_code": "UNAUTHENTICATED",
                "message": "Credential was not sent or was of an unsupported type for this API.",
            })
        try:
            if self.command == "GET":
                body: dict[str, Any] = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                if raw:
                    body.update(json.loads(raw))
            else:
                body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise _bad("Request body must be a JSON object.")
            result = self.emulator.route(self.command, parsed.path, body)
        except ApiError as error:
            return self._send(error.status, {"error_code": error.error_code, "message": error.message})
        except (ValueError, KeyError, TypeError) as error:
            return self._send(400, {"error_code": "MALFORMED_REQUEST", "message": f"Malformed request: {error}"})
        except Exception as error:  # noqa: BLE001 - answer like the service would
            return self._send(500, {"error_code": "INTERNAL_ERROR", "message": f"{error.__class__.__name__}: {error}"})
        self._send(200, result)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle


def _validate_new_cluster(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise _bad("new_cluster must be an object.")
    if not spec.get("spark_version"):
        raise _bad("Missing required field: new_cluster.spark_version")
    if not (spec.get("node_type_id") or spec.get("instance_pool_id")):
        raise _bad("Missing required field: new_cluster.node_type_id (or instance_pool_id)")
    has_workers, autoscale = "num_workers" in spec, spec.get("autoscale")
    if has_workers == bool(autoscale):
        raise _bad("Exactly one of new_cluster.num_workers and new_cluster.autoscale must be set.")
    if has_workers and (not isinstance(spec["num_workers"], int) or spec["num_workers"] < 0):
        raise _bad("new_cluster.num_workers must be a non-negative integer.")
    if autoscale:
        low, high = autoscale.get("min_workers"), autoscale.get("max_workers")
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high > 0):
            raise _bad("new_cluster.autoscale needs 0 <= min_workers <= max_workers and max_workers > 0.")


def _api_path(path: str) -> str:
    return path[len("dbfs:"):] if path.startswith("dbfs:") else path


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".tmp-{target.name}-{secrets_module.token_hex(4)}")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def _kill(process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_cluster_spark_config(data_dir: Path) -> dict[str, str]:
    """The emulated cluster's Spark: the project's local Spark + Delta settings, own scratch space."""
    from backfill_platform.resources.spark import local_spark_config
    from backfill_platform.settings import Settings

    config = local_spark_config(Settings(data_dir=Path(data_dir)))
    config["spark.app.name"] = "databricks-emulator-cluster"
    config["spark.driver.memory"] = "1g"
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A Databricks workspace emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--root", type=Path, default=Path(".data") / "databricks-emulator")
    parser.add_argument(
        "--token-env", default="BACKFILL_DATABRICKS_TOKEN",
        help="environment variable holding the token to accept (one is generated if it is unset)",
    )
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env) or "dapi-emulator-" + secrets_module.token_hex(16)
    emulator = DatabricksEmulator(args.root, token=token, port=args.port).start()
    print(f"Databricks emulator on {emulator.url}, storage in {emulator.root}. For the project:")
    print("  export BACKFILL_DEPLOYMENT=databricks")
    print(f"  export BACKFILL_DATABRICKS_HOST={emulator.url}")
    if not os.environ.get(args.token_env):
        print(f"  export {args.token_env}={token}")
    print(f"  export BACKFILL_DATABRICKS_CLUSTER_ID={DEFAULT_CLUSTER_ID}")
    print(f"Tables live under {emulator.warehouse}/<catalog>/<schema>/<table>. Ctrl-C stops.", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
