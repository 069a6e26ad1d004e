"""The benchmark's quick mode as a smoke test: it runs end to end through a real instance, daemon and
run queue (per-date and chunked on the shared Spark server, chunked-embedded with a JVM per run) and
writes results.json.

No timing is asserted (speed targets are measured by `make bench`, see docs/benchmark.md): only that
the JSON has the documented structure and every scenario materialized exactly its partitions, with
one Delta commit per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backfill_platform.resources.shared_spark import shared_server_dir, stop_shared_server
from backfill_platform.settings import PROJECT_ROOT, Settings
from backfill_platform_tests.helpers import BUSINESS_DAYS

SCENARIO_FIELDS = {
    "scenario", "partitions", "rows_per_date", "chunk_size", "runs", "wall_s", "s_per_partition",
    "delta_commits",
}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 6 runs (1 with its own JVM) + 2 shared Spark servers; minutes on a busy machine
def test_quick_benchmark_materializes_every_scenario(tmp_path):
    out = tmp_path / "bench"
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=1700)
    finally:
        if process.poll() is None:  # SIGTERM: the benchmark stops its daemon and Spark servers
            process.terminate()
            process.communicate(timeout=120)
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())

    assert results["mode"] == "quick"
    scenarios = results["scenarios"]
    assert {s["scenario"] for s in scenarios} == {"per-date", "chunked", "chunked-embedded"}
    first_dates = [str(key) for key in BUSINESS_DAYS.between("2024-01-01", "2024-01-31")][:3]
    for scenario in scenarios:
        assert SCENARIO_FIELDS <= set(scenario), scenario
        assert scenario["error"] is None, scenario
        assert scenario["materialized_partitions"] == scenario["partitions"], scenario
        assert scenario["first_date"] == first_dates[0] == "2024-01-02"  # Jan 1 is a holiday
        assert scenario["partitions"] == 3
        assert scenario["last_date"] == first_dates[-1] == "2024-01-04"
        expected_runs = -(-scenario["partitions"] // scenario["chunk_size"])  # ceil
        assert scenario["runs"] == scenario["runs_succeeded"] == expected_runs, scenario
        assert scenario["delta_commits"] == expected_runs, scenario  # one replaceWhere per run
        assert scenario["wall_s"] > 0 and scenario["s_per_partition"] > 0
    per_date = [s for s in scenarios if s["scenario"].startswith("per-date")]
    assert all(s["chunk_size"] == 1 and s["runs"] == s["partitions"] for s in per_date)
    assert {s["rows_per_date"] for s in scenarios} == {10, 100}

    assert results["ratio_per_date_over_chunked"] > 0
    assert results["full_range_chunked_wall_s"] > 0
    load = results["definitions_load"]
    assert load["import_defs_s"] > 0 and load["definitions_validate_s"] > 0
    assert "available" in results["rerun_sensor_tick"]
    # the machine's floor (bench/floor.py), measured in the same invocation: bare Spark wrote the same 3 dates
    floor = results["floor"]["10"]["partitioned"]
    assert floor["rows"] == 30 and floor["commits"] == 1 and floor["wall_s"] > 0, floor
    # ... then rewrote its middle date twice in the warm session (a repair's floor), keeping every row
    assert floor["one_date"] == "2024-01-03" and len(floor["one_date_warm_s"]) == 2, floor
    assert floor["rows_after_one_date"] == 30 and 0 < floor["one_date_total_s"] < floor["process_s"], floor
    assert results["ratio_over_floor_full_range"] > 0
    assert results["plan_2500_dates_s"] > 0 and "2016-01-01" in results["plan_2500_dates"]["first_line"]
    assert set(results["shared_server_start_s"]) == {"10", "100"}  # one per data dir, all stopped at the end
    assert not list(tmp_path.glob("bench/.work/data-*/spark-connect/server.json"))
    assert (out / "results.png").stat().st_size > 0
    assert "ratio_per_date_over_chunked" in completed.stdout  # the printed table + summary


SIGTERM_AFTER_AN_IN_PROCESS_RUN = textwrap.dedent("""
    import signal, sys
    import dagster as dg

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job (`make bench &`, nohup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the program's own handler

    @dg.asset
    def one() -> int:
        return 1

    dg.materialize([one])
    print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
""")


def test_upstream_an_in_process_run_gives_sigterm_the_sigint_handler():
    """The upstream bug behind ``bench/upstream.py`` (kept as a reproduction: when it fails, Dagster
    fixed it and the benchmark's in-process runs need not put SIGTERM's handler back)."""
    done = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_AN_IN_PROCESS_RUN], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "True", done.stdout + done.stderr


def kill_process_groups_working_in(root) -> None:
    """SIGKILL the process groups of processes started with DAGSTER_HOME or BACKFILL_DATA_DIR under
    ``root`` (a killed benchmark's daemon, in its own session, and what that daemon launched)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(item.partition("=")[::2] for item in environ.read_text(errors="replace").split("\0"))
            if any(variables.get(name, "").startswith(str(root)) for name in ("DAGSTER_HOME", "BACKFILL_DATA_DIR")):
                pid = int(environ.parent.name)
                if os.getpgid(pid) == os.getpgid(0):  # in this test's own group: that process alone
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue  # gone, or not ours to read


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_benchmark_stops_on_sigterm_after_seeding_with_sigint_ignored(tmp_path):
    """A CI timeout (SIGTERM) after the benchmark materialized its sources in process, where SIGINT is
    ignored: it exits 143 and stops the Spark servers it started."""
    out = tmp_path / "bench"
    process = subprocess.Popen(  # one scenario: one source to seed, one server
        [sys.executable, str(PROJECT_ROOT / "bench" / "run.py"), "--quick", "--only", "per-date", "--out", str(out)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "shared Spark servers started" in line:  # after seeding, which materialized in process
                process.send_signal(signal.SIGTERM)
                break
        rest, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:  # it ignored SIGTERM: stop it, the daemon and the servers it started
            process.kill()
            process.communicate()
            kill_process_groups_working_in(out)
            for data_dir in out.glob(".work/data-*"):
                stop_shared_server(shared_server_dir(Settings(data_dir=data_dir)))
    output = "".join(lines) + rest
    assert process.returncode == 143, output[-3000:]
    assert not list(out.glob(".work/data-*/spark-connect/server.json")), output[-3000:]
