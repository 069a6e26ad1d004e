"""Each Dagster internal that ``backfill_platform/dagster_internals.py`` wraps, exercised on a real
(test) instance: after a Dagster upgrade, these fail first, with the wrapper's name."""

from __future__ import annotations

import subprocess

import dagster as dg

from backfill_platform import dagster_internals
from backfill_platform.processes import WORKSPACE_YAML
from backfill_platform.settings import PROJECT_ROOT
from backfill_platform.tags import DESTINATION, DESTINATION_JOB, PREREQUISITES, RANGE_END, RANGE_START
from backfill_platform_tests.helpers import TEST_DEFS


def test_only_one_module_imports_dagster_internals():
    found = subprocess.run(
        ["grep", "-rlE", r"^\s*(from|import) dagster\._", "backfill_platform/", "--include=*.py"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    ).stdout.split()
    assert found == ["backfill_platform/dagster_internals.py"]


def test_store_asset_backfill_and_its_statuses(instance):
    backfill_id = dagster_internals.store_asset_backfill(
        instance,
        TEST_DEFS.resolve_asset_graph(),
        whole_assets=PREREQUISITES,
        partition_ranges={DESTINATION: [("2024-07-01", "2024-07-03"), ("2024-07-05", "2024-07-05")]},
        tags={"team": "risk"},
        title="internals",
        run_config={"ops": {"destination_data": {"config": {"full_refresh": True}}}},
    )
    stored = instance.get_backfill(backfill_id)
    assert stored.title == "internals" and stored.tags == {"team": "risk"}
    target_subset = stored.asset_backfill_data.target_subset
    targets = {(ap.asset_key, ap.partition_key) for ap in target_subset.iterate_asset_partitions()}
    assert {key for key, partition in targets if key == DESTINATION and partition} == {DESTINATION}
    assert sorted(p for key, p in targets if key == DESTINATION) == [
        "2024-07-01", "2024-07-02", "2024-07-03", "2024-07-05"
    ]
    assert {key for key, _ in targets} == {DESTINATION, *PREREQUISITES}
    assert [b.backfill_id for b in dagster_internals.requested_backfills(instance)] == [backfill_id]
    assert stored.status.value not in dagster_internals.BACKFILL_TERMINAL_STATUSES
    assert "COMPLETED_SUCCESS" in dagster_internals.BACKFILL_TERMINAL_STATUSES


def test_job_submitter_queues_a_range_run(tmp_path):
    from backfill_platform_tests.conftest import make_dagster_home

    home = make_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with dagster_internals.project_workspace(instance, WORKSPACE_YAML) as workspace:
            submitter = dagster_internals.JobSubmitter(instance, workspace, DESTINATION_JOB)
            run_id = submitter.submit(None, {RANGE_START: "2024-07-01", RANGE_END: "2024-07-02", "team": "risk"})
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.QUEUED  # the queued coordinator holds it for a daemon
        assert run.job_name == DESTINATION_JOB and run.tags["team"] == "risk"


def test_sensor_is_running_reads_the_stored_state(instance):
    assert dagster_internals.sensor_is_running(instance, "rerun_failed_partitions") is None  # default only
