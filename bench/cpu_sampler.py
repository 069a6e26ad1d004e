"""Sample the CPU seconds the benchmark's processes use, per scenario (Linux /proc only).

    python bench/cpu_sampler.py OUT.json [--interval 1] [--marker /bench/.work/homes/]

Runs beside ``bench/run.py`` (started by hand) on a shared machine: it attributes every process whose
DAGSTER_HOME contains the marker (the scenario's daemon, code server, run workers and their JVMs) to
that scenario by the home's folder name, and the Spark Connect server to ``spark-connect-server``.
Per-process CPU is the last sampled utime+stime, so up to one interval per short process is lost.
CPU seconds do not depend on how many other processes compete for the cores; wall time does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def sample(marker: str, server_marker: str) -> dict[int, tuple[str, float]]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(") ", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        cpu = (int(stat[11]) + int(stat[12])) / TICK
        if b"SparkConnectServer" in cmdline and server_marker.encode() in cmdline:
            found[int(proc.name)] = ("spark-connect-server", cpu)
            continue
        for item in environ:
            if item.startswith(b"DAGSTER_HOME=") and marker.encode() in item:
                found[int(proc.name)] = (item.decode().rstrip("/").rsplit("/", 1)[1], cpu)
                break
    return found


def main() -> None:
    out = Path(sys.argv[1])
    interval = float(sys.argv[sys.argv.index("--interval") + 1]) if "--interval" in sys.argv else 1.0
    marker = sys.argv[sys.argv.index("--marker") + 1] if "--marker" in sys.argv else "/bench/.work/homes/"
    server_marker = "wt-issue5"
    last: dict[int, tuple[str, float]] = {}
    timeline: list[tuple[float, dict[str, float]]] = []
    while True:
        now = sample(marker, server_marker)
        last.update(now)
        totals: dict[str, float] = {}
        for slug, cpu in last.values():
            totals[slug] = round(totals.get(slug, 0.0) + cpu, 2)
        timeline.append((time.time(), totals))
        out.write_text(json.dumps({"totals": totals, "timeline": timeline[-3000:]}))
        time.sleep(interval)


if __name__ == "__main__":
    main()
