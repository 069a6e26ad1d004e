"""The shared local Spark server: one Spark Connect server per data dir that local runs start and share.

The local deployment's default (``BACKFILL_SPARK_SERVER=shared``, docs/cluster.md). The first run that
needs Spark starts ``org.apache.spark.sql.connect.service.SparkConnectServer`` (shipped in pyspark 4.2's
jars) with its own Spark settings, bound to 127.0.0.1, under a supervisor process
(``python -m backfill_platform.resources.shared_spark supervise``); later runs, in any process, attach
to it (``acquire_shared_server``), and ``DeltaSparkResource`` opens a thin Spark Connect client instead of
starting a JVM (~5-7 s per run here). State, locks and log: ``<data_dir>/spark-connect/``.

Only its own user's processes can use it: the supervisor gives the server a random token (Spark
Connect's pre-shared token, ``SPARK_CONNECT_AUTHENTICATE_TOKEN``, through the environment, never on a
command line), written only to ``server.json`` in a folder no other user can read. A client without it
is refused (``UNAUTHENTICATED``). Clients connect as ``sc://localhost:PORT``: pyspark sends a token over
a plain local channel only to a host named ``localhost``.

Imports no pyspark at module level: ``backfill-platform backfill`` reads the state to name the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backfill_platform.settings import Settings

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
SERVER_STOP_TIMEOUT_S = 30  # the supervisor's wait for the server after SIGTERM, before SIGKILL
TOKEN_VARIABLE = "SPARK_CONNECT_AUTHENTICATE_TOKEN"  # read by the server (Spark 4.2) and by pyspark's client


class SparkServerError(RuntimeError):
    """The Spark Connect server did not come up; the message says why and where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(spark_config: dict[str, str], port: int) -> list[str]:
    """spark-submit of a Connect server with ``spark_config`` (an embedded session's:
    ``local_spark_config``), bound to 127.0.0.1:``port``."""
    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    config = dict(spark_config)
    config.pop("spark.app.name", None)
    config.pop("spark.driver.extraJavaOptions", None)  # long-lived: keep the JVM's full JIT and GC
    config.update(
        {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port),
            # idle sessions of finished runs are dropped instead of piling up in the server
            "spark.connect.session.manager.defaultSessionTimeout": "10m",
            "spark.log.level": "WARN",  # a long-lived server: INFO would grow its log by every query
        }
    )
    command = [str(spark_submit), "--name", "backfill_platform-connect", "--class", SERVER_CLASS]
    for key, value in config.items():
        if key == "spark.jars.packages":
            command += ["--packages", value]
        else:
            command += ["--conf", f"{key}={value}"]
    command.append("spark-internal")
    return command


def warm_up(remote: str, path: Path) -> None:
    """One tiny Delta round trip, so the first run does not pay for class loading (the client takes
    the server's token, if it has one, from the environment this process passes on)."""
    # In a child process: a Connect client switches its whole process (and the environment its
    # children inherit: SPARK_CONNECT_MODE_ENABLED) to Connect mode.
    code = (
        "import sys; from backfill_platform.resources.spark_connect import start_remote_session\n"
        "session = start_remote_session(sys.argv[1])\n"
        "session.range(2).write.format('delta').mode('overwrite').save(sys.argv[2])\n"
        "session.sql(f'DESCRIBE HISTORY delta.`{sys.argv[2]}` LIMIT 1').collect()\n"
    )
    completed = subprocess.run([sys.executable, "-c", code, remote, str(path)], capture_output=True, text=True)
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        raise SparkServerError(f"The Spark Connect server at {remote} did not complete a Delta write: "
                               f"{lines[-1] if lines else completed.returncode}")


# --- The shared server: the local deployment's default (BACKFILL_SPARK_SERVER=shared) ---------------
# The first run that needs Spark starts one server per data directory (state in <data_dir>/spark-connect/);
# later runs, in any process, attach to it. Runs hold a shared lock on ``users.lock`` while they use it,
# and a supervisor process stops the server after ``idle_s`` seconds with no run attached. Everything
# is decided under ``start.lock``, so a run never attaches to a server that is stopping.

