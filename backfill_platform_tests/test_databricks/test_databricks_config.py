"""Bad Databricks configuration fails when the step launcher starts (the first step that needs
Databricks), with a message naming the variable to fix; definitions still load, and the local
deployment does not care about BACKFILL_DATABRICKS_* at all. No JVM, no Dagster daemon here."""

from __future__ import annotations

import dagster as dg
import pytest

from backfill_platform.resources import local_resources, resources_for
from backfill_platform.resources.databricks import (
    REMOTE_SETTING_VARS,
    DatabricksConfigError,
    databricks_step_launcher,
    remote_environment,
)
from backfill_platform.settings import Settings
from backfill_platform_tests.conftest import free_port
from backfill_platform_tests.helpers import destination_data
from backfill_platform_tests.test_databricks.conftest import (
    CANARY_TOKEN,
    OAUTH_CLIENT,
    databricks_environment,
)

SECRETS = ("BACKFILL_DATABRICKS_TOKEN", "BACKFILL_DATABRICKS_CLIENT_SECRET")


@pytest.fixture
def secrets_env(monkeypatch):
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _start_launcher(settings: Settings):
    with dg.build_resources({"launcher": databricks_step_launcher(settings)}) as resources:
        return resources.launcher


def _config_error(settings: Settings) -> str:
    with pytest.raises(Exception) as raised:
        _start_launcher(settings)
    error = raised.value
    while not isinstance(error, DatabricksConfigError) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, DatabricksConfigError), repr(raised.value)
    assert CANARY_TOKEN not in str(error)
    return str(error)


def _settings(emulator, **overrides) -> Settings:
    env = databricks_environment(emulator, **overrides)
    env.pop("BACKFILL_DATABRICKS_TOKEN", None)  # secrets come from the process environment only
    return Settings.from_env(env)


def test_definitions_load_with_any_databricks_settings_and_local_ignores_them(tmp_path):
    broken = Settings.from_env({"BACKFILL_DEPLOYMENT": "databricks", "BACKFILL_DATABRICKS_AUTOSCALE": "lots"})
    resources = resources_for(broken)  # no check, no network at load
    dg.Definitions(assets=[destination_data], resources=resources)
    local = Settings.from_env(
        {"BACKFILL_DATABRICKS_AUTOSCALE": "lots", "BACKFILL_DATA_DIR": str(tmp_path), "BACKFILL_DATABRICKS_HOST": ""}
    )
    assert local.deployment == "local"
    assert resources_for(local).keys() == local_resources(local).keys()


@pytest.mark.parametrize(
    "overrides, secrets, names",
    [
        ({"BACKFILL_DATABRICKS_HOST": ""}, {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN}, ["BACKFILL_DATABRICKS_HOST"]),
        ({}, {}, ["BACKFILL_DATABRICKS_TOKEN", "BACKFILL_DATABRICKS_CLIENT_ID"]),
        (
            {"BACKFILL_DATABRICKS_CLIENT_ID": OAUTH_CLIENT[0]},
            {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN, "BACKFILL_DATABRICKS_CLIENT_SECRET": OAUTH_CLIENT[1]},
            ["BACKFILL_DATABRICKS_TOKEN", "BACKFILL_DATABRICKS_CLIENT_ID"],
        ),
        ({"BACKFILL_DATABRICKS_CLIENT_ID": OAUTH_CLIENT[0]}, {}, ["BACKFILL_DATABRICKS_CLIENT_SECRET"]),
        (
            {"BACKFILL_DATABRICKS_SPARK_VERSION": "15.4.x-scala2.12"},
            {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN},
            ["BACKFILL_DATABRICKS_CLUSTER_ID", "BACKFILL_DATABRICKS_SPARK_VERSION"],
        ),
        (
            {"BACKFILL_DATABRICKS_CLUSTER_ID": "", "BACKFILL_DATABRICKS_SPARK_VERSION": "15.4.x-scala2.12",
             "BACKFILL_DATABRICKS_NUM_WORKERS": "2"},
            {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN},
            ["BACKFILL_DATABRICKS_NODE_TYPE"],
        ),
        (
            {"BACKFILL_DATABRICKS_CLUSTER_ID": "", "BACKFILL_DATABRICKS_SPARK_VERSION": "15.4.x-scala2.12",
             "BACKFILL_DATABRICKS_NODE_TYPE": "i3.xlarge", "BACKFILL_DATABRICKS_AUTOSCALE": "8-2"},
            {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN},
            ["BACKFILL_DATABRICKS_AUTOSCALE"],
        ),
        (
            {"BACKFILL_DATABRICKS_CLUSTER_ID": "", "BACKFILL_DATABRICKS_SPARK_VERSION": "15.4.x-scala2.12",
             "BACKFILL_DATABRICKS_NODE_TYPE": "i3.xlarge"},
            {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN},
            ["BACKFILL_DATABRICKS_NUM_WORKERS", "BACKFILL_DATABRICKS_AUTOSCALE"],
        ),
        ({"BACKFILL_DATABRICKS_POLL_INTERVAL_S": "often"}, {"BACKFILL_DATABRICKS_TOKEN": CANARY_TOKEN},
         ["BACKFILL_DATABRICKS_POLL_INTERVAL_S"]),
    ],
    ids=["missing-host", "missing-token", "token-and-oauth", "oauth-without-secret", "existing-and-new-cluster",
         "new-cluster-without-node-type", "bad-autoscale", "no-cluster-size", "bad-poll-interval"],
)
def test_bad_configuration_names_the_variable(emulator, secrets_env, overrides, secrets, names):
    for name, value in secrets.items():
        secrets_env.setenv(name, value)
    message = _config_error(_settings(emulator, **overrides))
    for name in names:
        assert name in message, message


