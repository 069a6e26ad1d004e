"""Input that reaches the platform from outside its CLI's date parser: run config, settings, CLI flags,
and partition keys given to Dagster directly. Each is refused with a clear error, and nothing is
written. (The GraphQL doors, with a real webserver, are in
``test_entry_points.py::test_web_ui_partition_backfill_launcher``.)"""

import datetime as dt
import secrets

import dagster as dg
import pytest

from backfill_platform import dagster_internals
from backfill_platform.cli import main
from backfill_platform.concurrency import explain_partition_key
from backfill_platform.resources.tables import DeltaTables
from backfill_platform.sensors.failures import describe_failed_run
from backfill_platform.settings import Settings, SettingsError
from backfill_platform_tests.helpers import BUSINESS_DAYS, TEST_DEFS, delta_version, destination_data, seed_source

REDIRECTS = [
    pytest.param({"tables": {"config": {"destination_table": "stolen"}}}, id="another table"),
    pytest.param({"tables": {"config": {"catalog": "other_catalog"}}}, id="another catalog"),
    pytest.param(
        {"pyspark": {"config": {"spark_config": {"spark.driver.extraJavaOptions": "-javaagent:/tmp/x.jar"}}}},
        id="JVM options",
    ),
    pytest.param(
        {"pyspark": {"config": {"spark_config": {}, "remote": "sc://attacker.example:15002"}}},
        id="foreign Spark Connect",
    ),
]


def _error_messages(result) -> list[str]:
    """Every error message (cause chains included) in the run's events."""
    messages = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return messages


@pytest.mark.parametrize("resources_config", REDIRECTS)
def test_run_config_cannot_redirect_the_write(spark, resources, settings, instance, resources_config):
    """``dagster asset materialize -c`` / ``execute_in_process`` never pass through the run queue:
    the resources themselves refuse, before Spark starts or a table is touched. The failure is a
    logic error about no particular date: the rerun sensor gives it up once, it never reruns it."""
    seed_source(resources, first_day="2024-07-01", last_day="2024-07-05")
    before = delta_version(spark, resources["tables"].destination)
    result = dg.materialize(
        [destination_data], resources=resources, partition_key="2024-07-01", instance=instance,
        run_config={"resources": resources_config}, raise_on_error=False,
    )
    assert not result.success
    errors = _error_messages(result)  # resource initialization failed: the run failed, no step ran
    refusal = "[logic: run config configures the deployment's resources]"
    assert any(refusal in message and next(iter(resources_config)) in message for message in errors), errors
    assert not result.get_step_success_events()
    failed = describe_failed_run(instance, instance.get_run_by_id(result.run_id), 0.0, BUSINESS_DAYS)
    assert (failed.error_class, failed.bad_dates) == ("logic", ())
    assert refusal in failed.message
    assert delta_version(spark, resources["tables"].destination) == before  # nothing written
    assert not (settings.data_dir / "warehouse" / "backfill_demo" / "stolen").exists()


def test_the_asset_run_config_stays_open(spark, resources):
    """Only the deployment's resources are closed: the seed's widgets (full_refresh, expectation
    policies) are still run config."""
    seed_source(resources, first_day="2024-07-01", last_day="2024-07-05")
    result = dg.materialize(
        [destination_data], resources=resources, partition_key="2024-07-01",
        run_config={"ops": {"destination_data": {"config": {"full_refresh": True}}}},
    )
    assert result.success


@pytest.mark.parametrize(
    "variable, value",
    [
        ("BACKFILL_DESTINATION_TABLE", "../../x"),
        ("BACKFILL_SCHEMA", "a; DROP TABLE b"),
        ("BACKFILL_CATALOG", "main`.`evil"),
        ("BACKFILL_SOURCE_TABLE", "x/y"),
    ],
)
def test_table_names_are_identifiers(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})
    field = {"BACKFILL_DESTINATION_TABLE": "destination_table", "BACKFILL_SCHEMA": "schema_name",
             "BACKFILL_CATALOG": "catalog", "BACKFILL_SOURCE_TABLE": "source_table"}[variable]
    with pytest.raises(ValueError, match="is not a table identifier"):
        DeltaTables(**{field: value})


