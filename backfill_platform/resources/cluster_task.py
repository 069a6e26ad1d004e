"""One-off runs on the Databricks deployment's cluster, for the commands that need the workspace's
Spark but run on a machine that has none: ``backfill-platform restore`` (``cli/restore.py``) and
``backfill-platform status --export-log`` (``cli/reports.py``).

A :class:`ClusterTask` builds the step launcher (settings, credentials, workspace and cluster checked
as for a step), uploads a small main script (:data:`CLUSTER_MAIN`) and a zip of the
``backfill_platform`` package to DBFS under ``<staging prefix>/<purpose>/<id>/``, and then, per
:meth:`ClusterTask.run`, uploads a JSON request, submits a one-off run (``runs/submit`` of a
``spark_python_task`` with the launcher's run config: cluster, libraries, timeout), waits for it and
reads the JSON answer back. On the cluster the main script calls :func:`run_request`, which hands the
request to the function of its ``task``: :func:`backfill_platform.restore.restore_request` or
:func:`backfill_platform.reports.export_log.export_request`, with the cluster's Spark session.
The submits carry no idempotency token and are not retried.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import zipfile
from typing import Any

from backfill_platform.settings import PROJECT_ROOT, Settings

CLUSTER_MAIN = '''"""backfill-platform on the cluster: cluster_main.py CODE_ZIP REQUEST_JSON ANSWER_JSON."""
import json
import sys
import tempfile
import zipfile

code_zip, request_file, answer_file = sys.argv[1:4]
with tempfile.TemporaryDirectory(prefix="backfill_platform_task_") as folder:  # removed afterwards
    with zipfile.ZipFile(code_zip) as archive:
        archive.extractall(folder)
    sys.path.insert(0, folder)
    from backfill_platform.resources.cluster_task import run_request

    with open(request_file) as handle:
        request = json.load(handle)
    answer = run_request(spark, request)  # noqa: F821 - the cluster's session (a Databricks runtime global)
with open(answer_file, "w") as handle:
    json.dump(answer, handle)
print(json.dumps({"task": request["task"], "action": request["action"], "error": answer.get("error")}))
'''


def run_request(spark: Any, request: dict[str, Any]) -> dict[str, Any]:
    """On the cluster: the answer (JSON) of the function of ``request["task"]`` to ``request``."""
    if request["task"] == "restore":
        from backfill_platform.restore import restore_request

        return restore_request(spark, request)
    if request["task"] == "export_log":
        from backfill_platform.reports.export_log import export_request

        return export_request(spark, request)
    raise ValueError(f"unknown cluster task {request['task']!r}")


class ClusterRunFailed(Exception):
    """The one-off Databricks run did not succeed (failed, timed out, canceled)."""

    def __init__(self, run_id: int, detail: str):
        super().__init__(f"Databricks run {run_id} did not succeed: {detail}")
        self.run_id, self.detail = run_id, detail


class ClusterTask:
    """One-off runs of ``purpose`` (``"restore"``, ``"export_log"``) on the configured cluster, each
    named ``run_name`` in Databricks; their files under ``<staging prefix>/<purpose>/<id>/``."""

    def __init__(self, settings: Settings, purpose: str, run_name: str):
        import tempfile

        from backfill_platform.resources.databricks import build_step_launcher

        with tempfile.TemporaryDirectory() as unused:  # the launcher's step code folder: no step is launched
            # validates the settings, reads the credentials, checks the workspace and the cluster
            self.launcher = build_step_launcher(settings, unused)
        self.purpose, self.run_name = purpose, run_name
        self.client = self.launcher.databricks_runner.client
        self.folder = f"{self.launcher.staging_prefix}/{purpose}/{uuid.uuid4().hex}"
        self.steps = 0
        self._put("cluster_main.py", CLUSTER_MAIN.encode())
        self._put("code.zip", _code_zip())

    def _put(self, name: str, data: bytes) -> None:
        self.client.put_file(io.BytesIO(data), f"{self.folder}/{name}", overwrite=True)

    def run(self, action: str, request: dict[str, Any], summary: str) -> dict[str, Any]:
        """Run ``request`` (its ``action``) on the cluster and return the answer; print "Databricks run
        N: ``summary`` on the cluster" once submitted. Raises :class:`ClusterRunFailed`."""
        from dagster_databricks.databricks import DatabricksError

        self.steps += 1
        name = f"{self.steps}_{action}"
        self._put(f"{name}_request.json", json.dumps({**request, "task": self.purpose, "action": action}).encode())
        task = {"spark_python_task": {
            "python_file": f"dbfs:{self.folder}/cluster_main.py",
            "parameters": [
                f"/dbfs{self.folder}/{file}" for file in ("code.zip", f"{name}_request.json", f"{name}_answer.json")
            ],
        }}
        runner = self.launcher.databricks_runner
        run_id = runner.submit_run({**self.launcher.run_config, "run_name": self.run_name}, task)
        print(f"Databricks run {run_id}: {summary} on the cluster", flush=True)
        try:
            self.client.wait_for_run_to_complete(
                logging.getLogger(f"backfill_platform.{self.purpose}"), run_id,
                poll_interval_sec=runner.poll_interval_sec, max_wait_time_sec=runner.max_wait_time_sec,
                verbose_logs=False,
            )
        except DatabricksError as error:
            raise ClusterRunFailed(run_id, str(error)) from None
        return json.loads(self.client.read_file(f"{self.folder}/{name}_answer.json"))


def _code_zip() -> bytes:
    """The ``backfill_platform`` package, as the step launcher ships it to the cluster."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((PROJECT_ROOT / "backfill_platform").rglob("*.py")):
            archive.write(path, path.relative_to(PROJECT_ROOT).as_posix())
    return buffer.getvalue()