def test_unreachable_host_fails_fast(emulator, secrets_env):
    secrets_env.setenv("BACKFILL_DATABRICKS_TOKEN", CANARY_TOKEN)
    host = f"http://127.0.0.1:{free_port()}"
    message = _config_error(_settings(emulator, BACKFILL_DATABRICKS_HOST=host))
    assert f"BACKFILL_DATABRICKS_HOST={host} is unreachable" in message


def test_wrong_token_is_rejected_with_a_401(emulator, secrets_env):
    secrets_env.setenv("BACKFILL_DATABRICKS_TOKEN", "dapi-wrong")
    calls = len(emulator.calls)
    message = _config_error(_settings(emulator))
    assert "rejected the credentials in BACKFILL_DATABRICKS_TOKEN" in message
    assert ("GET", "/api/2.0/dbfs/get-status", 401) in emulator.calls[calls:]


def test_unknown_existing_cluster_names_the_cluster_variable(emulator, secrets_env):
    secrets_env.setenv("BACKFILL_DATABRICKS_TOKEN", CANARY_TOKEN)
    message = _config_error(_settings(emulator, BACKFILL_DATABRICKS_CLUSTER_ID="0000-nope"))
    assert "BACKFILL_DATABRICKS_CLUSTER_ID=0000-nope" in message and "does not exist" in message


def test_token_and_oauth_service_principal_both_authenticate(emulator, secrets_env):
    secrets_env.setenv("BACKFILL_DATABRICKS_TOKEN", CANARY_TOKEN)
    assert _start_launcher(_settings(emulator)).databricks_host == emulator.url
    secrets_env.delenv("BACKFILL_DATABRICKS_TOKEN")
    secrets_env.setenv("BACKFILL_DATABRICKS_CLIENT_SECRET", OAUTH_CLIENT[1])
    calls = len(emulator.calls)
    launcher = _start_launcher(_settings(emulator, BACKFILL_DATABRICKS_CLIENT_ID=OAUTH_CLIENT[0]))
    assert launcher.databricks_token is None
    assert ("POST", "/oidc/v1/token", 200) in emulator.calls[calls:]
    secrets_env.setenv("BACKFILL_DATABRICKS_CLIENT_SECRET", "wrong")
    message = _config_error(_settings(emulator, BACKFILL_DATABRICKS_CLIENT_ID=OAUTH_CLIENT[0]))
    assert "BACKFILL_DATABRICKS_CLIENT_ID/BACKFILL_DATABRICKS_CLIENT_SECRET" in message


def test_bad_configuration_fails_the_first_step_without_touching_spark(emulator, secrets_env, instance):
    """Through Dagster: the run fails at the launcher's start, naming the variable."""
    settings = _settings(emulator, BACKFILL_DATABRICKS_HOST="")
    result = dg.materialize(
        [destination_data], resources=resources_for(settings), partition_key="2025-01-06",
        instance=instance, raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
                or e.event_type == dg.DagsterEventType.STEP_FAILURE]
    text = " ".join(str(e.event_specific_data) for e in failures) + " ".join(
        r.message or "" for r in instance.all_logs(result.run_id)
    )
    assert "BACKFILL_DATABRICKS_HOST is not set" in text