STATE_FILE, START_LOCK, USERS_LOCK = "server.json", "start.lock", "users.lock"
SUPERVISOR_MODULE = "backfill_platform.resources.shared_spark"  # run with -m: supervise() at the bottom
# Starts a command in a new session and prints its pid: the command is then no child of the run that
# asked for it (the run does not wait for it, and init reaps it), so it outlives that run cleanly.
_DETACH = ("import subprocess, sys; log = open(sys.argv[1], 'wb'); print(subprocess.Popen(sys.argv[2:], "
           "stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True).pid)")


def shared_server_dir(settings: Settings) -> Path:
    """Where the shared server of ``settings``' data dir keeps its state and log."""
    return Path(settings.data_dir) / "spark-connect"


def server_url(state: dict) -> str:
    """The shared server's Spark Connect URL, without its token (what logs, tags and messages show)."""
    return f"sc://localhost:{state['port']}"


def token_for(state_dir: str | Path, address: str) -> str | None:
    """The token of the shared server in ``state_dir`` if it is the one at ``address`` (a run's
    ``tags.SPARK_REMOTE``), else None (a server since replaced, or another one)."""
    state = _read_state(Path(state_dir))
    return state.get("token") if state and server_url(state) == address else None


class SharedServer:
    """A run's hold on the shared server: the server stays up while this is open."""

    def __init__(self, state: dict, users_lock, started: bool):
        self.state, self.started = state, started
        self._users_lock = users_lock

    @property
    def remote(self) -> str:
        return server_url(self.state)

    @property
    def token(self) -> str:
        return self.state["token"]

    def release(self) -> None:
        if self._users_lock is not None:
            self._users_lock.close()  # drops the shared lock
            self._users_lock = None


# How Delta's jars are given changes once their cache is complete (Maven coordinates, then the cached
# files: resources/spark.py); the server's jars are the same either way.
JAR_KEYS = ("spark.jars", "spark.jars.packages", "spark.jars.ivy")


