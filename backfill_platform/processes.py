"""Processes the CLI and the tests start and stop: the Dagster daemon, and process groups.

``DaemonProcess`` runs ``dagster-daemon run`` for the project's workspace; ``KeepDaemon`` keeps one
serving the instance while a command waits on it, and stops only the daemon it started, never the
runs that daemon launched; ``stop_process_group`` ends a process started in its own session together
with its children (for servers the tests own). Whether a daemon serves an instance is decided by the
daemon lock in DAGSTER_HOME (``daemon_lock.py``), not by heartbeats.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from backfill_platform import dagster_internals
from backfill_platform.daemon_lock import LOCK_HELD_EXIT, daemon_lock_holder
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
        self.command = [dagster_command("dagster-daemon"), "run", "-w", str(self.workspace)]
        self.process: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        initialize_instance_storage(self.dagster_home)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the daemon and everything it started (its code server, run workers, their JVMs):
        for tests that own the whole deployment. Users' daemons stop with ``stop_daemon_only``."""
        stop_process_group(self.process, timeout_s)

    def stop_daemon_only(self, timeout_s: float = 60) -> None:
        """SIGTERM the daemon process alone (Dagster treats it as Ctrl-C). Its code server shuts down
        once the runs it executes have ended, so runs in flight finish; SIGKILL after ``timeout_s``
        (the code server then stops on its own when the daemon's heartbeats stop)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

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


class KeepDaemon:
    """Keep one ``dagster-daemon`` serving the instance for as long as a command waits on it.

    On entry it starts a daemon when none holds the instance's daemon lock; while the command waits,
    a background check (every ``check_every_s``) starts another one if the daemon it started exited,
    or if the daemon that was serving before is gone. When two commands start daemons at once, the
    second daemon exits (``daemon_lock.LOCK_HELD_EXIT``) and its command uses the first. On exit it
    stops the daemon it started, and only that process: runs in flight finish, queued runs and
    backfills wait for the next daemon, and the command says so.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        dagster_home: Path,
        say: Callable[[str], None],
        check_every_s: float = 10.0,
        purpose: str = "this backfill",
    ):
        self.instance = instance
        self.purpose = purpose
        self.dagster_home = Path(dagster_home)
        self.say = say
        self.check_every_s = check_every_s
        self.daemon: DaemonProcess | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        message = None
        if self.daemon is not None:
            code = self.daemon.process.poll()
            if code is None:
                return
            if code != LOCK_HELD_EXIT:  # else it was refused because another daemon holds the instance
                message = (
                    f"The dagster-daemon this command started exited with code {code} (log: "
                    f"{self.daemon.log_path}); starting another one."
                )
        if daemon_lock_holder(self.dagster_home) is not None:
            self.daemon = None  # another daemon serves the instance: use that one
            return
        if message is None:
            message = (
                "The dagster-daemon serving this instance stopped; starting one."
                if self._thread is not None
                else f"No dagster-daemon is running for this instance: starting one for {self.purpose}."
            )
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
        if self.daemon is None or self.daemon.process.poll() is not None:
            return
        pid = self.daemon.process.pid
        in_flight, waiting = unfinished_work(self.instance)
        self.daemon.stop_daemon_only()
        if not (in_flight or waiting):
            return
        parts = [f"Stopped the dagster-daemon this command started (pid {pid}), not its runs."]
        if in_flight:
            parts.append(
                f"{in_flight} run(s) in flight keep running until they end (with no daemon, nothing "
                "enforces their maximum runtime or retries them until one runs again)."
            )
        if waiting:
            parts.append(
                f"{waiting} queued run(s) and backfill(s) wait for a dagster-daemon: `make dev` or the "
                "next backfill-platform command starts one."
            )
        self.say(" ".join(parts))


def unfinished_work(instance: dg.DagsterInstance) -> tuple[int, int]:
    """(runs in flight, queued runs + backfills still requested) in the instance."""
    in_flight = instance.get_runs_count(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                                dg.DagsterRunStatus.CANCELING])
    )
    queued = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    return in_flight, queued + len(dagster_internals.requested_backfills(instance))