def test_one_timeout_the_databricks_run_times_out_before_the_dagster_run(emulator):
    """BACKFILL_RUN_TIMEOUT_SECONDS is the run's maximum runtime; the Databricks run's timeout_seconds
    is a little shorter (so Databricks reports TIMEDOUT, a transient failure, first) and the launcher
    waits a little longer than that. BACKFILL_DATABRICKS_MAX_WAIT_S is gone."""
    from backfill_platform.resources.databricks import databricks_timeouts, launcher_config

    assert databricks_timeouts(1800) == (1740, 1770)
    assert databricks_timeouts(600) == (540, 570)
    assert databricks_timeouts(100) == (90, 95)
    assert databricks_timeouts(1) == (1, 2)
    for run_timeout in (1, 7.5, 59, 60, 61, 599, 1800, 86400):
        timeout, wait = databricks_timeouts(run_timeout)
        assert 1 <= timeout < wait and (timeout < run_timeout or run_timeout <= 1)
    default = launcher_config(Settings.from_env(databricks_environment(
        emulator, BACKFILL_RUN_TIMEOUT_SECONDS=None, BACKFILL_DATABRICKS_MAX_WAIT_S="5"
    )))
    assert default["run_config"]["timeout_seconds"] == 1740
    assert default["max_completion_wait_time_seconds"] == 1770


def test_the_cluster_gets_the_deployments_step_retry_schedule(emulator):
    """The asset on the cluster raises its own RetryRequested with the same schedule as here."""
    from backfill_platform.resources.databricks import launcher_config

    config = launcher_config(Settings.from_env(databricks_environment(
        emulator, BACKFILL_STEP_MAX_RETRIES="5", BACKFILL_STEP_RETRY_DELAY_SECONDS="0.5"
    )))
    remote = config["env_variables"]
    assert (remote["BACKFILL_STEP_MAX_RETRIES"], remote["BACKFILL_STEP_RETRY_DELAY_SECONDS"]) == ("5", "0.5")
    assert not any(name in remote for name in SECRETS)


def test_a_run_the_launcher_stopped_waiting_for_is_a_transient_timeout():
    """The launcher's own wait (a little longer than the run's timeout_seconds) ran out: the run is
    cancelled and the step retried, like a TIMEDOUT run."""
    from backfill_platform.classification import TRANSIENT
    from backfill_platform.resources.databricks_failures import run_failure

    still_running = run_failure(7, "RUNNING", None, "In run")
    waited = run_failure(
        7, "RUNNING", None, "In run", detail="Run `7` took more than 570s to complete.", waited_too_long=True
    )
    assert still_running.allow_retries is False  # a run that simply "failed" for no known reason: logic
    assert waited.allow_retries is True and waited.classification == TRANSIENT
    assert "took more than 570s" in waited.description


def test_every_setting_the_cluster_rebuilds_the_definitions_from_reaches_it():
    """The step on the cluster rebuilds the definitions from its environment: every variable that
    shapes the tables, the calendar, the chunks or the data gates must travel (a missing one, such as
    BACKFILL_TABLE_LAYOUT once was, silently takes its default there); secrets never do."""
    shaping = {"BACKFILL_CATALOG", "BACKFILL_SCHEMA", "BACKFILL_SOURCE_TABLE", "BACKFILL_DESTINATION_TABLE",
               "BACKFILL_CALENDAR_TABLE", "BACKFILL_TABLE_LAYOUT", "BACKFILL_START_DATE",
               "BACKFILL_HOLIDAY_CALENDAR", "BACKFILL_EXTRA_CLOSURES", "BACKFILL_MAX_PARTITIONS_PER_RUN",
               "BACKFILL_MIN_KEPT_SHARE"}
    assert shaping <= set(REMOTE_SETTING_VARS)
    environ = {name: "x" for name in shaping} | {"DATABRICKS_TOKEN": "dapi-1", "BACKFILL_TABLE_LAYOUT": "clustered"}
    sent = remote_environment(Settings(deployment="databricks"), environ)
    assert sent["BACKFILL_TABLE_LAYOUT"] == "clustered" and sent["BACKFILL_DEPLOYMENT"] == "databricks"
    assert "DATABRICKS_TOKEN" not in sent and "dapi-1" not in sent.values()
