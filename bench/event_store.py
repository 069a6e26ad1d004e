"""What storing one asset event costs in the instance's SQLite storage, with the platform's instance and with
Dagster's alone (``event_store_ms``; issue 13).

A 240-date run stores 240 ASSET_MATERIALIZATION_PLANNED events when it is created and 240
ASSET_MATERIALIZATION events at its end. Each case is a fresh process and a fresh DAGSTER_HOME: ``platform``
has ``dagster_home/dagster.yaml`` (the platform's instance class, whose SQLite engines keep their connections:
``backfill_platform/sqlite_engines.py``), ``dagster`` the same storage without that class (Dagster's own
engine and connection for every use). Both store ``EVENTS`` materializations of one partitioned asset
through ``report_runless_asset_event`` after a warm-up of the same size; the figure is the median of 3 rounds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EVENTS = 240

_STORE = """
import json, statistics, sys, time
import dagster as dg
instance = dg.DagsterInstance.from_config(sys.argv[1])
def one_round(prefix):
    started = time.perf_counter()
    for number in range(int(sys.argv[2])):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="destination_data", partition=f"{prefix}-{number}",
                                    metadata={"rows": 10}))
    return (time.perf_counter() - started) * 1000 / int(sys.argv[2])
one_round("warm-up")
engines = sys.modules.get("backfill_platform.sqlite_engines")
print(json.dumps({"instance_class": type(instance).__name__, "kept_engines": len(engines._engines) if engines else 0,
                  "ms_per_event": round(statistics.median(one_round(f"r{r}") for r in range(3)), 2)}))
"""


def measure_event_store(work: Path) -> dict:
    figures = {}
    for case in ("platform", "dagster"):
        home = work / f"event-store-{case}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
        if case == "dagster":  # the same storage settings, Dagster's own instance class
            config.pop("instance_class")
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        completed = subprocess.run([sys.executable, "-c", _STORE, str(home), str(EVENTS)], cwd=REPO,
                                   capture_output=True, text=True, timeout=600)
        if completed.returncode != 0:
            return {"error": f"{case}: {completed.stderr.strip().splitlines()[-1:]}"}
        figures[case] = json.loads(completed.stdout.strip().splitlines()[-1])
    figures["ratio_dagster_over_platform"] = round(
        figures["dagster"]["ms_per_event"] / figures["platform"]["ms_per_event"], 2)
    return figures


if __name__ == "__main__":
    print(json.dumps(measure_event_store(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / ".work"),
                     indent=2))
