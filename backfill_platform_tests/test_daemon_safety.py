"""Process safety of the daemon the CLI keeps (issue 12): one daemon per instance, decided by an OS
lock in DAGSTER_HOME, and stopping a daemon never kills the runs it launched.

Each scenario is real: real ``dagster-daemon`` processes, the real CLI, real runs on local Spark.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import dagster as dg
import pytest

from backfill_platform.processes import DaemonProcess, KeepDaemon, initialize_instance_storage, stop_process_group
from backfill_platform_tests.conftest import free_port, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import seed_source
from backfill_platform_tests.test_entry_points import default_sigint, running, wait_until

BIN = os.path.dirname(sys.executable)
IN_FLIGHT = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


def lock_holder(home):
    from backfill_platform.daemon_lock import daemon_lock_holder  # the new API (absent on the old code)

    return daemon_lock_holder(home)


def test_the_daemon_lock_names_its_holder_and_is_freed_when_the_holder_is_killed(tmp_path):
    from backfill_platform.daemon_lock import DaemonAlreadyRunning, hold_daemon_lock, is_daemon_process

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom backfill_platform.daemon_lock import hold_daemon_lock\n"
         f"hold_daemon_lock({str(tmp_path)!r}); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path) == holder.pid
        with pytest.raises(DaemonAlreadyRunning, match=f"a dagster-daemon \\(pid {holder.pid}\\) already serves"):
            hold_daemon_lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None  # SIGKILL leaves no stale lock
    assert is_daemon_process(["/venv/bin/dagster-daemon", "run", "-w", "workspace.yaml"])
    assert is_daemon_process(["/venv/lib/python3.11/site-packages/dagster/_daemon/__main__.py", "run"])
    assert not is_daemon_process(["/venv/bin/dagster-daemon", "liveness-check"])
    assert not is_daemon_process(["/venv/bin/dagster-webserver", "run"])


@pytest.mark.slow
def test_ctrl_c_leaves_started_runs_running_and_the_rest_to_a_later_daemon(spark, settings, resources, tmp_path):
    """Ctrl-C while a run is in flight: the CLI stops the daemon it started, but not the run, which
    ends SUCCESS on its own; the backfill waits for a later daemon, and the CLI says both."""
    seed_source(resources, first_day="2024-06-01", last_day="2024-07-31")
    home = make_dagster_home(tmp_path / "dagster_home")
    initialize_instance_storage(home)  # before the CLI and this test open it at once
    env = subprocess_env(settings, home)
    out_path = tmp_path / "cli.out"
    with open(out_path, "wb") as out:
        cli = subprocess.Popen(
            [f"{BIN}/backfill-platform", "backfill", "--from", "2024-07-01", "--to", "2024-07-12"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=default_sigint,
        )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            started = wait_until(
                lambda: instance.get_runs(dg.RunsFilter(statuses=list(IN_FLIGHT))), 300, "a run in flight", poll_s=0.2
            )
            run_id = started[0].run_id
            time.sleep(3)  # the run worker is past its start
            os.kill(cli.pid, signal.SIGINT)  # Ctrl-C reaches the CLI only: the daemon has its own session
            assert cli.wait(timeout=120) == 1
            said = out_path.read_text()
            # the run the daemon launched was not killed with it: it finishes without any daemon
            run = wait_until(
                lambda: (r := instance.get_run_by_id(run_id)) and r.is_finished and r, 200, f"run {run_id} to end"
            )
            assert run.status == dg.DagsterRunStatus.SUCCESS, said
            assert lock_holder(home) is None  # the CLI's daemon is gone
            assert "Stopped the dagster-daemon this command started" in said, said
            assert "1 run(s) in flight keep running until they end" in said, said
            assert "resumes when a dagster-daemon runs again" in said, said
    finally:
        stop_process_group(cli)


def _alive(keeper: KeepDaemon) -> bool:
    return keeper.daemon is not None and keeper.daemon.process.poll() is None


@pytest.mark.slow
def test_one_daemon_per_instance_whatever_starts_it(tmp_path):
    """Two CLIs starting together, a daemon that misses its heartbeats under load, a second
    ``dagster-daemon run`` and ``dagster dev``'s daemon (``python -m dagster._daemon run``): exactly
    one daemon serves the instance, and a refused one says which daemon holds the instance."""
    home = make_dagster_home(tmp_path / "dagster_home")
    initialize_instance_storage(home)
    said: list[str] = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keepers = [KeepDaemon(instance, home, said.append, check_every_s=1) for _ in range(2)]
        entered = [threading.Thread(target=keeper.__enter__) for keeper in keepers]
        for thread in entered:
            thread.start()
        for thread in entered:
            thread.join()
        try:
            # the loser of the race exits by itself; its keeper adopts the winner
            wait_until(lambda: sum(_alive(k) for k in keepers) == 1, 120, "exactly one live daemon", poll_s=0.5)
            holder = wait_until(lambda: lock_holder(home), 180, "a daemon holding the instance's lock")
            owner = next(k for k in keepers if _alive(k))
            assert owner.daemon.process.pid == holder

            # A loaded daemon that misses the heartbeat window (here: stopped for 40 s) gets no twin.
            os.kill(holder, signal.SIGSTOP)
            try:
                time.sleep(40)
                third = KeepDaemon(instance, home, said.append)
                third.check()
                assert third.daemon is None, said
            finally:
                os.kill(holder, signal.SIGCONT)

            # A second `dagster-daemon run`, and dagster dev's form of it, refuse with the reason.
            for module_form in (False, True):
                log = tmp_path / f"second-{module_form}.log"
                second = DaemonProcess(home, log_path=log)
                if module_form:
                    second.command = [sys.executable, "-m", "dagster._daemon", "run", "-w", str(second.workspace)]
                second.start()
                try:
                    code = second.process.wait(timeout=120)
                finally:
                    second.stop()
                assert code != 0
                text = log.read_text()
                assert f"a dagster-daemon (pid {holder}) already serves this instance" in text, text
            assert lock_holder(home) == holder
        finally:
            for keeper in keepers:
                keeper.__exit__(None, None, None)
        assert lock_holder(home) is None
        # no keeper wiped the heartbeats of a daemon it did not start (nothing else decides on them)


@pytest.mark.slow
def test_backfill_platform_dev_uses_the_running_daemon_and_replaces_it_when_it_stops(tmp_path):
    """``make dev`` (``backfill-platform dev``) next to a CLI's daemon starts only the webserver, and
    starts its own daemon when that one stops; Ctrl-C stops both."""
    home = make_dagster_home(tmp_path / "dagster_home")
    initialize_instance_storage(home)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    first = DaemonProcess(home).start()
    try:
        holder = wait_until(lambda: lock_holder(home), 180, "the first daemon's lock")
        log = tmp_path / "dev.log"
        with running([f"{BIN}/backfill-platform", "dev", "--port", str(port)], env, log) as dev:
            wait_until(lambda: _answers(port), 180, "the webserver")
            assert f"A dagster-daemon (pid {holder}) already serves this instance" in log.read_text()
            assert lock_holder(home) == holder
            first.stop()
            replaced = wait_until(
                lambda: (pid := lock_holder(home)) not in (None, holder) and pid, 180, "dev's own daemon"
            )
            assert "starting one" in log.read_text()
            os.kill(dev.pid, signal.SIGINT)
            assert dev.wait(timeout=120) == 0, log.read_text()
            assert lock_holder(home) is None, replaced
    finally:
        first.stop()


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_the_backfill_daemon_evaluates_at_the_configured_interval_and_refuses_a_bad_one(tmp_path):
    """The backfill daemon's loop (Dagster's is a hard-coded 30 s) runs every 1 s by default and every
    BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS when set; a bad value stops the daemon with its name."""
    assert "BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS" not in os.environ  # the default, as users get it
    home = make_dagster_home(tmp_path / "dagster_home")
    initialize_instance_storage(home)
    evaluations = "No backfill jobs in progress"

    def count_evaluations(env: dict[str, str], name: str, seconds: float) -> int:
        log = tmp_path / f"{name}.log"
        daemon = DaemonProcess(home, env=env, log_path=log)
        daemon.command = [*daemon.command, "--log-level", "debug"]
        with daemon:
            wait_until(lambda: evaluations in log.read_text(), 180, "the backfill daemon's first evaluation")
            first = log.read_text().count(evaluations)
            time.sleep(seconds)
            return log.read_text().count(evaluations) - first

    default = count_evaluations({}, "default", 8)
    assert 5 <= default <= 9, default  # about one a second; Dagster's 30 s loop would log none or one
    configured = count_evaluations({"BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS": "3"}, "configured", 13)
    assert 3 <= configured <= 5, configured  # every 3 s

    bad_log = tmp_path / "bad.log"
    bad = DaemonProcess(home, env={"BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS": "soon"}, log_path=bad_log).start()
    try:
        assert bad.process.wait(timeout=120) != 0
    finally:
        bad.stop()
    assert "BACKFILL_DAEMON_BACKFILL_INTERVAL_SECONDS" in bad_log.read_text()
    assert lock_holder(home) is None