def test_catalog_names_are_quoted_in_sql():
    assert DeltaTables(mode="catalog").destination.sql_name == "`demos`.`backfill_demo`.`destination_data`"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--timeout", "nan"], "'nan' must be a number of seconds above 0"),
        (["--timeout", "-5"], "'-5' must be a number of seconds above 0"),
        (["--timeout", "inf"], "'inf' must be a number of seconds above 0"),
        (["--tags", "backfill_platform/rerun_attempt=9"], "are the platform's own"),
        (["--tags", "backfill_platform/rerun_gave_up=true"], "are the platform's own"),
        (["--tags", "dagster/backfill=x"], "are Dagster's own"),
    ],
)
def test_cli_refuses_bad_timeouts_and_platform_tags(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "never-created"))
    try:
        code = main(["backfill", "--from", "2024-07-01", "--to", "2024-07-02", *argv])
    except SystemExit as exit_:  # argparse's own refusal
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "never-created").exists()  # nothing was launched


SPARK_TOKEN = "spark-canary-" + secrets.token_hex(8)


@pytest.mark.parametrize("remote", [
    f"sc://127.0.0.1:15002/;token={SPARK_TOKEN}",
    f"sc://127.0.0.1:15002/;use_ssl=true;Token={SPARK_TOKEN}",
    f"sc://127.0.0.1:15002;token={SPARK_TOKEN}",  # malformed too: still not echoed
], ids=["token", "Token after use_ssl", "malformed, with a token"])  # (a test id is printed)
def test_a_token_in_the_spark_connect_url_is_refused_without_being_echoed(remote, capsys, tmp_path, monkeypatch):
    """BACKFILL_SPARK_REMOTE becomes the Spark resource's config, which Dagster keeps in the code
    location's snapshot (``configured_values``), and a server that cannot be reached is
    reported with the URL: the platform takes no secret in it."""
    with pytest.raises(SettingsError, match="BACKFILL_SPARK_REMOTE") as refused:
        Settings.from_env({"BACKFILL_SPARK_REMOTE": remote})
    assert SPARK_TOKEN not in str(refused.value)
    monkeypatch.setenv("BACKFILL_SPARK_REMOTE", remote)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "never-created"))
    assert main(["backfill", "--from", "2024-07-01", "--to", "2024-07-02"]) == 2
    out = capsys.readouterr()
    assert "BACKFILL_SPARK_REMOTE" in out.err and "Traceback" not in out.err
    assert SPARK_TOKEN not in out.out + out.err
    assert not (tmp_path / "never-created").exists()  # nothing was launched


@pytest.mark.parametrize("remote", ["http://127.0.0.1:15002", "sc://", "sc://127.0.0.1:port", "127.0.0.1:15002"])
def test_a_spark_connect_url_is_checked_when_the_settings_load(remote):
    with pytest.raises(SettingsError, match="is not a Spark Connect URL like sc://127.0.0.1:15002"):
        Settings.from_env({"BACKFILL_SPARK_REMOTE": remote})


@pytest.mark.parametrize("remote", ["sc://127.0.0.1:15002", " sc://localhost ", "sc://10.0.0.5:15002/;use_ssl=false"])
def test_a_spark_connect_url_without_a_token_is_taken(remote):
    assert Settings.from_env({"BACKFILL_SPARK_REMOTE": remote}).spark.remote == remote.strip()


def test_dagster_maps_an_excluded_key_to_the_next_day_and_the_platform_refuses_it():
    """The upstream bug (kept as a reproduction: when it fails, Dagster fixed it and the workaround in
    dagster_internals.py can go) and the platform's refusal of it."""
    plain = dg.DailyPartitionsDefinition(start_date="2024-01-01", exclusions=[dt.datetime(2024, 7, 4)])
    assert list(plain.subset_with_partition_keys(["2024-07-04"]).get_partition_keys()) == ["2024-07-05"]

    from dagster._core.execution.asset_backfill import AssetBackfillData  # what the webserver calls

    dagster_internals.refuse_unknown_partition_keys_in_asset_backfills(explain_partition_key)
    graph = TEST_DEFS.resolve_asset_graph()
    arguments = dict(
        asset_graph=graph, asset_selection=[dg.AssetKey("destination_data")], dynamic_partitions_store=None,
        backfill_start_timestamp=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp(), all_partitions=False,
    )
    with pytest.raises(dg.DagsterUnknownPartitionError, match=r"2024-07-04 \(Thursday\): holiday: Independence Day"):
        AssetBackfillData.from_asset_partitions(partition_names=["2024-07-04"], **arguments)
    accepted = AssetBackfillData.from_asset_partitions(partition_names=["2024-07-05"], **arguments)
    subset = accepted.target_subset.partitions_subsets_by_asset_key[dg.AssetKey("destination_data")]
    assert list(subset.get_partition_keys()) == ["2024-07-05"]
