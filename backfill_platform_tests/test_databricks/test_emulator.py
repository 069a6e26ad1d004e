"""The workspace emulator speaks Databricks' REST shapes and errors to the real databricks-sdk client."""

from __future__ import annotations

import base64
import time

import pytest
from databricks.sdk import WorkspaceClient, errors
from databricks.sdk.service import iam, jobs

from backfill_platform_tests.test_databricks.conftest import CANARY_TOKEN
from databricks_emulator import DEFAULT_CLUSTER_ID


@pytest.fixture
def client(emulator) -> WorkspaceClient:
    return WorkspaceClient(host=emulator.url, token=CANARY_TOKEN, auth_type="pat")


def test_dbfs_round_trip_and_documented_errors(client, emulator):
    dbfs = client.dbfs
    dbfs.mkdirs("/t/dir")
    handle = dbfs.create("/t/dir/big.bin", overwrite=True).handle
    block = b"x" * (1024 * 1024)
    for _ in range(2):
        dbfs.add_block(handle, base64.b64encode(block).decode())
    dbfs.close(handle)
    dbfs.put("/t/small.txt", contents=base64.b64encode(b"hello").decode(), overwrite=True)
    assert dbfs.get_status("/t/dir/big.bin").file_size == 2 * 1024 * 1024
    assert base64.b64decode(dbfs.read("/t/small.txt", offset=1, length=3).data) == b"ell"
    assert sorted((f.path, f.is_dir) for f in dbfs.list("/t")) == [("/t/dir", True), ("/t/small.txt", False)]

    with pytest.raises(errors.ResourceDoesNotExist, match="No file or directory exists on path /t/none"):
        dbfs.read("/t/none")
    with pytest.raises(errors.ResourceAlreadyExists):
        dbfs.put("/t/small.txt", contents="", overwrite=False)
    with pytest.raises(errors.DatabricksError) as too_big:
        dbfs.read("/t/dir/big.bin", length=2 * 1024 * 1024)
    assert too_big.value.error_code == "MAX_READ_SIZE_EXCEEDED"
    with pytest.raises(errors.DatabricksError) as not_empty:  # raw call: the SDK's mixin checks first
        client.api_client.do("POST", "/api/2.0/dbfs/delete", body={"path": "/t/dir", "recursive": False})
    assert not_empty.value.error_code == "IO_ERROR"
    dbfs.delete("/t", recursive=True)
    with pytest.raises(errors.ResourceDoesNotExist):
        dbfs.get_status("/t")
    with pytest.raises(errors.InvalidParameterValue, match=r"'\.\.'"):
        dbfs.get_status("/a/../../etc/passwd")


def test_requests_without_the_token_get_401(emulator):
    wrong = WorkspaceClient(host=emulator.url, token="dapi-wrong", auth_type="pat")
    with pytest.raises(errors.Unauthenticated):
        wrong.dbfs.get_status("/")
    with pytest.raises(errors.Unauthenticated):
        wrong.jobs.get_run(1)


def test_submit_validation_clusters_and_permissions(client, emulator):
    client.dbfs.put("/s/ok.py", contents=base64.b64encode(b"print('ok')").decode(), overwrite=True)
    task = {"task_key": "t", "spark_python_task": {"python_file": "dbfs:/s/ok.py"}}
    bad_specs = [
        ({"new_cluster": {"node_type_id": "x", "num_workers": 1}}, "spark_version"),
        ({"new_cluster": {"spark_version": "15.4.x-scala2.12", "num_workers": 1}}, "node_type_id"),
        ({"new_cluster": {"spark_version": "15.4.x-scala2.12", "node_type_id": "x"}}, "num_workers"),
        ({"existing_cluster_id": "0000-nope"}, "Cluster 0000-nope does not exist"),
        ({"existing_cluster_id": DEFAULT_CLUSTER_ID, "new_cluster": {"spark_version": "x"}}, "Exactly one"),
    ]
    for spec, message in bad_specs:
        with pytest.raises(errors.DatabricksError, match=message) as refused:
            client.jobs.submit(run_name="bad", tasks=[jobs.SubmitTask.from_dict({**task, **spec})])
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert client.clusters.get(DEFAULT_CLUSTER_ID).cluster_id == DEFAULT_CLUSTER_ID
    # Databricks answers 400 INVALID_PARAMETER_VALUE "... does not exist"; the SDK maps that to NotFound.
    with pytest.raises(errors.ResourceDoesNotExist) as unknown_cluster:
        client.clusters.get("0000-nope")
    assert unknown_cluster.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(errors.DatabricksError, match="Run 99999 does not exist"):
        client.jobs.get_run(99999)

    # A run that cannot start (missing file) still goes through the documented life cycle.
    missing = {"task_key": "t", "existing_cluster_id": DEFAULT_CLUSTER_ID,
               "spark_python_task": {"python_file": "dbfs:/s/missing.py"}}
    run_id = client.jobs.submit(run_name="missing", tasks=[jobs.SubmitTask.from_dict(missing)]).bind()["run_id"]
    emulator.wait_for_run(run_id, timeout_s=30)
    run = client.jobs.get_run(run_id)
    assert run.state.life_cycle_state == jobs.RunLifeCycleState.TERMINATED
    assert run.state.result_state == jobs.RunResultState.FAILED
    assert "Cannot read the python file dbfs:/s/missing.py" in client.jobs.get_run_output(run.tasks[0].run_id).error
    client.permissions.update(
        "jobs", str(run.job_id),
        access_control_list=[
            iam.AccessControlRequest(group_name="data-eng", permission_level=iam.PermissionLevel.CAN_VIEW)
        ],
    )
    assert emulator.permission_updates[-1][:2] == ("jobs", str(run.job_id))


