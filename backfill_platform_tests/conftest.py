"""Shared fixtures: one local Spark session for the whole test session, fresh data directories and
fresh Dagster instances (DAGSTER_HOME folders with the project's own dagster.yaml)."""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path

# Step retries of transient errors wait 60 s, 180 s, 420 s by default: tests (and the daemons and
# runs they start, which inherit this environment) retry after 0.2 s. Set before the package loads.
os.environ.setdefault("BACKFILL_STEP_RETRY_DELAY_SECONDS", "0.2")
# The deployment's default, one shared Spark Connect server per data dir that outlives its runs, would
# leave a server behind each test: tests (and the processes they start) run an embedded JVM unless they
# test the shared server (test_shared_spark_server.py), which stops the servers it starts.
os.environ.setdefault("BACKFILL_SPARK_SERVER", "embedded")

import dagster as dg  # noqa: E402
import pytest

from backfill_platform.resources import local_resources
from backfill_platform.resources.spark import local_spark_config, start_spark_session
from backfill_platform.settings import PROJECT_ROOT, Settings

warnings.filterwarnings("ignore", message=".*is currently in beta.*")

ARTIFACTS = PROJECT_ROOT / "test-artifacts"

# Tests are tiered by cost (``make test-fast`` runs ``-m "not slow"``): a test is ``slow`` when it
# starts a Dagster daemon, a webserver, the Databricks workspace emulator, a Spark Connect server or a
# browser. Tests that use the ``emulator`` fixture are marked here; the others carry the mark themselves.
SERVICE_FIXTURES = {"emulator"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def spark_data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark")


@pytest.fixture(scope="session")
def spark(spark_data_root):
    """The one local Spark + Delta session of this pytest process (a JVM start costs ~7 s)."""
    session = start_spark_session(local_spark_config(Settings(data_dir=spark_data_root)))
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings of a fresh, empty local deployment under a temporary data directory."""
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def resources(settings, spark):
    """The local deployment's resources for ``settings``; Spark is the shared session."""
    return local_resources(settings)


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def make_dagster_home(path: Path, extra_yaml: str = "") -> Path:
    """A DAGSTER_HOME with the project's dagster.yaml (plus ``extra_yaml``) and its own storage."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", path / "dagster.yaml")
    if extra_yaml:
        with open(path / "dagster.yaml", "a") as config:
            config.write("\n" + extra_yaml)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(settings: Settings, dagster_home: Path, **extra: str) -> dict[str, str]:
    """Environment for Dagster processes (daemon, webserver, CLI) of a test deployment."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "BACKFILL_DATA_DIR": str(settings.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env
