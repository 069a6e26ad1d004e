"""Spark that cannot start (no Java, Delta jars that cannot be resolved) fails the run with a message
that says what to do, and the destination table is unchanged.

Each case runs `dagster asset materialize` in its own process: in this pytest process a Spark session
already exists and would be reused."""

import subprocess
import sys

import pytest

from backfill_platform.settings import PROJECT_ROOT
from backfill_platform_tests.helpers import delta_version, materialize_destination, seed_source


@pytest.fixture
def deployment(spark, settings, resources):
    seed_source(resources, first_day="2024-07-01", last_day="2024-07-05")
    materialize_destination(resources, "2024-07-01")
    return settings, resources


def materialize_in_subprocess(settings, env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in {"JAVA_HOME", "DAGSTER_HOME"}}
    env.update({"BACKFILL_DATA_DIR": str(settings.data_dir), **env_overrides})
    return subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "backfill_platform.definitions",
         "--select", "destination_data", "--partition", "2024-07-02"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_no_java_says_install_java_and_changes_nothing(spark, deployment, tmp_path):
    settings, resources = deployment
    version = delta_version(spark, resources["tables"].destination)

    result = materialize_in_subprocess(settings, {"PATH": str(tmp_path / "empty-bin")})

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "no Java runtime was found" in output
    assert "Install Java 17" in output
    assert delta_version(spark, resources["tables"].destination) == version


def test_unresolvable_delta_jars_say_what_happened_and_change_nothing(spark, deployment, tmp_path):
    settings, resources = deployment
    version = delta_version(spark, resources["tables"].destination)
    empty_repo = tmp_path / "empty-maven-repo"
    empty_repo.mkdir()
    ivy_settings = tmp_path / "ivysettings.xml"
    ivy_settings.write_text(
        f"""<ivysettings><settings defaultResolver="offline"/><resolvers>
        <filesystem name="offline" m2compatible="true">
          <artifact pattern="{empty_repo}/[organisation]/[module]/[revision]/[artifact]-[revision].[ext]"/>
        </filesystem></resolvers></ivysettings>"""
    )

    result = materialize_in_subprocess(
        settings,
        {
            "BACKFILL_JAR_CACHE": str(tmp_path / "jar-cache"),  # nothing cached yet
            "BACKFILL_SPARK_CONF": f"spark.jars.ivySettings={ivy_settings}",  # no repository reachable
        },
    )

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Delta Lake's jars (io.delta:delta-spark_" in output
    assert "could not be resolved" in output
    assert "BACKFILL_SPARK_JARS" in output
    assert delta_version(spark, resources["tables"].destination) == version