def test_timeout_seconds_and_cancel_end_a_running_run(client, emulator):
    """Honoured on a new job cluster (its driver is still starting its JVM when the time is up)."""
    client.dbfs.put("/s/sleep.py", contents=base64.b64encode(b"import time\ntime.sleep(600)").decode(), overwrite=True)
    task = {"task_key": "t", "spark_python_task": {"python_file": "dbfs:/s/sleep.py"},
            "new_cluster": {"spark_version": "15.4.x-scala2.12", "node_type_id": "x", "num_workers": 0}}
    timed = client.jobs.submit(
        run_name="timeout", timeout_seconds=1, tasks=[jobs.SubmitTask.from_dict(task)]
    ).bind()["run_id"]
    cancelled = client.jobs.submit(run_name="cancel", tasks=[jobs.SubmitTask.from_dict(task)]).bind()["run_id"]
    emulator.wait_for_run(timed, timeout_s=30)
    state = client.jobs.get_run(timed).state
    assert (state.life_cycle_state.value, state.result_state.value) == ("TERMINATED", "TIMEDOUT")
    assert "timed out after 1 seconds" in state.state_message
    while client.jobs.get_run(cancelled).state.life_cycle_state.value == "PENDING":
        pass
    client.jobs.cancel_run(cancelled)
    emulator.wait_for_run(cancelled, timeout_s=30)
    assert client.jobs.get_run(cancelled).state.result_state.value == "CANCELED"
    assert cancelled in emulator.cancel_requests
    assert emulator.runs[cancelled].process.poll() is not None  # the driver process is gone


# ----------------------------------------------------------------------------- idempotency and faults


def _submit(client, name: str, token: str | None = None) -> int:
    """Submit a run whose file does not exist (it fails at once, no driver) and whose task names ``name``."""
    task = {"task_key": "t", "existing_cluster_id": DEFAULT_CLUSTER_ID,
            "spark_python_task": {"python_file": f"dbfs:/s/{name}.py"}}
    return client.jobs.submit(
        run_name=name, idempotency_token=token, tasks=[jobs.SubmitTask.from_dict(task)]
    ).bind()["run_id"]


def test_an_idempotency_token_returns_the_run_it_created(client, emulator):
    first = _submit(client, "idem-a", token="token-a")
    emulator.wait_for_run(first, timeout_s=30)
    assert _submit(client, "idem-a", token="token-a") == first  # whatever state it is in: no second run
    assert _submit(client, "idem-a", token="token-b") != first
    assert _submit(client, "idem-a") not in (first,)
    assert len(emulator.runs_matching("idem-a")) == 3
    assert [r["outcome"] for r in emulator.submit_requests_matching("idem-a")] == [
        "created", "existing run", "created", "created"
    ]
    with pytest.raises(errors.InvalidParameterValue, match="at most 64 characters"):
        _submit(client, "idem-a", token="x" * 65)


@pytest.mark.parametrize("status", [503, None], ids=["answered-503", "connection-dropped"])
def test_a_lost_submit_answer_is_retried_by_the_sdk_and_only_the_token_keeps_one_run(client, emulator, status):
    """runs/submit creates the run, then the answer is lost: databricks-sdk sends the same request
    again. Without a token that starts a second run (two writers); with one it returns the first."""
    lost = "answered 503" if status else "connection dropped"
    for token, outcomes in ((None, [f"created, {lost}", "created"]),
                            (f"token-lost-{status}", [f"created, {lost}", "existing run"])):
        name = f"lost-{status}-{token is not None}"
        emulator.lose_next_submit_answer(status, match=name)
        run_id = _submit(client, name, token)
        assert [r["outcome"] for r in emulator.submit_requests_matching(name)] == outcomes
        runs = emulator.runs_matching(name)
        assert len(runs) == (2 if token is None else 1)
        assert run_id == runs[-1].run_id


