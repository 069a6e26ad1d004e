"""Where ``destination_data``'s step executes: the seam between the asset and the cluster.

The asset requires the resource key ``pyspark_step_launcher``. Locally it is bound to a no-op
(``None``): the step runs in the run's own process. On Databricks it is bound to
``dagster_databricks.databricks_pyspark_step_launcher`` (see ``resources/databricks.py``); a Dagster
Pipes-based launcher could be bound here later without touching the asset.
"""

import dagster as dg

STEP_LAUNCHER_KEY = "pyspark_step_launcher"


def in_process_step_launcher() -> dg.ResourceDefinition:
    return dg.ResourceDefinition.none_resource(
        description="Local deployment: steps run in the run's own process."
    )
