"""``backfill-platform repair``: which failed runs it re-executes from failure, and why it skips others.

Fast tests: a real history of ``destination_data`` runs made with ``dg.materialize`` on the shared
local Spark in a ``dg.instance_for_test()`` instance (see the ``history`` fixture), then the
selection and the CLI's dry run and bad input. The slow tests (below them) run a mixed backfill with a
real ``dagster-daemon``, then repair it with ``backfill-platform repair`` and with the webserver's
``reexecutePartitionBackfill`` mutation (the UI's backfill page), on a real ``dagster-webserver``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from backfill_platform import backfills, cli, dagster_internals, repair, tags
from backfill_platform.assets.destination_config import destination_run_config
from backfill_platform.assets.tables_schema import POSITION_COLUMNS
from backfill_platform.processes import DaemonProcess, initialize_instance_storage
from backfill_platform.resources import local_resources
from backfill_platform.settings import Settings
from backfill_platform_tests.conftest import ARTIFACTS, free_port, make_dagster_home, subprocess_env
from backfill_platform_tests.helpers import (
    BUSINESS_DAYS,
    TEST_DEFS,
    destination_data,
    rows_per_date,
    seed_source,
)
from backfill_platform_tests.test_entry_points import BIN, LAUNCH, graphql, running, wait_until


def _run(resources, instance, first: str, last: str | None = None, **run_tags: str) -> str:
    result = dg.materialize(
        [destination_data], resources=resources, instance=instance, raise_on_error=False,
        tags={tags.RANGE_START: first, tags.RANGE_END: last or first, **run_tags},
    )
    return result.run_id


@pytest.fixture(scope="module")
def history(tmp_path_factory, spark):
    """(instance, backfill id, run ids) of this history, in creation order (source: 07-01..07-03 only,
    then 07-01..07-12):

    - a  07-01..07-02  backfill, succeeds
    - b  07-03..07-05  backfill, fails (no source for 07-05); b2 (07-03) succeeds later: b is still
                       the latest run of 07-05 -> re-execute
    - c  07-08         backfill, fails, tagged dagster/will_retry=true -> skip
    - d  07-09         backfill, fails; e re-executes d (dagster/parent_run_id) and fails -> skip d,
                       re-execute e (a backfill run by its dagster/root_run_id)
    - f  07-10         backfill, fails; g (07-10) succeeds later -> skip f
    - h  07-11         not in the backfill, fails -> re-execute (only when selected by dates)
    - x  07-12         backfill, fails; y reruns it (the rerun sensor's rerun_of_run_id) and fails too
                       -> skip x, re-execute y
    """
    resources = local_resources(Settings(data_dir=tmp_path_factory.mktemp("repair") / "data"))
    with dg.instance_for_test() as instance:
        backfill_id = backfills.launch_destination_backfill(instance, TEST_DEFS, ["2024-07-01"])
        stored = instance.get_backfill(backfill_id)
        instance.update_backfill(stored.with_status(dagster_internals.BulkActionStatus.COMPLETED_FAILED))
        seed_source(resources, instance, first_day="2024-07-01", last_day="2024-07-03")
        bf = {tags.BACKFILL: backfill_id}
        runs = {
            "a": _run(resources, instance, "2024-07-01", "2024-07-02", **bf),
            "b": _run(resources, instance, "2024-07-03", "2024-07-05", **bf),
            "c": _run(resources, instance, "2024-07-08", **bf),
            "d": _run(resources, instance, "2024-07-09", **bf),
            "f": _run(resources, instance, "2024-07-10", **bf),
            "h": _run(resources, instance, "2024-07-11"),
            "x": _run(resources, instance, "2024-07-12", **bf),
        }
        instance.add_run_tags(runs["c"], {tags.WILL_RETRY: "true"})
        lineage = {tags.PARENT_RUN_ID: runs["d"], tags.ROOT_RUN_ID: runs["d"]}
        runs["e"] = _run(resources, instance, "2024-07-09", **lineage)
        runs["y"] = _run(resources, instance, "2024-07-12", **{tags.RERUN_OF_RUN_ID: runs["x"]})
        seed_source(resources, instance, first_day="2024-07-01", last_day="2024-07-12")
        runs["g"] = _run(resources, instance, "2024-07-10")
        runs["b2"] = _run(resources, instance, "2024-07-03")
        statuses = {name: instance.get_run_by_id(run_id).status.value for name, run_id in runs.items()}
        assert statuses == {
            "a": "SUCCESS", "b": "FAILURE", "c": "FAILURE", "d": "FAILURE", "f": "FAILURE", "h": "FAILURE",
            "x": "FAILURE", "e": "FAILURE", "y": "FAILURE", "g": "SUCCESS", "b2": "SUCCESS",
        }
        yield instance, backfill_id, runs


def _selection(history, **selection) -> dict[str, str | None]:
    instance, _, runs = history
    names = {run_id: name for name, run_id in runs.items()}
    selected = repair.select_failed_runs(instance, BUSINESS_DAYS, **selection)
    return {names[item.run_id]: item.skip_reason for item in selected}


def test_a_backfill_repairs_only_the_latest_failed_run_of_each_date(history):
    _, backfill_id, runs = history
    assert _selection(history, backfill_id=backfill_id) == {
        "b": None,  # still the latest run of 07-05 (07-03 succeeded later in b2)
        "c": "run retries will retry it (dagster/will_retry=true)",
        "d": f"already re-executed as {runs['e']} (FAILURE)",
        "f": f"its dates all succeeded in later run(s) {runs['g']}",
        "x": f"later runs cover all its dates: {runs['y']} (FAILURE)",
        "e": None,  # re-execution of d: in the backfill by its root run
        "y": None,  # the rerun sensor's rerun of x
    }


def test_a_date_range_selects_failed_runs_whose_dates_intersect_it(history):
    _, backfill_id, runs = history
    assert _selection(history, keys=["2024-07-05"]) == {"b": None}  # the chunk 07-03..07-05
    assert _selection(history, keys=["2024-07-10", "2024-07-11"]) == {
        "f": f"its dates all succeeded in later run(s) {runs['g']}", "h": None,
    }
    assert _selection(history, backfill_id=backfill_id, keys=["2024-07-11"]) == {}  # h is not the backfill's
    assert _selection(history, keys=["2024-07-01", "2024-07-02"]) == {}


def test_dry_run_lists_what_it_would_re_execute_and_launches_nothing(history, capsys):
    instance, backfill_id, runs = history
    before = len(instance.get_runs())
    code = cli.main(["repair", "--backfill", backfill_id, "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines() == [
        f"7 failed run(s) of destination_data of backfill {backfill_id}: 3 to re-execute from failure, 4 skipped",
        f"  re-execute  {runs['b']}  2024-07-03..2024-07-05 (2 dates)",
        f"  skip        {runs['c']}  2024-07-08: run retries will retry it (dagster/will_retry=true)",
        f"  skip        {runs['d']}  2024-07-09: already re-executed as {runs['e']} (FAILURE)",
        f"  skip        {runs['f']}  2024-07-10: its dates all succeeded in later run(s) {runs['g']}",
        f"  skip        {runs['x']}  2024-07-12: later runs cover all its dates: {runs['y']} (FAILURE)",
        f"  re-execute  {runs['e']}  2024-07-09",
        f"  re-execute  {runs['y']}  2024-07-12",
        "Dry run: nothing was launched.",
    ]
    assert len(instance.get_runs()) == before

    assert cli.main(["repair", "--from", "2024-07-01", "--to", "2024-07-02", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out == "No failed run of destination_data with dates in 2024-07-01..2024-07-02: nothing to repair.\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["repair"], "say which failed runs to repair: --backfill ID and/or --from A --to B"),
        (["repair", "--from", "2024-07-01"], "--from and --to go together"),
        (["repair", "--from", "2024-07-04", "--to", "2024-07-04"], "there is no business day between"),
        (["repair", "--from", "07/01/2024", "--to", "2024-07-12"], "is not a date: use the form YYYY-MM-DD"),
        (["repair", "--backfill", "nosuchid"], "there is no backfill 'nosuchid' in this instance (most recent: none)"),
    ],
)
def test_bad_input_is_a_clear_message_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("DAGSTER_HOME", str(make_dagster_home(tmp_path / "home")))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert message in err and "Traceback" not in out + err


def test_a_backfill_that_has_not_ended_is_not_repaired(tmp_path, monkeypatch, capsys):
    home = make_dagster_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        backfill_id = backfills.launch_destination_backfill(instance, TEST_DEFS, ["2024-07-01"])
    assert cli.main(["repair", "--backfill", backfill_id]) == 2
    assert f"backfill {backfill_id} has not ended (REQUESTED): wait for it to finish" in capsys.readouterr().err


# --- against a real dagster-daemon and dagster-webserver ------------------------------------------

ROWS_PER_DATE = 10
SCHEMA = ", ".join(f"{name} {kind}" for name, kind in POSITION_COLUMNS.items())
REEXECUTE_BACKFILL = """
mutation Reexecute($id: String!) {
  reexecutePartitionBackfill(reexecutionParams: {parentRunId: $id, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


@dataclasses.dataclass
class Live:
    env: dict[str, str]
    resources: dict
    instance: dg.DagsterInstance
    port: int
    root: Path

    def log_tail(self) -> str:
        return (self.root / "daemon.log").read_text()[-4000:]

    def wait_for_webserver(self) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/server_info", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(answers, 300, "the webserver to answer")


@pytest.fixture(scope="module")
def live(tmp_path_factory, spark):
    """A deployment whose source has rows for 2024-07-01..07-03 only, runs of at most 2 business days
    (BACKFILL_MAX_PARTITIONS_PER_RUN=2), a dagster-daemon and a dagster-webserver on 127.0.0.1."""
    root = tmp_path_factory.mktemp("repair_live")
    settings = Settings(data_dir=root / "data")
    resources = local_resources(settings)
    seed_source(resources, first_day="2024-07-01", last_day="2024-07-03", rows_per_date=ROWS_PER_DATE)
    home = make_dagster_home(root / "dagster_home")
    env = subprocess_env(settings, home, BACKFILL_MAX_PARTITIONS_PER_RUN="2")
    port = free_port()
    initialize_instance_storage(home)  # before two processes (webserver, daemon) open it at once
    webserver = [f"{BIN}/dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with running(webserver, env, root / "webserver.log"), \
            DaemonProcess(home, env=env, log_path=root / "daemon.log"), \
            dg.DagsterInstance.from_config(str(home)) as instance:
        yield Live(env, resources, instance, port, root)


def _append_source(spark, resources, days: list[str]) -> None:
    """The missing source rows arrive (a Delta append, as a late upstream load would do)."""
    rows = [(dt.date.fromisoformat(day), i, 10.0 * i, "ABC"[i % 3]) for day in days for i in range(ROWS_PER_DATE)]
    spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").save(resources["tables"].source.path)


def _rows(spark, location, days: list[str]) -> list[tuple]:
    frame = location.read(spark).select(*POSITION_COLUMNS)
    return sorted(tuple(row) for row in frame.collect() if row[0].isoformat() in days)


def _assert_exact(spark, resources, days: list[str]) -> None:
    tables = resources["tables"]
    destination = _rows(spark, tables.destination, days)
    assert destination == _rows(spark, tables.source, days)
    assert {day: n for day, n in rows_per_date(spark, tables.destination).items() if day in days} == dict.fromkeys(
        days, ROWS_PER_DATE
    )


def _ranges(runs) -> dict[tuple[str, str], str]:
    return {(run.tags[tags.RANGE_START], run.tags[tags.RANGE_END]): run.status.value for run in runs}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_cli_repair_re_executes_the_failed_runs_of_a_backfill_from_failure(live, spark, monkeypatch, capsys):
    for name in ("DAGSTER_HOME", "BACKFILL_DATA_DIR", "BACKFILL_MAX_PARTITIONS_PER_RUN"):
        monkeypatch.setenv(name, live.env[name])  # the CLI's instance and workspace: the daemon's
    instance, days = live.instance, BUSINESS_DAYS.between("2024-07-01", "2024-07-08")  # 07-04: holiday
    run_config = destination_run_config(expectation_policies={"value_in_range": "fail"})
    backfill_id = backfills.launch_destination_backfill(
        instance, TEST_DEFS, days, tags={"team": "risk"}, title="repair", run_config=run_config
    )
    progress = backfills.wait_for_backfill(instance, backfill_id, timeout_s=1500, poll_s=2)
    assert progress.status == "COMPLETED_FAILED", live.log_tail()
    runs = backfills.backfill_runs(instance, backfill_id)
    assert _ranges(runs) == {  # no source rows for 07-05 and 07-08: logic errors, not retried
        ("2024-07-01", "2024-07-02"): "SUCCESS",
        ("2024-07-03", "2024-07-05"): "FAILURE",
        ("2024-07-08", "2024-07-08"): "FAILURE",
    }
    failed = {run.tags[tags.RANGE_START]: run for run in runs if run.status == dg.DagsterRunStatus.FAILURE}
    _append_source(spark, live.resources, ["2024-07-05", "2024-07-08"])

    assert cli.main(["repair", "--backfill", backfill_id, "--dry-run"]) == 0
    dry_run = capsys.readouterr().out
    (ARTIFACTS / "repair_dry_run.txt").parent.mkdir(exist_ok=True)
    (ARTIFACTS / "repair_dry_run.txt").write_text(dry_run)
    assert dry_run.splitlines() == [
        f"2 failed run(s) of destination_data of backfill {backfill_id}: 2 to re-execute from failure, 0 skipped",
        f"  re-execute  {failed['2024-07-03'].run_id}  2024-07-03..2024-07-05 (2 dates)",
        f"  re-execute  {failed['2024-07-08'].run_id}  2024-07-08",
        "Dry run: nothing was launched.",
    ]
    assert len(instance.get_runs()) == 3

    assert cli.main(["repair", "--backfill", backfill_id]) == 0
    out = capsys.readouterr().out
    assert "Repair: 2/2 re-executed run(s) succeeded" in out
    children = {}
    for first, parent in failed.items():
        (child,) = instance.get_runs(dg.RunsFilter(tags={tags.PARENT_RUN_ID: parent.run_id}))
        children[first] = child
        assert f"  re-executed {parent.run_id} (" in out and f") as {child.run_id}" in out
        assert child.status == dg.DagsterRunStatus.SUCCESS
        assert child.tags[tags.ROOT_RUN_ID] == parent.run_id and child.root_run_id == parent.run_id
        assert child.step_keys_to_execute == ["destination_data"]  # from failure: the failed step
        assert child.run_config == parent.run_config == run_config
        for key in ("team", tags.RANGE_START, tags.RANGE_END):
            assert child.tags[key] == parent.tags[key]
    assert len(instance.get_runs()) == 5  # only the failed dates ran again
    _assert_exact(spark, live.resources, days)

    assert cli.main(["repair", "--backfill", backfill_id, "--dry-run"]) == 0  # nothing left to repair
    again = capsys.readouterr().out
    assert "0 to re-execute from failure, 2 skipped" in again and "Nothing to re-execute." in again
    assert f"already re-executed as {children['2024-07-08'].run_id} (SUCCESS)" in again


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_web_ui_reexecute_backfill_from_failure_runs_only_the_failed_dates(live, spark):
    instance, days = live.instance, BUSINESS_DAYS.between("2024-07-09", "2024-07-12")
    live.wait_for_webserver()
    _append_source(spark, live.resources, ["2024-07-09", "2024-07-10"])  # 07-11 and 07-12 not yet
    launched = graphql(live.port, LAUNCH, {"params": {
        "assetSelection": [{"path": ["destination_data"]}], "partitionNames": days,
        "title": "mixed", "tags": [{"key": "team", "value": "risk"}],
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    parent_id = launched["backfillId"]
    assert backfills.wait_for_backfill(instance, parent_id, timeout_s=1500, poll_s=2).status == "COMPLETED_FAILED"
    assert _ranges(backfills.backfill_runs(instance, parent_id)) == {
        ("2024-07-09", "2024-07-10"): "SUCCESS", ("2024-07-11", "2024-07-12"): "FAILURE",
    }
    _append_source(spark, live.resources, ["2024-07-11", "2024-07-12"])

    relaunched = graphql(live.port, REEXECUTE_BACKFILL, {"id": parent_id})["reexecutePartitionBackfill"]
    assert relaunched["__typename"] == "LaunchBackfillSuccess", relaunched
    child_id = relaunched["backfillId"]
    progress = backfills.wait_for_backfill(instance, child_id, timeout_s=1500, poll_s=2)
    assert progress.status == "COMPLETED_SUCCESS", live.log_tail()
    assert (progress.requested, progress.succeeded) == (2, 2)  # only the failed dates
    (run,) = backfills.backfill_runs(instance, child_id)
    assert _ranges([run]) == {("2024-07-11", "2024-07-12"): "SUCCESS"}
    assert run.tags["team"] == "risk" and run.tags["dagster/parent_backfill_id"] == parent_id
    assert instance.get_backfill(child_id).title == "Re-execution of mixed"
    _assert_exact(spark, live.resources, days)
