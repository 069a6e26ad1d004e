"""A throwaway PostgreSQL server for the Postgres instance-storage tests and ``bench/storage.py``.

Debian's server binaries (``make postgresql`` installs the ``postgresql`` package; they live in
``/usr/lib/postgresql/<version>/bin``, not on PATH) run a fresh cluster in a throwaway data directory,
listening on 127.0.0.1 only (TCP on a free port, the Unix socket in the server's own directory), with
password authentication (scram-sha-256) for one superuser and one database for Dagster.

initdb and postgres refuse to run as root: as root the server runs as the ``postgres`` user that the
Debian package creates (``runuser``), in a directory of its own under the system temp dir (pytest's
temp dirs are private to root, so ``postgres`` could not enter them); that directory is removed on
stop. Otherwise the server runs as the current user under ``root``.

    with PostgresServer(tmp_path) as server:
        home = postgres_dagster_home(tmp_path / "dagster_home")
        env = {**os.environ, **server.env()}   # DAGSTER_PG_* for dagster_home/postgres/dagster.yaml
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

from backfill_platform.settings import PROJECT_ROOT
from backfill_platform_tests.conftest import free_port

# The documented team variant of dagster_home/dagster.yaml (docs/team.md).
POSTGRES_DAGSTER_YAML = PROJECT_ROOT / "dagster_home" / "postgres" / "dagster.yaml"
USERNAME, DB_NAME = "dagster", "dagster"
SERVER_USER = "postgres"  # the system user of Debian's package, for a server started by root


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (``make postgresql`` installs them)."""


def postgres_bin_dir() -> Path:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else Debian's newest ``/usr/lib/postgresql/*/bin``."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresUnavailable("PostgreSQL's initdb was not found: run `make postgresql` (Debian's package).")
    return Path(found[-1]).parent


def seed_prerequisites(instance, resources, first_day: str, last_day: str) -> None:
    """Materialize source_data (10 rows per business day) and business_calendar, recorded in ``instance``:
    ``backfill-platform backfill --chunk-size ...`` requires both to be materialized in its instance."""
    import dagster as dg

    from backfill_platform_tests.helpers import business_calendar, source_data

    result = dg.materialize(
        [source_data, business_calendar], instance=instance, resources=resources,
        run_config={"ops": {"source_data": {"config": {"first_day": first_day, "last_day": last_day}}}},
    )
    assert result.success, "seeding source_data and business_calendar failed"


def postgres_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME with the Postgres variant of the project's dagster.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(POSTGRES_DAGSTER_YAML, path / "dagster.yaml")
    return path


class PostgresServer:
    """A PostgreSQL cluster started in a throwaway directory; ``stop`` (or leaving ``with``) ends it."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(16)
        self.as_root = os.geteuid() == 0
        self.directory: Path | None = None

    # -- the server's files ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *args] if self.as_root else list(args)

    def _run(self, *args: str, timeout_s: float = 120) -> None:
        completed = subprocess.run(self._command(*args), capture_output=True, text=True, timeout=timeout_s)
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} exited {completed.returncode}: {completed.stdout[-2000:]}"
                f"{completed.stderr[-2000:]}\nserver log:\n{self.log_text()[-3000:]}"
            )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        bin_dir = postgres_bin_dir()
        if self.as_root:
            self.directory = Path(tempfile.mkdtemp(prefix="backfill-postgres-"))
            shutil.chown(self.directory, SERVER_USER, SERVER_USER)
        else:
            self.directory = self.root / "postgres"
            self.directory.mkdir(parents=True, exist_ok=True)
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(password_file, SERVER_USER, SERVER_USER)
        self._run(
            str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", USERNAME, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync",
        )
        password_file.unlink()
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.directory}"
        self._run(
            str(bin_dir / "pg_ctl"), "start", "-w", "-t", "120", "-D", str(self.data_dir), "-l", str(self.log_path),
            "-o", options, timeout_s=180,
        )
        self._create_database()
        return self

    def _connect(self, dbname: str):
        import psycopg2  # dagster-postgres's driver (psycopg2-binary)

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=USERNAME, password=self.password, dbname=dbname)

    def _create_database(self) -> None:
        with closing(self._connect("postgres")) as connection:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DB_NAME}")

    def stop(self) -> None:
        if self.directory is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():  # started, or a start that timed out
                self._run(str(postgres_bin_dir() / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data_dir))
        finally:
            if self.as_root:  # our own directory outside pytest's tmp_path
                shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what clients need ---------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The variables ``dagster_home/postgres/dagster.yaml`` reads."""
        return {
            "DAGSTER_PG_USERNAME": USERNAME,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_HOSTNAME": "127.0.0.1",
            "DAGSTER_PG_DB_NAME": DB_NAME,
            "DAGSTER_PG_PORT": str(self.port),
        }

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one SQL statement on Dagster's database (what the tests read straight from Postgres)."""
        with closing(self._connect(DB_NAME)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
