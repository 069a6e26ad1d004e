"""Run config of ``destination_data`` (the seed notebook's widgets, as Dagster ``Config``).

The seed took ``position_date`` / ``run_date`` and ``full_refresh`` widgets. Here the date is the
partition (the launchpad's partition picker, ``backfill-platform backfill --from/--to``, the
``dagster/partition`` or ``dagster/asset_partition_range_*`` tags), so it cannot disagree with what
Dagster records; the other parameters are this config, settable in the launchpad
(``ops: destination_data: config: ...``) and with ``backfill-platform backfill --full-refresh`` /
``--expect NAME=POLICY``.
"""

import dagster as dg
from pydantic import Field


class DestinationConfig(dg.Config):
    full_refresh: bool = Field(
        default=False,
        description=(
            "False (default): replace exactly the run's business dates (replaceWhere position_date IN "
            "(...)). True: replace the whole window first..last of the run, so rows of non-business days "
            "inside it (e.g. holiday rows an old notebook wrote) are removed too."
        ),
    )
    expectation_policies: dict[str, str] = Field(
        default_factory=dict,
        description="Per-expectation policy overrides, e.g. {'value_in_range': 'fail'}; policies: warn, drop, fail.",
    )


def destination_run_config(full_refresh: bool = False, expectation_policies: dict[str, str] | None = None) -> dict:
    """The run config that sets :class:`DestinationConfig` (for backfills launched from the CLI)."""
    config: dict = {"full_refresh": full_refresh}
    if expectation_policies:
        config["expectation_policies"] = dict(expectation_policies)
    return {"ops": {"destination_data": {"config": config}}}
