"""The emulated workspace: :class:`DatabricksEmulator` (storage, life cycle, fault injection, auth)
and its HTTP front (routing, bearer-token check, the OAuth M2M endpoints, Databricks' error bodies).
The APIs themselves are the mixins of :mod:`.dbfs`, :mod:`.clusters` and :mod:`.runs`."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

from databricks_emulator.clusters import (
    DEFAULT_CLUSTER_ID,
    RUNTIME_VERSION,
    ClustersApi,
    default_cluster_spark_config,
    kill_process_group,
)
from databricks_emulator.dbfs import DbfsApi
from databricks_emulator.errors import ApiError, DropConnection, bad
from databricks_emulator.faults import (
    DROP_SUBMIT,
    FAIL_AFTER_TASK,
    FAIL_POLL,
    FAIL_SUBMIT,
    FAIL_WRITE,
    HOLD_RUNNING,
    INTERNAL_ERROR,
    LOSE_DRIVER,
    LOSE_SUBMIT_ANSWER,
    PENDING,
    TIMEOUT,
    Faults,
)
from databricks_emulator.runs import EmulatedRun, JobsApi


class DatabricksEmulator(DbfsApi, ClustersApi, JobsApi):
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
        self.submitted: list[dict[str, Any]] = []  # bodies of the submits that created a run
        self.submit_requests: list[dict[str, Any]] = []  # every runs/submit received: body, outcome, run_id
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
            kill_process_group(run.process)
        for run in runs:
            run.done_event.wait(timeout=15)
        with self._cluster_lock:
            for process in self._cluster_processes.values():
                kill_process_group(process)
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
            self.faults.queue(FAIL_SUBMIT, (status, error_code, message), match, count)

    def drop_next_submits(self, count: int = 1, match: str | None = None) -> None:
        """The next ``count`` submits get no answer at all: the connection is closed before the run
        is created (the client sees "connection aborted")."""
        with self._lock:
            self.faults.queue(DROP_SUBMIT, None, match, count)

    def lose_next_submit_answer(self, status: int | None = 503, match: str | None = None,
                                error_code: str = "TEMPORARILY_UNAVAILABLE",
                                message: str = "The service is temporarily unavailable (emulated).") -> None:
        """The next submit creates and starts its run, then answers ``status`` (``None``: closes the
        connection without an answer): the client does not learn the run id and retries the call."""
        with self._lock:
            self.faults.queue(LOSE_SUBMIT_ANSWER, None if status is None else (status, error_code, message), match)

    def fail_next_polls(self, count: int = 1, status: int = 500, error_code: str = "INTERNAL_ERROR",
                        message: str = "Internal error happened while getting the run (emulated).",
                        match: str | None = None) -> None:
        """The next ``count`` ``runs/get`` of a run whose task contains ``match`` answer this error."""
        with self._lock:
            self.faults.queue(FAIL_POLL, (status, error_code, message), match, count)

    def end_next_run_with_internal_error(
        self, message: str = "Run result unavailable: the cluster failed to start (emulated internal error).",
        match: str | None = None,
    ) -> None:
        with self._lock:
            self.faults.queue(INTERNAL_ERROR, message, match)

    def end_next_run_with_internal_error_after_its_task(
        self, message: str = "The cluster was lost while the run was terminating (emulated internal error).",
        match: str | None = None,
    ) -> None:
        """The next run's task ends as it ends (its events and output written), then the run ends
        with life_cycle_state INTERNAL_ERROR instead of its result."""
        with self._lock:
            self.faults.queue(FAIL_AFTER_TASK, message, match)

    def lose_driver_of_next_run(self, after_s: float = 1.0, match: str | None = None) -> None:
        """Kill the next run's driver process ``after_s`` seconds after it starts RUNNING."""
        with self._lock:
            self.faults.queue(LOSE_DRIVER, after_s, match)

    def time_out_next_run(self, after_s: int = 1, match: str | None = None) -> None:
        """The next run gets ``timeout_seconds=after_s`` whatever the submit asked for."""
        with self._lock:
            self.faults.queue(TIMEOUT, after_s, match)

    def delay_next_run(self, pending_s: float, match: str | None = None) -> None:
        """The next run stays PENDING for ``pending_s`` seconds (or until cancelled)."""
        with self._lock:
            self.faults.queue(PENDING, pending_s, match)

    def hold_next_run(self, running_s: float, match: str | None = None) -> None:
        """The next run's driver process starts (the run is RUNNING) and waits ``running_s`` seconds
        before it runs the task (or until the run is cancelled, which kills it)."""
        with self._lock:
            self.faults.queue(HOLD_RUNNING, running_s, match)

    def fail_first_write_of_next_run(
        self, message: str = "Connection reset by peer while writing to cloud storage (emulated)",
        match: str | None = None,
    ) -> None:
        """Inside the next run, the task's first Spark ``DataFrameWriter.save``/``saveAsTable`` raises
        ``ConnectionResetError(message)``: the step's own code fails with a transient error; the run
        itself ends as its code makes it end."""
        with self._lock:
            self.faults.queue(FAIL_WRITE, message, match)

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

    def runs_matching(self, text: str) -> list[EmulatedRun]:
        """The runs (in submit order) whose task contains ``text``, e.g. a Dagster run id."""
        with self._lock:
            return [run for _, run in sorted(self.runs.items()) if text in json.dumps(run.task)]

    def submit_requests_matching(self, text: str) -> list[dict[str, Any]]:
        """Every runs/submit received whose body contains ``text`` (body, outcome, run_id)."""
        with self._lock:
            return [dict(r) for r in self.submit_requests if text in json.dumps(r["body"])]

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
        return any(secrets.compare_digest(presented, token) for token in valid)

    def issue_oauth_token(self, client_id: str | None, client_secret: str | None) -> str | None:
        expected = self._oauth_clients.get(client_id or "")
        if expected is None or not secrets.compare_digest(expected, client_secret or ""):
            return None
        token = "emulated-oauth-" + secrets.token_hex(16)
        with self._lock:
            self._access_tokens.add(token)
        return token

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
                return self.get_run(body)
            if action == "runs/list" and method == "GET":
                return self.list_runs(body)
            if action == "runs/get-output" and method == "GET":
                return self.run_output(self._find_run(body.get("run_id")))
            if action == "runs/cancel" and method == "POST":
                return self.cancel(body)
        if parts[:1] == ["api"] and parts[2:] == ["clusters", "get"]:
            return self.cluster(body.get("cluster_id"))
        if parts[:1] == ["api"] and len(parts) == 5 and parts[2] == "permissions":
            if method in ("PATCH", "PUT"):
                return self.update_permissions(parts[3], parts[4], body)
            return {
                "object_id": f"/{parts[3]}/{parts[4]}",
                "object_type": parts[3].rstrip("s"),
                "access_control_list": [],
            }
        if parts == ["api", "2.0", "dbfs"]:
            pass
        if parts == ["emulator", "faults"] and method == "POST":
            match = body.get("match")
            if body.get("fail_next_submits"):
                self.fail_next_submits(int(body["fail_next_submits"]), status=int(body.get("status", 500)), match=match)
            if body.get("drop_next_submits"):
                self.drop_next_submits(int(body["drop_next_submits"]), match=match)
            if "lose_next_submit_answer" in body:  # an HTTP status, or null: drop the connection
                status = body["lose_next_submit_answer"]
                self.lose_next_submit_answer(None if status is None else int(status), match=match)
            if body.get("fail_next_polls"):
                self.fail_next_polls(int(body["fail_next_polls"]), match=match)
            if body.get("hold_next_run_s"):
                self.hold_next_run(float(body["hold_next_run_s"]), match=match)
            if body.get("fail_first_write_of_next_run"):
                self.fail_first_write_of_next_run(match=match)
            if body.get("internal_error_after_task_next"):
                self.end_next_run_with_internal_error_after_its_task(match=match)
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
                return self._send(400, {
                    "error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials",
                })
            token = self.emulator.issue_oauth_token(client_id, client_secret)
            if token is None:
                return self._send(401, {"error": "invalid_client", "error_description": "Client authentication failed"})
            return self._send(200, {
                "access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "all-apis",
            })
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
                raise bad("Request body must be a JSON object.")
            result = self.emulator.route(self.command, parsed.path, body)
        except ApiError as error:
            return self._send(error.status, {"error_code": error.error_code, "message": error.message})
        except DropConnection:  # no answer at all: the client sees the connection closed
            self.close_connection = True
            with self.emulator._lock:
                self.emulator.calls.append((self.command, parsed.path, 0))
            return None
        except (ValueError, KeyError, TypeError) as error:
            return self._send(400, {"error_code": "MALFORMED_REQUEST", "message": f"Malformed request: {error}"})
        except Exception as error:  # noqa: BLE001 - answer like the service would
            return self._send(500, {"error_code": "INTERNAL_ERROR", "message": f"{error.__class__.__name__}: {error}"})
        self._send(200, result)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

