"""Processes the CLI and the tests start and stop: the Dagster daemon, and process groups.

``DaemonProcess`` runs ``dagster-daemon run`` for the project's workspace; ``KeepDaemon`` keeps one
serving the instance while a command waits on it; ``stop_process_group`` ends a process started in
its own session together with its children.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from backfill_platform.settings import PROJECT_ROOT

WORKSPACE_YAML = PROJECT_ROOT / "workspace.yaml"


def dagster_command(name: str) -> str:
    """A console script of this environment (``dagster-daemon``, ``dagster``): the one next to this
    interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed in this environment (pip install -e .)")
    return found


def stop_process_group(process: subprocess.Popen | None, timeout_s: float = 30) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL after
    ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class DaemonProcess:
    """``dagster-daemon run`` for the project's workspace, started and stopped by its owner."""

    def __init__(
        self,
        dagster_home: Path,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        workspace: Path = WORKSPACE_YAML,
    ):
        self.dagster_home = Path(dagster_home)
        self.workspace = Path(workspace)
        self.env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(self.dagster_home)}
        self.log_path = log_path or self.dagster_home / "daemon.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        initialize_instance_storage(self.dagster_home)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [dagster_command("dagster-daemon"), "run", "-w", str(self.workspace)],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def stop(self, timeout_s: float = 30) -> None:
        stop_process_group(self.process, timeout_s)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def initialize_instance_storage(dagster_home: Path) -> None:
    """Create the instance's SQLite schema now, in this process.

    A fresh DAGSTER_HOME whose schema is first created by two processes at once (a daemon starting
    while ``dagster job backfill`` or the webserver starts) can fail with "table alembic_version
    already exists" and kill the daemon; creating it here first avoids that race.
    """
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)


def daemon_is_running(instance: dg.DagsterInstance, tolerance_s: float = 30) -> bool:
    """Whether every daemon the instance needs sent a heartbeat in the last ``tolerance_s`` seconds."""
    try:
        heartbeats = instance.get_daemon_heartbeats()
        required = instance.get_required_daemon_types()
    except Exception:
        return False
    now = time.time()
    return bool(required) and all(
        kind in heartbeats and now - heartbeats[kind].timestamp <= tolerance_s for kind in required
    )


class KeepDaemon:
    """Keep one ``dagster-daemon`` serving the instance for as long as a command waits on it.

    On entry it starts a daemon when none sends heartbeats; while the command waits, a background
    check (every ``check_every_s``) starts another one if the daemon it started exited, or if the
    daemon that was running before stopped sending heartbeats. On exit it stops the daemon it
    started and wipes the heartbeats that daemon left, so the next command does not take the last
    ones (up to 30 s old) for a live daemon and wait for a queue that nobody serves.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        dagster_home: Path,
        say: Callable[[str], None],
        check_every_s: float = 10.0,
    ):
        self.instance = instance
        self.dagster_home = Path(dagster_home)
        self.say = say
        self.check_every_s = check_every_s
        self.daemon: DaemonProcess | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        if self.daemon is not None:
            code = self.daemon.process.poll()
            if code is None:
                return
            message = (
                f"The dagster-daemon this command started exited with code {code} (log: "
                f"{self.daemon.log_path}); starting another one."
            )
        elif daemon_is_running(self.instance):
            return
        elif self._thread is not None:
            message = "The dagster-daemon serving this instance stopped sending heartbeats; starting one."
        else:
            message = "No dagster-daemon is running for this instance: starting one for this backfill."
        self.say(message)
        self.daemon = DaemonProcess(self.dagster_home).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            try:
                self.check()
            except Exception as error:  # a failed check must not end the command's wait
                self.say(f"Could not check the dagster-daemon ({type(error).__name__}: {error}); will retry.")

    def __enter__(self) -> KeepDaemon:
        self.check()
        self._thread = threading.Thread(target=self._watch, name="keep-dagster-daemon", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.daemon is not None:
            self.daemon.stop()
            self.instance.wipe_daemon_heartbeats()