def fingerprint(spark_config: dict[str, str]) -> str:
    """What a run's Spark settings must share with the running server's to use it."""
    command = server_command({k: v for k, v in spark_config.items() if k not in JAR_KEYS}, 0)
    return hashlib.sha256(json.dumps(command).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # the token is in there: this user's only (also a folder made before it was)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle


def _read_state(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _signalable(send, process_id: int) -> bool:
    """Signal 0 through ``send`` (``os.kill`` or ``os.killpg``) reaches ``process_id``: it exists and is ours."""
    try:
        send(process_id, 0)
        return True
    except (ProcessLookupError, PermissionError):  # PermissionError: another user's process reuses the id
        return False


def _group_alive(pgid: int) -> bool:
    return _signalable(os.killpg, pgid)


def _supervisor_alive(state: dict) -> bool:
    """The supervisor (its pid is the group's id) lives: without it, nothing would stop the server."""
    return _signalable(os.kill, state["pgid"])


def answers(port: int, timeout_s: float = 2) -> bool:
    """Something listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _stop_group(pgid: int, timeout_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def acquire_shared_server(state_dir: Path, spark_config: dict[str, str], idle_s: float,
                          start_timeout_s: float = 180) -> SharedServer:
    """Attach to this data directory's shared server, starting it first if none runs. Raises
    :class:`SparkServerError` when it cannot start, or when the one running was started with other
    Spark settings (the caller falls back to an embedded JVM)."""
    state_dir = Path(state_dir)
    command_key = fingerprint(spark_config)
    with _locked(state_dir / START_LOCK):
        state = _read_state(state_dir)
        started = False
        if state and _supervisor_alive(state) and answers(state["port"]):
            if not state.get("token"):
                raise SparkServerError(
                    f"the shared Spark server of {state_dir} was started without an authentication token "
                    "(by an older backfill_platform); it stops after its idle time, or stop it with "
                    "`backfill-platform spark-server --stop`")
            if state["fingerprint"] != command_key:
                raise SparkServerError(
                    f"the shared Spark server of {state_dir} was started with other Spark settings "
                    "(stop it with `backfill-platform spark-server --stop` to use the new ones)")
        else:
            if state:  # a server that no longer answers, or lost its supervisor: stop what is left of it
                _stop_group(state["pgid"], 10)
            state = _start_supervisor(state_dir, spark_config, idle_s, start_timeout_s)
            started = True
        users = open(state_dir / USERS_LOCK, "a")
        fcntl.flock(users, fcntl.LOCK_SH)
    return SharedServer(state, users, started)


def _start_supervisor(state_dir: Path, spark_config: dict[str, str], idle_s: float, timeout_s: float) -> dict:
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    port = free_port()
    (state_dir / "config.json").write_text(json.dumps(spark_config))
    log_path = state_dir / "server.log"
    env = {key: value for key, value in os.environ.items() if key != "SPARK_CONNECT_MODE_ENABLED"}
    env[TOKEN_VARIABLE] = secrets.token_urlsafe(32)  # the supervisor's environment only: argv is public
    with open(log_path, "ab") as log:  # the server's own log starts afresh (_DETACH)
        detached = subprocess.run(
            [sys.executable, "-c", _DETACH, str(log_path), sys.executable, "-m", SUPERVISOR_MODULE, "supervise",
             str(state_dir), str(port), str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, check=True, timeout=60,
        )
    pid = int(detached.stdout.strip())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _read_state(state_dir)
        if state and state.get("pgid") == pid:
            return state
        if not _group_alive(pid):
            lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            raise SparkServerError(f"the shared Spark server stopped while starting "
                                   f"({lines[-1].strip() if lines else 'no output'}); see {log_path}")
        time.sleep(0.2)
    _stop_group(pid, 10)
    raise SparkServerError(f"the shared Spark server did not start within {timeout_s:.0f} s; see {log_path}")


def stop_shared_server(state_dir: Path, timeout_s: float = 30) -> bool:
    """Stop this data directory's shared server, if one runs (runs attached to it fail). True if
    one was stopped."""
    state_dir = Path(state_dir)
    if not (state_dir / START_LOCK).exists():
        return False
    with _locked(state_dir / START_LOCK):
        state = _read_state(state_dir)
        if not state:
            return False
        alive = _group_alive(state["pgid"])
        _stop_group(state["pgid"], timeout_s)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        return alive


def shared_server_state(state_dir: Path) -> dict | None:
    """The running shared server's state (pgid, port, started_at), or None."""
    state = _read_state(Path(state_dir))
    return state if state and _supervisor_alive(state) else None


def supervise(state_dir: Path, port: int, idle_s: float, poll_s: float = 1.0) -> int:
    """The shared server's supervisor (``python -m backfill_platform.resources.shared_spark supervise``): start
    the server in this process group, publish it, stop it after ``idle_s`` with no run attached."""
    spark_config = json.loads((state_dir / "config.json").read_text())
    command = server_command(spark_config, port)
    env = {"PYSPARK_PYTHON": sys.executable, **os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("SPARK_HOME", None)
    for key in ("spark.local.dir", "spark.sql.warehouse.dir"):
        if key in spark_config:
            Path(spark_config[key]).mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(command, env=env)  # same process group: stopping the group stops both
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while not answers(port):
            if server.poll() is not None:
                print(f"the Spark Connect server exited with code {server.returncode}", flush=True)
                return 1
            time.sleep(0.3)
        try:
            warm_up(server_url({"port": port}), state_dir / "warmup")
        except SparkServerError as error:
            print(error, flush=True)
            return 1
        state = {"pgid": os.getpid(), "port": port, "fingerprint": fingerprint(spark_config),
                 "started_at": time.time(), "idle_s": idle_s, "token": os.environ[TOKEN_VARIABLE]}
        _write_private(state_dir / STATE_FILE, json.dumps(state))
        print(f"shared Spark server ready on 127.0.0.1:{port}; stops after {idle_s:.0f} s idle", flush=True)
        idle_since = time.monotonic()
        while server.poll() is None:
            time.sleep(poll_s)
            if _in_use(state_dir):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_s:
                with _locked(state_dir / START_LOCK):  # no run can attach while this decides
                    if not _in_use(state_dir):
                        (state_dir / STATE_FILE).unlink(missing_ok=True)
                        print(f"idle for {idle_s:.0f} s: stopping", flush=True)
                        return 0
        print(f"the Spark Connect server exited with code {server.returncode}", flush=True)
        return 1
    finally:
        if (_read_state(state_dir) or {}).get("pgid") == os.getpid():
            (state_dir / STATE_FILE).unlink(missing_ok=True)
        server.terminate()
        try:
            server.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by this user only from the moment it exists."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _in_use(state_dir: Path) -> bool:
    with open(state_dir / USERS_LOCK, "a") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(users, fcntl.LOCK_UN)
        return False


if __name__ == "__main__" and sys.argv[1:2] == ["supervise"]:
    sys.exit(supervise(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
