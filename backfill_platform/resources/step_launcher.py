"""Where each asset's step executes: the seam between the assets and the cluster.

The assets require the resource key ``pyspark_step_launcher``. Locally it is bound to a no-op
(``None``): the step runs in the run's own process. On Databricks it is bound to
``dagster_databricks.databricks_pyspark_step_launcher`` (see ``resources/databricks.py``). A Dagster
Pipes version would change the asset bodies, not only this binding (docs/databricks.md).
"""

import dagster as dg

STEP_LAUNCHER_KEY = "pyspark_step_launcher"


def in_process_step_launcher() -> dg.ResourceDefinition:
    return dg.ResourceDefinition.none_resource(
        description="Local deployment: steps run in the run's own process."
    )
