"""Jobs: ``runs/submit`` (single ``spark_python_task``), ``runs/get``, ``runs/get-output``,
``runs/cancel``, ``runs/list`` and ``permissions``, and the execution of each run by a driver subprocess
(``driver.py``): PENDING -> RUNNING -> TERMINATING -> TERMINATED with result_state
SUCCESS/FAILED/TIMEDOUT/CANCELED (or INTERNAL_ERROR), ``timeout_seconds`` honoured.

A submit's ``new_cluster`` and ``libraries`` are checked as Databricks checks them (nothing is
installed). Each run records the pid of the driver JVM its Spark ran in (``EmulatedRun.jvm_pid``).

``idempotency_token`` as documented: a submit whose token an earlier submit already used creates
nothing and answers that submit's ``run_id`` (whatever state the run is in); at most 64 characters."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from databricks_emulator.clusters import (
    DRIVER_SCRIPT,
    cancel_tagged_jobs,
    java_pid_in_group,
    kill_process_group,
    run_job_tag,
    validate_new_cluster,
)
from databricks_emulator.dbfs import MAX_BLOCK
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

MAX_IDEMPOTENCY_TOKEN = 64  # characters, as documented for runs/submit
MAX_LIST_LIMIT = 25  # runs/list: at most 25 runs per page, as documented
LIBRARY_KINDS = {  # a task library: exactly one of these keys (and, for an object, its required field)
    "pypi": "package", "maven": "coordinates", "cran": "package", "whl": None, "jar": None, "egg": None,
    "requirements": None,
}


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
    idempotency_token: str | None = None
    hold_s: float = 0.0  # HOLD_RUNNING: the driver waits this long before running the task
    fail_write: str | None = None  # FAIL_WRITE: the message of the task's first (failing) Spark write
    fail_after_task: str | None = None  # FAIL_AFTER_TASK: the state message of the INTERNAL_ERROR after the task
    # The driver JVM the run's Spark ran in: the existing cluster's one JVM, or (new job cluster) the
    # run's own, started by its driver process. Read from /proc (None where there is none, or no /proc).
    jvm_pid: int | None = None
    cancelled_jobs: int = 0  # Spark jobs of the run cancelled on the existing cluster's JVM when it ended early


class JobsApi:
    """The jobs part of :class:`~databricks_emulator.server.DatabricksEmulator` (a mixin: the emulator
    sets these attributes; ``cluster``/``cluster_gateway``/``_cluster_env`` come from the clusters
    mixin, ``dbfs_local``/``_translate`` from the DBFS one)."""

    root: Path
    runs_root: Path
    url: str
    faults: Faults
    runs: dict[int, EmulatedRun]
    clusters: dict[str, dict[str, Any]]
    submitted: list[dict[str, Any]]
    submit_requests: list[dict[str, Any]]
    cancel_requests: list[int]
    permission_updates: list[tuple[str, str, dict[str, Any]]]
    warm_existing_clusters: bool
    _lock: threading.RLock
    _next_id: int  # shared with DBFS handles, as one id sequence
    _idempotency: dict[str, int]

    # ------------------------------------------------------------------ permissions

    def update_permissions(self, object_type: str, object_id: str, body: dict[str, Any]) -> dict[str, Any]:
        acl = body.get("access_control_list")
        if not isinstance(acl, list):
            raise bad("access_control_list must be a list.")
        for entry in acl:
            if not entry.get("permission_level") or not any(
                entry.get(k) for k in ("user_name", "group_name", "service_principal_name")
            ):
                raise bad(f"Invalid access control entry {entry}.")
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
        """``runs/submit``. Every request is recorded in ``submit_requests`` (its body and what it got)."""
        body_text = json.dumps(body, sort_keys=True)
        request: dict[str, Any] = {"body": body, "outcome": "received", "run_id": None}
        token = body.get("idempotency_token")
        with self._lock:
            self.submit_requests.append(request)
            refused = self.faults.take(FAIL_SUBMIT, body_text)
            if refused is not None:
                request["outcome"] = f"refused {refused.value[0]}"
                raise ApiError(*refused.value)
            if self.faults.take(DROP_SUBMIT, body_text) is not None:
                request["outcome"] = "dropped"
                raise DropConnection()
            if token is not None and (not isinstance(token, str) or len(token) > MAX_IDEMPOTENCY_TOKEN):
                request["outcome"] = "refused 400"
                raise bad(f"idempotency_token must be a string of at most {MAX_IDEMPOTENCY_TOKEN} characters.")
            if token and token in self._idempotency:
                request.update(outcome="existing run", run_id=self._idempotency[token])
                return {"run_id": self._idempotency[token]}
        try:
            task, cluster_id, new, timeout = self._validated_submit(body)
        except ApiError as error:
            request["outcome"] = f"refused {error.status}"
            raise
        with self._lock:
            if token and token in self._idempotency:  # a concurrent submit with the same token won
                request.update(outcome="existing run", run_id=self._idempotency[token])
                return {"run_id": self._idempotency[token]}
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
                    **(
                        {"num_workers": new["num_workers"]} if "num_workers" in new else {"autoscale": new["autoscale"]}
                    ),
                }
            run = EmulatedRun(
                run_id=run_id, task_run_id=task_run_id, job_id=run_id + 500_000,
                run_name=body.get("run_name") or "Untitled", task=task, cluster_id=cluster_id,
                timeout_seconds=timeout, submitted_at_ms=_now_ms(), idempotency_token=token,
            )
            self.runs[run_id] = run
            self.submitted.append(body)
            request.update(outcome="created", run_id=run_id)
            if token:
                self._idempotency[token] = run_id
            delayed = self.faults.take(PENDING, body_text)
            pending_s = delayed.value if delayed else self.faults.pending_delay_s
            internal = self.faults.take(INTERNAL_ERROR, body_text)
            internal = internal.value if internal else None
            lost = self.faults.take(LOSE_DRIVER, body_text)
            lose_after = lost.value if lost else None
            timed = self.faults.take(TIMEOUT, body_text)
            if timed is not None:
                run.timeout_seconds = int(timed.value)
            held = self.faults.take(HOLD_RUNNING, body_text)
            run.hold_s = float(held.value) if held else 0.0
            write = self.faults.take(FAIL_WRITE, body_text)
            run.fail_write = write.value if write else None
            after = self.faults.take(FAIL_AFTER_TASK, body_text)
            run.fail_after_task = after.value if after else None
            answer_lost = self.faults.take(LOSE_SUBMIT_ANSWER, body_text)
        threading.Thread(
            target=self._execute, args=(run, pending_s, internal, lose_after), name=f"run-{run_id}", daemon=True
        ).start()
        if answer_lost is not None:  # the run exists and starts; the client never learns its id
            if answer_lost.value is None:
                request["outcome"] = "created, connection dropped"
                raise DropConnection()
            request["outcome"] = f"created, answered {answer_lost.value[0]}"
            raise ApiError(*answer_lost.value)
        return {"run_id": run_id}

    def _validated_submit(self, body: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any] | None, int]:
        """The task, the existing cluster id, the new cluster spec and timeout_seconds of a submit."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or len(tasks) != 1:
            raise bad("The emulator runs submits with exactly one task (tasks must hold one task).")
        task = tasks[0]
        if not task.get("task_key"):
            raise bad("Task key must be set.")
        if "spark_python_task" not in task:
            raise bad("The emulator supports spark_python_task only.")
        python_task = task["spark_python_task"]
        if not python_task.get("python_file"):
            raise bad("spark_python_task.python_file must be set.")
        existing, new = task.get("existing_cluster_id"), task.get("new_cluster")
        if bool(existing) == bool(new):
            raise bad("Exactly one of existing_cluster_id and new_cluster must be set.")
        timeout = int(body.get("timeout_seconds") or 0)
        if timeout < 0:
            raise bad("timeout_seconds must not be negative.")
        if existing:
            self.cluster(existing)
        else:
            validate_new_cluster(new)
        _validate_libraries(task.get("libraries", []))
        return task, existing or "", new, timeout

    def list_runs(self, body: dict[str, Any]) -> dict[str, Any]:
        """``runs/list``: newest first, ``limit`` (1-25, default 25) per page, ``page_token`` /
        ``offset``, filters ``job_id``, ``run_type``, ``active_only``, ``completed_only``,
        ``start_time_from`` / ``start_time_to``; tasks only with ``expand_tasks``."""

        def flag(name: str) -> bool:
            return str(body.get(name, "false")).lower() == "true"

        try:
            limit = int(body.get("limit") or MAX_LIST_LIMIT)
            offset = int(body.get("page_token") or body.get("offset") or 0)
            time_from, time_to = int(body.get("start_time_from") or 0), int(body.get("start_time_to") or 0)
            job_id = int(body["job_id"]) if body.get("job_id") else None
        except ValueError as error:
            raise bad(f"Invalid runs/list parameter: {error}") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise bad(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}.")
        if flag("active_only") and flag("completed_only"):
            raise bad("active_only and completed_only cannot both be true.")
        with self._lock:
            runs = sorted(self.runs.values(), key=lambda run: run.run_id, reverse=True)
        selected = []
        for run in runs:
            started = run.start_time or run.submitted_at_ms
            done = run.done_event.is_set()
            if (job_id is not None and run.job_id != job_id) or body.get("run_type", "SUBMIT_RUN") != "SUBMIT_RUN":
                continue
            if (flag("active_only") and done) or (flag("completed_only") and not done):
                continue
            if (time_from and started < time_from) or (time_to and started > time_to):
                continue
            selected.append(run)
        page = selected[offset:offset + limit]
        listed = []
        for run in page:
            entry = self.run_json(run)
            if not flag("expand_tasks"):
                entry.pop("tasks")
            listed.append(entry)
        answer: dict[str, Any] = {"runs": listed, "has_more": offset + limit < len(selected)}
        if answer["has_more"]:
            answer["next_page_token"] = str(offset + limit)
        if offset:
            answer["prev_page_token"] = str(max(offset - limit, 0))
        return answer

    def get_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """``runs/get`` (a FAIL_POLL fault matching the run's task answers an error instead)."""
        run = self._find_run(body.get("run_id"))
        with self._lock:
            failed = self.faults.take(FAIL_POLL, json.dumps(run.task, sort_keys=True))
        if failed is not None:
            raise ApiError(*failed.value)
        return self.run_json(run)

    def _find_run(self, run_id: Any) -> EmulatedRun:
        try:
            key = int(run_id)
        except (TypeError, ValueError):
            raise bad(f"Invalid run_id {run_id!r}.") from None
        with self._lock:
            for run in self.runs.values():
                if key in (run.run_id, run.task_run_id):
                    return run
        raise bad(f"Run {run_id} does not exist.")

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

    # ------------------------------------------------------------------ execution (the driver subprocess)

    def _stop_driver(self, run: EmulatedRun, gateway: dict[str, Any] | None) -> None:
        """End a run early: kill its driver process group at once (no grace: inside a step Dagster's
        ``capture_interrupts`` maps SIGTERM to its own handler and the step could run on), then cancel its
        Spark jobs on the shared JVM."""
        kill_process_group(run.process, signal.SIGKILL)
        if gateway is not None:
            try:
                run.cancelled_jobs = cancel_tagged_jobs(gateway, run_job_tag(run.run_id))
            except Exception as error:  # py4j's: the cluster's JVM is gone, and the run's jobs with it
                run.error = f"Could not reach the cluster's JVM to cancel the run's Spark jobs: {error}"

    def _execute(self, run: EmulatedRun, pending_s: float, internal: str | None, lose_after: float | None) -> None:
        try:
            self._execute_inner(run, pending_s, internal, lose_after)
        except Exception as error:  # the emulator's own bug: never leave a run hanging
            run.error = f"{error.__class__.__name__}: {error}"
            self._finish(run, "FAILED", f"Emulator error: {error}", life_cycle="INTERNAL_ERROR")

    def _execute_inner(
        self, run: EmulatedRun, pending_s: float, internal: str | None, lose_after: float | None
    ) -> None:
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
        if run.hold_s:
            env["EMULATOR_HOLD_S"] = str(run.hold_s)
        if run.fail_write:
            env["EMULATOR_FAIL_FIRST_WRITE"] = run.fail_write
        gateway = None  # the existing cluster's shared JVM the run attaches to, if any
        if self.warm_existing_clusters and run.task.get("existing_cluster_id"):
            try:
                gateway = self.cluster_gateway(run.cluster_id)
            except RuntimeError as error:
                run.error = str(error)
                self._finish(run, "FAILED", f"Cluster {run.cluster_id} failed to start.", life_cycle="INTERNAL_ERROR")
                return
            env["EMULATOR_GATEWAY_PORT"] = str(gateway["port"])
            env["EMULATOR_GATEWAY_SECRET"] = str(gateway["secret"])
            env["EMULATOR_RUN_TAG"] = run_job_tag(run.run_id)
            run.jvm_pid = gateway.get("jvm_pid")
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
        own_jvm = not env.get("EMULATOR_GATEWAY_PORT")  # a new job cluster: the driver starts its own JVM
        next_look = 0.0
        while True:
            code = run.process.poll()
            if code is not None:
                break
            if own_jvm and run.jvm_pid is None and time.monotonic() >= next_look:
                run.jvm_pid = java_pid_in_group(run.process.pid)
                next_look = time.monotonic() + 0.5
            if run.cancel_event.is_set():
                self._stop_driver(run, gateway)
                self._finish(run, "CANCELED", "Run cancelled.")
                return
            if run.timeout_seconds and time.monotonic() - started > run.timeout_seconds:
                self._stop_driver(run, gateway)
                run.error = f"Run timed out after {run.timeout_seconds} seconds."
                self._finish(run, "TIMEDOUT", f"Run timed out after {run.timeout_seconds} seconds (timeout_seconds).")
                return
            if lose_after is not None and time.monotonic() - running_since > lose_after:
                self._stop_driver(run, gateway)
                message = "The Spark driver has stopped unexpectedly and is restarting (driver lost, emulated)."
                run.error = message
                self._finish(run, "FAILED", message)
                return
            time.sleep(0.1)
        if code == 0 and run.fail_after_task:
            run.error = run.fail_after_task
            self._finish(run, "FAILED", run.fail_after_task, life_cycle="INTERNAL_ERROR")
            return
        if code == 0:
            self._finish(run, "SUCCESS", "")
            return
        stderr = (run.run_dir / "stderr.log").read_text(errors="replace")
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        run.error = lines[-1] if lines else f"Python process exited with code {code}."
        run.error_trace = stderr[-20000:]
        self._finish(run, "FAILED", "Workload failed, see run output for details")


def _validate_libraries(libraries: Any) -> None:
    """A task's ``libraries``: a list of objects with exactly one library kind each, as Databricks
    checks them when the run is submitted (installing them is not emulated)."""
    if not isinstance(libraries, list):
        raise bad("libraries must be a list.")
    for library in libraries:
        kinds = [kind for kind in (library if isinstance(library, dict) else {}) if kind in LIBRARY_KINDS]
        if not isinstance(library, dict) or len(kinds) != 1 or len(library) != 1:
            raise bad(f"Invalid library {library!r}: give exactly one of {', '.join(sorted(LIBRARY_KINDS))}.")
        kind, value = kinds[0], library[kinds[0]]
        required = LIBRARY_KINDS[kind]
        if required and not (isinstance(value, dict) and isinstance(value.get(required), str) and value[required]):
            raise bad(f"Invalid library {library!r}: {kind}.{required} must be a non-empty string.")
        if not required and not (isinstance(value, str) and value):
            raise bad(f"Invalid library {library!r}: {kind} must be a path.")


def _now_ms() -> int:
    return int(time.time() * 1000)
