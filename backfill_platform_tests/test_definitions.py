"""The code location: it loads, reads the environment once, and its public interface (asset keys,
partitions, checks, jobs, sensors, schedules, resources) is what the docs describe."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg

from backfill_platform.definitions import build_defs
from backfill_platform.settings import PROJECT_ROOT, Settings
from backfill_platform.tags import CALENDAR, DESTINATION, DESTINATION_JOB, SOURCE


def test_definitions_load_and_validate():
    defs = build_defs(Settings())
    dg.Definitions.validate_loadable(defs)


def test_asset_specs_snapshot():
    """An unintended change to the public interface shows up here as a diff."""
    defs = build_defs(Settings())
    graph = defs.resolve_asset_graph()
    snapshot = {
        key.to_user_string(): {
            "partitioned": graph.get(key).partitions_def is not None,
            "deps": sorted(dep.to_user_string() for dep in graph.get(key).parent_keys),
            "checks": sorted(check.name for check in defs.resolve_assets_def(key).check_keys),
            "kinds": sorted(graph.get(key).kinds),
            "group": graph.get(key).group_name,
        }
        for key in (CALENDAR, SOURCE, DESTINATION)
    }
    assert snapshot == {
        "business_calendar": {
            "partitioned": False, "deps": [], "checks": [], "kinds": ["delta", "spark"], "group": "backfill"
        },
        "source_data": {
            "partitioned": False, "deps": [], "checks": [], "kinds": ["delta", "spark"], "group": "backfill"
        },
        "destination_data": {
            "partitioned": True,
            "deps": ["source_data"],
            "checks": sorted(check.name for check in build_defs(Settings()).resolve_assets_def(DESTINATION).check_keys),
            "kinds": ["delta", "spark"],
            "group": "backfill",
        },
    }
    assert len(snapshot["destination_data"]["checks"]) == 5
    assert defs.resolve_job_def(DESTINATION_JOB).partitions_def == graph.get(DESTINATION).partitions_def
    assert sorted(s.name for s in defs.sensors) == ["alert_on_final_failure", "rerun_failed_partitions"]
    assert [s.name for s in defs.schedules] == ["latest_business_day_schedule"]
    assert sorted(defs.resources) == ["alerts", "pyspark", "pyspark_step_launcher", "tables", "write_hooks"]


def test_settings_shape_the_definitions():
    from backfill_platform.settings import RetrySettings

    retries = RetrySettings(step_max_retries=5, run_timeout_seconds=42)
    defs = build_defs(Settings(max_partitions_per_run=7, retries=retries))
    asset = defs.resolve_assets_def(DESTINATION)
    assert asset.backfill_policy.max_partitions_per_run == 7
    assert asset.op.retry_policy is None  # retries are RetryRequested from the body (retrying.py)
    assert defs.resolve_job_def(DESTINATION_JOB).tags["dagster/max_runtime"] == "42"  # one timeout


def test_import_reads_the_environment_once():
    """``import backfill_platform.definitions`` calls ``load_settings`` exactly once."""
    code = (
        "import backfill_platform.settings as s\n"
        "calls = []\n"
        "original = s.Settings.from_env\n"
        "s.Settings.from_env = classmethod("
        "lambda cls, environ=None: calls.append(1) or original.__func__(cls, environ))\n"
        "import backfill_platform.definitions\n"
        "print(len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
