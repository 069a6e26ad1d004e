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

from backfill_platform.settings import QualitySettings

MIN_KEPT_SHARE_FIELD = "ops.destination_data.config.min_kept_share"


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
    min_kept_share: float | None = Field(
        default=None,
        description=(
            "This run's minimum share (0, 1] of a date's source rows that must survive the 'drop' "
            "expectations; a date with fewer (or none) fails the run before anything is written. "
            "Default: the deployment's BACKFILL_MIN_KEPT_SHARE (0.5)."
        ),
    )

    def kept_share(self, default: float) -> float:
        """The run's minimum kept share: ``min_kept_share`` if set, else ``default`` (the settings').

        Checked here, in the step body, rather than by a pydantic validator: Dagster builds the config
        object before the body runs, where an error is not classified (the rerun sensor would retry
        it); a SettingsError from the body is a range-wide configuration error, never retried."""
        if self.min_kept_share is None:
            return default
        return QualitySettings.check_share(MIN_KEPT_SHARE_FIELD, self.min_kept_share)


def destination_run_config(
    full_refresh: bool = False,
    expectation_policies: dict[str, str] | None = None,
    min_kept_share: float | None = None,
) -> dict:
    """The run config that sets :class:`DestinationConfig` (for backfills launched from the CLI); a
    bad ``min_kept_share`` raises SettingsError before any run is launched."""
    config: dict = {"full_refresh": full_refresh}
    if expectation_policies:
        config["expectation_policies"] = dict(expectation_policies)
    if min_kept_share is not None:
        config["min_kept_share"] = QualitySettings.check_share(MIN_KEPT_SHARE_FIELD, min_kept_share)
    return {"ops": {"destination_data": {"config": config}}}
