"""What storing one asset event costs in the instance's SQLite storage, with the platform's instance and with
Dagster's alone (``event_store_ms``; issue 13).

A 240-date run stores 240 ASSET_MATERIALIZATION_PLANNED events when it is created and 240
ASSET_MATERIALIZATION events at its end. Each case is a fresh process and a fresh DAGSTER_HOME: ``platform``
has ``dagster_home/dagster.yaml`` (the platform's instance class, whose SQLite engines keep their connections:
``backfill_platform/sqlite_engines.py``), ``dagster`` the same storage without that class (Dagster's own
engine and connection for every use). Both store ``EVENTS`` materializations of one partitioned asset
through ``report_runless_asset_event`` after a warm-up of the same size, in a process started by
``multiprocessing`` as Dagster starts a run worker (only those keep their connections); the figure is the
median of 3 rounds.
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



def _store(home: str, events: int, results) -> None:
    """In a run worker's place (a process started by ``multiprocessing``, as Dagster's code server starts one
    per run): the median ms per stored asset event over 3 rounds, after a warm-up round."""
    import statistics
    import time

    import dagster as dg

    instance = dg.DagsterInstance.from_config(home)

    def one_round(prefix: str) -> float:
        started = time.perf_counter()
        for number in range(events):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key="destination_data", partition=f"{prefix}-{number}",
                                        metadata={"rows": 10}))
        return (time.perf_counter() - started) * 1000 / events

    one_round("warm-up")
    engines = sys.modules.get("backfill_platform.sqlite_engines")
    results.put({"instance_class": type(instance).__name__,
                 "kept_engines": len(engines._engines) if engines and engines.keeps_connections() else 0,
                 "ms_per_event": round(statistics.median(one_round(f"r{r}") for r in range(3)), 2)})


def _store_in_a_worker(home: str, events: int) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=_store, args=(home, events, results))
    worker.start()
    print(json.dumps(results.get(timeout=600)))
    worker.join()


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
        completed = subprocess.run([sys.executable, __file__, "--store", str(home), str(EVENTS)], cwd=REPO,
                                   capture_output=True, text=True, timeout=600)
        if completed.returncode != 0:
            return {"error": f"{case}: {completed.stderr.strip().splitlines()[-1:]}"}
        figures[case] = json.loads(completed.stdout.strip().splitlines()[-1])
    figures["ratio_dagster_over_platform"] = round(
        figures["dagster"]["ms_per_event"] / figures["platform"]["ms_per_event"], 2)
    return figures


if __name__ == "__main__" and sys.argv[1:2] == ["--store"]:
    _store_in_a_worker(sys.argv[2], int(sys.argv[3]))
elif __name__ == "__main__":
    print(json.dumps(measure_event_store(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / ".work"),
                     indent=2))
