"""The run requests of the rerun sensor (``rerun.py``): which dates of a failed run go into which
rerun (:func:`rerun_ranges`: a failed chunk is bisected, not split into single dates), and the
request itself, with the failed run's config, user tags and lineage tags."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import dagster as dg

from backfill_platform import tags
from backfill_platform.sensors.failures import DESTINATION, RERUN_SENSOR_NAME

DESTINATION_OP = DESTINATION.path[-1]  # the op of destination_data in any job that materializes it


def _rerun_config(run_config: Mapping | None) -> dict:
    """The failed run's run config, for its rerun (``full_refresh``, ``expectation_policies``...).

    The rerun runs only ``destination_data``: config of other ops (a run of all the assets) would
    not validate against its job, so only this op's entry of ``ops`` is kept."""
    config = copy.deepcopy(dict(run_config or {}))
    ops = config.pop("ops", None)
    if isinstance(ops, Mapping) and DESTINATION_OP in ops:
        config["ops"] = {DESTINATION_OP: ops[DESTINATION_OP]}
    return config


def rerun_ranges(days: Sequence[str], failure: Mapping, index: Mapping[str, int]) -> list[list[str]]:
    """The reruns of a failed run's ``days`` (those the sensor decided to rerun), each a list of
    consecutive business days (``index``: partition key -> position).

    A single-date run: that date. A range run whose failure names its bad dates (they are given up):
    the ranges of consecutive dates between them, whole (the gate passed for them). Any other range
    run (a transient or unknown error, no date named): each range in two halves (bisect), so that a
    date that fails alone is isolated in log2(n) rounds while the others land in few runs."""
    groups: list[list[str]] = []
    for day in sorted(days, key=index.__getitem__):
        if groups and index[day] == index[groups[-1][-1]] + 1:
            groups[-1].append(day)
        else:
            groups.append([day])
    if not failure["several"] or failure["bad_dates"]:
        return groups
    halves = []
    for group in groups:
        middle = (len(group) + 1) // 2
        halves += [group[:middle], group[middle:]] if len(group) > 1 else [group]
    return halves


def rerun_request(run: dg.DagsterRun, days: Sequence[str], failure: dict) -> dg.RunRequest:
    """One date: a partition key. Several consecutive dates: a range run (Dagster's range tags)."""
    first, last = days[0], days[-1]
    single = len(days) == 1
    return dg.RunRequest(
        run_key=f"rerun:{run.run_id}:{first}" if single else f"rerun:{run.run_id}:{first}..{last}",
        partition_key=first if single else None,
        run_config=_rerun_config(run.run_config),
        tags={
            **tags.user_tags(run.tags),
            **({} if single else {tags.RANGE_START: first, tags.RANGE_END: last}),
            tags.RERUN_OF_RUN_ID: run.run_id,
            tags.RERUN_ATTEMPT: str(failure["rerun_attempt"] + 1),
            tags.RERUN_REASON: f"{failure['error_class']}: {failure['reason']}"[:200],
            tags.REQUESTED_BY: RERUN_SENSOR_NAME,
        },
    )


def request_label(request: dg.RunRequest) -> str:
    """``2024-03-04``, or ``2024-03-04..2024-03-29`` for a range rerun."""
    if request.partition_key:
        return request.partition_key
    return f"{request.tags[tags.RANGE_START]}..{request.tags[tags.RANGE_END]}"