@pytest.mark.parametrize("status, error_code, retried", [
    (429, "REQUEST_LIMIT_EXCEEDED", True),
    (503, "TEMPORARILY_UNAVAILABLE", True),
    (None, None, True),  # no answer at all (connection closed)
    (500, "INTERNAL_ERROR", False),
    (400, "INVALID_PARAMETER_VALUE", False),
], ids=["429", "503", "no-answer", "500", "400"])
def test_which_refused_submits_databricks_sdk_repeats_itself(client, emulator, status, error_code, retried):
    """What the step launcher gets to see: databricks-sdk repeats a call answered 429 or 503 or not
    answered at all (its own retry, the same request); 500 and 4xx reach the caller at once."""
    name = f"refused-{status}"
    if status is None:
        emulator.drop_next_submits(1, match=name)
    else:
        emulator.fail_next_submits(1, status=status, error_code=error_code, match=name)
    if retried:
        _submit(client, name, token=name)
        assert [r["outcome"] for r in emulator.submit_requests_matching(name)] == [
            "dropped" if status is None else f"refused {status}", "created"
        ]
    else:
        with pytest.raises(errors.DatabricksError):
            _submit(client, name, token=name)
        assert [r["outcome"] for r in emulator.submit_requests_matching(name)] == [f"refused {status}"]


def test_a_poll_fault_answers_one_runs_get_of_the_matching_run(client, emulator):
    run_id = _submit(client, "poll-fault")
    emulator.fail_next_polls(1, status=500, match="poll-fault")
    with pytest.raises(errors.InternalError):
        client.jobs.get_run(run_id)
    assert client.jobs.get_run(run_id).run_id == run_id


# ----------------------------------------------------------------------------- a run ended mid-write

SLOW_WRITE = """
import pathlib, sys
table, marker = sys.argv[1], sys.argv[2]
slow = spark.range(0, 2, 1, 2).selectExpr("id", "java_method('java.lang.Thread', 'sleep', 8000L) AS slept")
pathlib.Path(marker).write_text("writing")
slow.write.format("delta").save(table)
"""


@pytest.mark.parametrize("end", ["timeout", "cancel"])
def test_a_run_ended_mid_write_on_the_existing_cluster_commits_nothing_after_it_ends(client, emulator, tmp_path, end):
    """Databricks cancels a timed-out or cancelled run's Spark jobs, not only its Python process.

    On an existing cluster the task's Python process drives the cluster's shared JVM: killing the
    process alone leaves its write running there, and it commits after the run ended (and after
    the step launcher started the retry that writes the same dates)."""
    emulator.cluster_gateway(DEFAULT_CLUSTER_ID)  # warm: the timeout counts from the submit
    table, marker = tmp_path / "table", tmp_path / "writing"
    client.dbfs.put("/s/slow_write.py", contents=base64.b64encode(SLOW_WRITE.encode()).decode(), overwrite=True)
    task = {"task_key": "t", "existing_cluster_id": DEFAULT_CLUSTER_ID,
            "spark_python_task": {"python_file": "dbfs:/s/slow_write.py", "parameters": [str(table), str(marker)]}}
    run_id = client.jobs.submit(
        run_name=f"slow-write-{end}", timeout_seconds=6 if end == "timeout" else 0,
        tasks=[jobs.SubmitTask.from_dict(task)],
    ).bind()["run_id"]
    deadline = time.monotonic() + 60
    while not marker.exists():  # the task is in its write (8 s of Spark tasks)
        assert time.monotonic() < deadline and client.jobs.get_run(run_id).state.result_state is None
        time.sleep(0.1)
    if end == "cancel":
        time.sleep(1)
        client.jobs.cancel_run(run_id)
    emulator.wait_for_run(run_id, timeout_s=60)
    assert client.jobs.get_run(run_id).state.result_state.value == {"timeout": "TIMEDOUT", "cancel": "CANCELED"}[end]
    time.sleep(15)  # the write's Spark tasks would have ended 8 s after they started, and it committed
    assert not (table / "_delta_log").exists() or not list((table / "_delta_log").glob("*.json"))
    assert emulator.runs[run_id].cancelled_jobs >= 1  # its write job, cancelled on the cluster's JVM
