"""The benchmark's quick mode as a smoke test: it runs end to end through a real instance, daemon and
run queue (per-date and chunked on the shared Spark server, chunked-embedded with a JVM per run) and
writes results.json.

No timing is asserted (speed targets are measured by `make bench`, see docs/benchmark.md): only that
the JSON has the documented structure and every scenario materialized exactly its partitions, with
one Delta commit per run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backfill_platform.settings import PROJECT_ROOT
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
    assert results["ratio_over_floor_full_range"] > 0
    assert results["plan_2500_dates_s"] > 0 and "2016-01-01" in results["plan_2500_dates"]["first_line"]
    assert set(results["shared_server_start_s"]) == {"10", "100"}  # one per data dir, all stopped at the end
    assert not list(tmp_path.glob("bench/.work/data-*/spark-connect/server.json"))
    assert (out / "results.png").stat().st_size > 0
    assert "ratio_per_date_over_chunked" in completed.stdout  # the printed table + summary
