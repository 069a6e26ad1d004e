"""The SQLAlchemy engines of Dagster's SQLite storages in this process (``dagster_internals.wait_for_sqlite_locks``
routes their ``create_engine`` here): one engine per database file, kept across Dagster's calls.

Dagster's SQLite storages create an engine with ``NullPool`` for every connection and dispose of it after:
every statement is compiled again (SQLAlchemy's statement cache is the engine's) and every operation opens
and closes the file (the event log: 4 connections per asset event). Here, each file gets one engine, whose
connections:

- wait up to the busy timeout for another process's write lock (``connect_args["timeout"]``), and find the
  file in WAL mode (checked once per file and process: readers never block writers);
- in worker processes (below), stay open between uses (``QueuePool``: one kept, more opened while threads
  need them and closed when returned; a returned connection is rolled back, so an idle one holds no lock).
  ``bench/event_store.py`` compares storing an asset event this way with Dagster's own (``event_store`` in
  ``make bench``'s results). Dagster's ``engine.dispose()`` after each use is a no-op on these engines;
- are checked against the file on each checkout: a file deleted or replaced since the connection opened
  it (``dagster run wipe`` in another process) gets a new connection, as Dagster's own per-use
  connections would, instead of writing into the deleted file;
- to a run's event log file, copy what they wrote into the file when they are returned (a passive WAL
  checkpoint), as the last close of Dagster's per-use connection does: Dagster's watcher of that file
  (the UI's live run logs) reacts to changes of the file, not of its WAL. The other files
  (``UNWATCHED_FILES``) take SQLite's automatic checkpoints.

Only worker processes keep connections (``keeps_connections``): the processes Dagster starts with
``multiprocessing`` to execute a run (its code server spawns one per run) or a step (the multiprocess
executor), where nearly all of a run's events are stored. SQLite's locks are POSIX advisory locks, which a
process drops on a file when it opens and closes that file by any other means (a backup, ``shutil.copytree``
of DAGSTER_HOME, a scan for secrets: sqlite.org/howtocorrupt.html, 2.2). A connection kept open across that
would go on writing into a WAL that another process, believing itself the file's last user, checkpoints
and deletes: those writes would be lost to every other process. The CLI, the daemon, the webserver, a
notebook or a test connect per use, as Dagster does; a run worker runs only Dagster and the assets.
``test_a_process_that_reads_the_instance_files_loses_no_run_written_after`` failed while every process
kept its connections.

In-memory databases (ephemeral instances) keep Dagster's own pool: their data lives in the connection.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Dagster's SQLite files that no Dagster file watcher follows (it watches a run's event log file): their
# writes reach the file at SQLite's automatic checkpoints
UNWATCHED_FILES = frozenset({"runs.db", "index.db", "schedules.db"})
ENGINES_KEPT = 32  # database files (the event log has one per run) whose engine this process keeps
_engines: dict[tuple, Any] = {}  # key -> engine, the least recently used first
_engines_lock = threading.Lock()
_wal_checked: set[str] = set()  # database URLs whose journal mode this process has checked


def keeps_connections() -> bool:
    """Whether this process keeps its SQLite connections open: a process started by ``multiprocessing``
    (Dagster's run and step workers; see the module's docstring for why no other)."""
    return multiprocessing.parent_process() is not None


def engine_for(
    create_engine: Callable, url: Any, args: tuple, kwargs: dict, busy_timeout_s: float, keep_open: bool | None = None
) -> Any:
    """The engine Dagster's ``create_engine(url, *args, **kwargs)`` gets for a SQLite file; its connections
    stay open between uses if ``keep_open`` (default: ``keeps_connections()``) and Dagster asked for
    ``NullPool``."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool, QueuePool

    connect_args = dict(kwargs.pop("connect_args", None) or {})
    connect_args["timeout"] = max(float(connect_args.get("timeout", 5.0)), busy_timeout_s)
    in_memory = "mode=memory" in str(url) or ":memory:" in str(url)
    kept_open = (keeps_connections() if keep_open is None else keep_open) and (
        kwargs.get("poolclass") is NullPool and not in_memory
    )
    key = (kept_open, str(url), repr(args), repr(sorted(connect_args.items())), repr(sorted(kwargs.items())))
    with _engines_lock:
        engine = _engines.pop(key, None)
        if engine is None:
            if kept_open:
                kwargs = {**kwargs, "poolclass": QueuePool, "pool_size": 1, "max_overflow": -1}
                connect_args["check_same_thread"] = False  # the pool hands a connection to one thread at a time
            engine = create_engine(url, *args, connect_args=connect_args, **kwargs)
            if not in_memory and str(url) not in _wal_checked:
                sqlalchemy.event.listen(engine, "connect", functools.partial(_keep_wal, str(url)))
            if kept_open:
                sqlalchemy.event.listen(engine, "connect", functools.partial(_remember_the_file, engine))
                sqlalchemy.event.listen(engine, "checkout", functools.partial(_still_the_file, engine))
                if Path(str(engine.url.database)).name not in UNWATCHED_FILES:
                    sqlalchemy.event.listen(engine, "checkin", _into_the_file)
                engine.dispose_for_good = engine.dispose
                engine.dispose = lambda *_, **__: None  # Dagster disposes of its engine after every use
        _engines[key] = engine  # the most recently used last
        while len(_engines) > ENGINES_KEPT:
            _dispose_for_good(_engines.pop(next(iter(_engines))))
    return engine


def _dispose_for_good(engine: Any) -> None:
    getattr(engine, "dispose_for_good", engine.dispose)()  # closes the connection it keeps


def _file_id(engine: Any) -> tuple[int, int] | None:
    try:
        status = os.stat(engine.url.database)
    except (OSError, TypeError):
        return None
    return status.st_dev, status.st_ino


def _remember_the_file(engine: Any, _dbapi_connection, connection_record) -> None:
    connection_record.info["file_id"] = _file_id(engine)  # what _still_the_file compares on checkout


def _still_the_file(engine: Any, dbapi_connection, connection_record, _proxy) -> None:
    """Pool checkout: a connection whose file was deleted or replaced is discarded (SQLAlchemy then opens a
    new one)."""
    from sqlalchemy.exc import DisconnectionError

    if connection_record.info.get("file_id") != _file_id(engine):
        raise DisconnectionError(f"{engine.url.database} was replaced since this connection opened it")
    connection_record.info["changes"] = dbapi_connection.total_changes


def _into_the_file(dbapi_connection, connection_record) -> None:
    """Pool checkin after a write: copy the WAL into the database file (a passive checkpoint), as the last
    close of Dagster's own per-use connection does. Dagster's file watcher on a run's event log (the UI's
    live logs) reacts to changes of that file, not of its WAL."""
    if dbapi_connection is None or dbapi_connection.total_changes == connection_record.info.get("changes"):
        return
    try:
        dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:
        pass  # a busy database: the next write's checkpoint, or SQLite's automatic one, copies it


def _keep_wal(url: str, dbapi_connection, _connection_record) -> None:
    """Switch the database to WAL mode if it is not (once per file and process; a file that is busy
    stays as it is, as Dagster alone would leave it)."""
    if url in _wal_checked:
        return
    _wal_checked.add(url)
    if str(dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]).lower() in ("wal", "memory"):
        return
    busy_ms = dbapi_connection.execute("PRAGMA busy_timeout").fetchone()[0]
    try:
        dbapi_connection.execute("PRAGMA busy_timeout = 1000")  # never hold a connection up for this
        dbapi_connection.execute("PRAGMA journal_mode = WAL").fetchone()
    except sqlite3.OperationalError:
        pass
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
