"""BACKFILL_SPARK_SERVER=shared, the local deployment's default: one warm Spark Connect server per data
dir, started by the first run that needs Spark, shared by later runs in any process, stopped after its
idle time, replaced when it died, and an embedded JVM when it cannot be used (shared_spark.py).

Runs go through real ``dagster asset materialize`` processes on a real instance; every server a test
starts is stopped by that test (``stop_shared_server`` in a ``finally``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform import tags
from backfill_platform.resources import local_resources, shared_spark
from backfill_platform.settings import PROJECT_ROOT, Settings

from .conftest import make_dagster_home, subprocess_env
from .helpers import rows_per_date, seed_source

pytestmark = pytest.mark.slow  # each test starts a Spark Connect server


def _materialize(env: dict[str, str], day: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "backfill_platform.definitions",
         "--select", "destination_data", "--partition", day],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def _run_of(instance: dg.DagsterInstance, day: str) -> tuple[dg.DagsterRun, list[str]]:
    (record,) = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": day}))
    messages = [entry.user_message for entry in instance.all_logs(record.dagster_run.run_id)]
    return record.dagster_run, messages


@pytest.fixture
def deployment(tmp_path, spark):
    """A local deployment whose source is seeded (by this process's embedded JVM), its environment for
    Dagster processes with the default BACKFILL_SPARK_SERVER=shared, and its shared server's folder."""
    settings = Settings(data_dir=tmp_path / "data")
    resources = local_resources(settings)
    seed_source(resources, first_day="2024-01-02", last_day="2024-01-10", rows_per_date=3)
    home = make_dagster_home(tmp_path / "home")
    env = subprocess_env(settings, home, BACKFILL_SPARK_SERVER="shared")
    state_dir = shared_spark.shared_server_dir(settings)
    try:
        yield env, state_dir, home, resources
    finally:
        shared_spark.stop_shared_server(state_dir)


def test_local_runs_share_one_server_that_the_first_run_starts_and_a_dead_one_is_replaced(deployment, spark, capsys):
    env, state_dir, home, resources = deployment
    assert Settings.from_env({}).spark.server == "shared"  # the deployment's default
    first = _materialize(env, "2024-01-02")
    assert first.returncode == 0, first.stderr[-3000:]
    state = shared_spark.shared_server_state(state_dir)
    assert state is not None, "the first run's server stopped with the run"
    second = _materialize(env, "2024-01-03")
    assert second.returncode == 0, second.stderr[-3000:]
    assert shared_spark.shared_server_state(state_dir)["pgid"] == state["pgid"]

    remote = shared_spark.server_url(state)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run, messages = _run_of(instance, "2024-01-02")
        assert run.tags[tags.SPARK_REMOTE] == remote and run.tags[tags.SPARK_SERVER_DIR] == str(state_dir)
        assert any(m.startswith(f"Started the shared Spark server {remote}") for m in messages), messages
        run, messages = _run_of(instance, "2024-01-03")
        assert run.tags[tags.SPARK_REMOTE] == remote
        assert any(m.startswith(f"Using the shared Spark server {remote}") for m in messages), messages
        # the server's token is nowhere in what the runs recorded (their events, tags, captured output)
        for run_id in [record.dagster_run.run_id for record in instance.get_run_records()]:
            recorded = [str(entry) for entry in instance.all_logs(run_id)]
            recorded += [str(instance.get_run_by_id(run_id).tags)]
            recorded += [completed.stdout + completed.stderr for completed in (first, second)]
            assert not [text for text in recorded if state["token"] in text]

    os.killpg(state["pgid"], signal.SIGKILL)  # the server dies between runs (OOM killer, a reboot)
    third = _materialize(env, "2024-01-04")
    assert third.returncode == 0, third.stderr[-3000:]
    replaced = shared_spark.shared_server_state(state_dir)
    assert replaced is not None and replaced["pgid"] != state["pgid"]
    assert rows_per_date(spark, resources["tables"].destination) == {
        "2024-01-02": 3, "2024-01-03": 3, "2024-01-04": 3}

    from backfill_platform.cli.backfill import say_shared_spark_server  # the last line of backfill's summary

    say_shared_spark_server(Settings.from_env(env))
    assert capsys.readouterr().out.strip() == (
        f"spark:                shared server sc://localhost:{replaced['port']}, stays up 15 min after its last run "
        "(`backfill-platform spark-server --stop`)")
    cli = [str(Path(sys.executable).with_name("backfill-platform")), "spark-server"]
    status = subprocess.run([*cli, "--status"], env=env, capture_output=True, text=True, timeout=120)
    assert f"runs on sc://localhost:{replaced['port']}" in status.stdout, status.stdout + status.stderr
    stop = subprocess.run([*cli, "--stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stop.stdout.startswith("Stopped the shared Spark server"), stop.stdout + stop.stderr
    assert shared_spark.shared_server_state(state_dir) is None
    with pytest.raises(ProcessLookupError):
        os.killpg(replaced["pgid"], 0)


def test_the_shared_server_waits_for_its_runs_then_stops_after_its_idle_time(tmp_path):
    """Held by runs (threads here, each with its own lock, as run processes have), the server stays up
    past its idle time; started once though three runs asked for it at the same moment; gone, with its
    process group, a few seconds after the last run let go."""
    settings = Settings(data_dir=tmp_path / "data")
    config = local_resources(settings)["pyspark"].spark_config
    state_dir = shared_spark.shared_server_dir(settings)
    try:
        with ThreadPoolExecutor(3) as pool:
            holds = list(pool.map(lambda _: shared_spark.acquire_shared_server(state_dir, config, idle_s=3), range(3)))
        assert sorted(hold.started for hold in holds) == [False, False, True]
        assert len({hold.remote for hold in holds}) == 1
        pgid = holds[0].state["pgid"]
        time.sleep(8)
        assert shared_spark.shared_server_state(state_dir) is not None, "stopped while runs held it"
        for hold in holds[:2]:
            hold.release()
        time.sleep(6)
        assert shared_spark.shared_server_state(state_dir) is not None, "stopped while one run held it"
        holds[2].release()
        released = time.monotonic()
        deadline = released + 30
        while shared_spark.shared_server_state(state_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        stopped_after = time.monotonic() - released
        assert shared_spark.shared_server_state(state_dir) is None
        assert stopped_after >= 2.5, f"stopped {stopped_after:.1f} s after the last release: idle time not kept"
        # the supervisor gives the JVM SERVER_STOP_TIMEOUT_S after SIGTERM, then SIGKILLs it
        deadline = time.monotonic() + shared_spark.SERVER_STOP_TIMEOUT_S + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the server's process group outlived its state")
        assert "idle for 3 s: stopping" in (state_dir / "server.log").read_text()
    finally:
        shared_spark.stop_shared_server(state_dir)


@pytest.mark.parametrize("case", ["start_fails", "other_settings", "no_token"])
def test_a_run_that_cannot_use_the_shared_server_runs_on_an_embedded_jvm_and_says_why(deployment, spark, case):
    env, state_dir, home, resources = deployment
    hold, config = None, resources["pyspark"].spark_config  # the runs' own Spark settings
    if case == "start_fails":  # a setting only the Connect server reads, which stops it at start
        env = {**env, "BACKFILL_SPARK_CONF": "spark.connect.grpc.maxInboundMessageSize=-1"}
        reason = "the shared Spark server stopped while starting (the Spark Connect server exited with code "
    elif case == "no_token":  # as a server that code before its token started looks (server.json has none)
        hold = shared_spark.acquire_shared_server(state_dir, config, 600)
        state = json.loads((state_dir / "server.json").read_text())
        del state["token"]
        (state_dir / "server.json").write_text(json.dumps(state))
        reason = "was started without an authentication token (by an older backfill_platform)"
    else:  # the running server was started with other Spark settings
        hold = shared_spark.acquire_shared_server(state_dir, {**config, "spark.sql.shuffle.partitions": "3"}, 600)
        reason = "was started with other Spark settings (stop it with `backfill-platform spark-server --stop`"
    try:
        completed = _materialize(env, "2024-01-05")
        assert completed.returncode == 0, completed.stderr[-3000:]
    finally:
        if hold is not None:
            hold.release()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run, messages = _run_of(instance, "2024-01-05")
    assert tags.SPARK_REMOTE not in run.tags
    warnings = [m for m in messages if m.startswith("Starting an embedded Spark instead of the shared Spark server")]
    assert len(warnings) == 1 and reason in warnings[0], messages
    assert rows_per_date(spark, resources["tables"].destination) == {"2024-01-05": 3}


def test_the_first_run_on_a_fresh_jar_cache_starts_the_server_and_the_next_run_shares_it(deployment, tmp_path):
    """On a fresh machine Delta's jars are given to Spark as Maven coordinates until the cache is marked
    complete, and as the cached files after: the server the first run starts resolves them (into the
    cache, one process at a time), the run marks the cache complete, and the next run, whose settings now
    name the files, shares that server instead of falling back to its own JVM."""
    env, state_dir, home, _ = deployment
    cache = tmp_path / "jar-cache"
    shutil.copytree(Settings().spark.jar_cache_dir, cache)  # the jars this machine resolved once
    for marker in cache.glob("*/complete"):
        marker.unlink()
    env = {**env, "BACKFILL_JAR_CACHE": str(cache)}
    first = _materialize(env, "2024-01-08")
    assert first.returncode == 0, first.stderr[-3000:]
    assert list(cache.glob("*/complete")), "the jar cache was not marked complete"
    pgid = shared_spark.shared_server_state(state_dir)["pgid"]
    second = _materialize(env, "2024-01-09")
    assert second.returncode == 0, second.stderr[-3000:]
    assert shared_spark.shared_server_state(state_dir)["pgid"] == pgid
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _, messages = _run_of(instance, "2024-01-08")
        assert any(m.startswith("Started the shared Spark server") for m in messages), messages
        _, messages = _run_of(instance, "2024-01-09")
        assert any(m.startswith("Using the shared Spark server") for m in messages), messages


# A Spark Connect client in its own process (a Connect client switches its whole process to Connect mode):
# prints the answer to a query, or the error's class and message and exits 3.
_CLIENT = (
    "import sys\nfrom pyspark.sql import SparkSession\n"
    "try:\n    print(SparkSession.builder.remote(sys.argv[1]).create().sql('SELECT 41 + 1').collect()[0][0])\n"
    "except Exception as error:\n    print(type(error).__name__, ' '.join(str(error).split())[:600])\n"
    "    sys.exit(3)\n"
)


def _connect(url: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    return subprocess.run([sys.executable, "-c", _CLIENT, url], env=env, capture_output=True, text=True, timeout=180)


def test_only_holders_of_its_token_can_use_the_shared_server_and_the_token_stays_private(tmp_path):
    """As another user of the same host would try it: the server listens on 127.0.0.1, and a Spark
    Connect client could run any code in it as its owner. A client without the server's token, or with
    a wrong one, is refused; with the token from server.json it runs (the control). The token is in no
    process's command line (``ps`` shows those to every user), not in the server's log, and server.json
    and its folder are the owner's only."""
    settings = Settings(data_dir=tmp_path / "data")
    state_dir = shared_spark.shared_server_dir(settings)
    try:
        shared_spark.acquire_shared_server(state_dir, local_resources(settings)["pyspark"].spark_config, 600).release()
        state = shared_spark.shared_server_state(state_dir)
        port = state["port"]
        for url in (f"sc://127.0.0.1:{port}", f"sc://localhost:{port}", f"sc://localhost:{port}/;token=not-the-token"):
            refused = _connect(url)
            assert refused.returncode == 3 and "UNAUTHENTICATED" in refused.stdout, (url, refused.stdout,
                                                                                     refused.stderr[-2000:])
        token = state["token"]
        assert len(token) >= 32
        allowed = _connect(f"sc://localhost:{port}/;token={token}")
        assert (allowed.returncode, allowed.stdout.strip()) == (0, "42"), allowed.stdout + allowed.stderr[-2000:]

        assert (state_dir / "server.json").stat().st_mode & 0o777 == 0o600
        assert state_dir.stat().st_mode & 0o777 == 0o700
        assert token not in (state_dir / "server.log").read_text(errors="replace")
        command_lines = []
        for process in Path("/proc").iterdir():
            try:
                command_lines.append((process / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:  # gone, or not ours to read
                continue
        assert any(str(port) in line and shared_spark.SERVER_CLASS in line for line in command_lines), "no server seen"
        assert not [line for line in command_lines if token in line]
    finally:
        shared_spark.stop_shared_server(state_dir)
