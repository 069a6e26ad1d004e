"""Exactly one ``dagster-daemon`` per instance: an OS lock in DAGSTER_HOME, held by the daemon.

Dagster decides whether a daemon runs from heartbeats, which a loaded daemon can miss (it then gets
a twin) and which a stopped daemon leaves behind for 30 s. Two daemons on one instance can dequeue
the same run twice and send every alert twice. So the daemon process itself holds an exclusive
``flock`` on ``DAGSTER_HOME/daemon.lock`` for its whole life, whoever started it (the CLI, ``make
dev``, ``dagster dev``, ``dagster-daemon run`` by hand): the instance class (``instance.py``) takes
it when it loads inside a ``dagster-daemon run`` process, and a second daemon exits at once, naming
the daemon that holds the instance. The kernel releases the lock when the holder dies, even by
SIGKILL, so a crash never leaves a stale lock. Whether a daemon serves the instance is decided from
this lock only (``daemon_lock_holder``), never from heartbeats.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

LOCK_FILE = "daemon.lock"
# Exit code of a daemon refused because another one holds the instance (KeepDaemon adopts the other).
LOCK_HELD_EXIT = 75
# How long a starting daemon retries the lock: a ``daemon_lock_holder`` probe holds it shared for
# microseconds, which must not make a lone daemon think another one runs.
ACQUIRE_TRIES_S = 3.0

_held: dict[str, int] = {}  # lock path -> file descriptor this process holds the lock on


class DaemonAlreadyRunning(RuntimeError):
    def __init__(self, home: Path, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"backfill_platform: a dagster-daemon ({who}) already serves this instance (DAGSTER_HOME={home}); "
            "not starting a second one. Two daemons would dequeue runs twice and send every alert twice. "
            "Use the running one, or stop it first (SIGTERM to that pid stops the daemon without "
            "killing its runs)."
        )


def lock_path(home: str | os.PathLike) -> Path:
    return Path(home) / LOCK_FILE


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def daemon_lock_holder(home: str | os.PathLike) -> int | None:
    """The pid of the daemon serving the instance in ``home``, or None when no daemon holds it."""
    path = lock_path(home)
    if str(path) in _held:
        return os.getpid()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(path) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def hold_daemon_lock(home: str | os.PathLike) -> None:
    """Take the instance's daemon lock for the rest of this process's life, or raise
    ``DaemonAlreadyRunning`` naming the holder."""
    path = lock_path(home)
    if str(path) in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # close-on-exec: children never inherit it
    deadline = time.monotonic() + ACQUIRE_TRIES_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise DaemonAlreadyRunning(Path(home), _read_pid(path)) from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[str(path)] = fd


def is_daemon_process(argv: list[str] | None = None) -> bool:
    """Whether this process is ``dagster-daemon run``: by its console script, or run as Dagster's
    daemon module (``python -m`` with ``.../_daemon/__main__.py``), as ``dagster dev`` starts it."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or argv[1] != "run":
        return False
    program = Path(argv[0])
    return program.name == "dagster-daemon" or program.parts[-2:] == ("_daemon", "__main__.py")


def hold_daemon_lock_or_exit(home: str | os.PathLike) -> None:
    """Take the lock (in a ``dagster-daemon run`` process) or exit with ``LOCK_HELD_EXIT`` and the
    reason on stderr."""
    try:
        hold_daemon_lock(home)
    except DaemonAlreadyRunning as refused:
        print(refused, file=sys.stderr, flush=True)
        raise SystemExit(LOCK_HELD_EXIT) from None
