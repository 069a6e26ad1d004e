"""``backfill-platform plan``: what a backfill over [from, to] would do, without launching anything.

Selection follows Airflow's reprocess behaviour:

- ``missing`` (default): only business days never materialized and not failed;
- ``failed``: missing days and days whose latest attempt failed;
- ``all``: every business day (already materialized ones are replaced: the write is idempotent).

Days in flight (a queued/running run, or an unfinished backfill targets them) are never selected.
Runs are what Dagster's asset backfill does with the asset's ``BackfillPolicy.multi_run(N)``: the
selected days, grouped in runs of consecutive partitions, at most N (``--chunk-size`` overrides it)
partitions per run.

Calendar changes (``plan`` only): the destination table's dates (from the Delta log's partition values,
no Spark) against the current calendar's partitions, and the stored ``business_calendar`` table (the
calendar it was last materialized with) to say why a date changed: business days now without rows (to
backfill) and dates with rows that are no longer partitions (the user decides; nothing is deleted).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from backfill_platform.reports.delta_log import delta_partition_dates, delta_stored_calendar
from backfill_platform.reports.history import (
    FAILED,
    IN_FLIGHT,
    MATERIALIZED,
    MISSING,
    NOT_BUSINESS,
    History,
    RunAttempt,
)

REPROCESS = ("missing", "failed", "all")


@dataclasses.dataclass(frozen=True)
class DayPlan:
    date: str
    reason: str
    state: str
    action: str

    @property
    def selected(self) -> bool:
        return self.action == "materialize"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    keys: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.keys[0]

    @property
    def last(self) -> str:
        return self.keys[-1]


@dataclasses.dataclass(frozen=True)
class Estimate:
    past_runs: int
    seconds_fixed_per_run: float
    seconds_per_partition: float
    run_seconds: float  # sum over the planned runs
    wall_seconds: float  # with `concurrency` runs at a time
    concurrency: int

    def line(self) -> str:
        return (
            f"estimate from {self.past_runs} past successful run(s): ~{self.run_seconds:.0f} s of run time "
            f"({self.seconds_fixed_per_run:.1f} s per run + {self.seconds_per_partition:.2f} s per business day), "
            f"~{self.wall_seconds:.0f} s wall with {self.concurrency} run(s) at a time"
        )


@dataclasses.dataclass(frozen=True)
class Plan:
    first: str
    last: str
    reprocess: str
    chunk_size: int
    newest_first: bool
    days: tuple[DayPlan, ...]
    runs: tuple[PlannedRun, ...]
    estimate: Estimate | None
    calendar_changes: CalendarChanges | None = None

    @property
    def selected_keys(self) -> list[str]:
        keys = [day.date for day in self.days if day.selected]
        return keys[::-1] if self.newest_first else keys

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.first,
            "to": self.last,
            "reprocess": self.reprocess,
            "chunk_size": self.chunk_size,
            "newest_first": self.newest_first,
            "days": [dataclasses.asdict(day) for day in self.days],
            "selected": len(self.selected_keys),
            "runs": [{"first": r.first, "last": r.last, "partitions": len(r.keys)} for r in self.runs],
            "estimate": dataclasses.asdict(self.estimate) if self.estimate else None,
            "calendar_changes": self.calendar_changes.to_dict() if self.calendar_changes else None,
        }

    def render(self) -> str:
        lines = [
            f"Plan for destination_data {self.first}..{self.last} (--reprocess {self.reprocess}); nothing is launched."
        ]
        for day in self.days:
            weekday = day.date and _weekday(day.date)
            lines.append(f"  {day.date} {weekday}  {day.reason:<34} {day.state:<19} -> {day.action}")
        selected = len(self.selected_keys)
        lines.append(
            f"{selected} business day(s) to materialize in {len(self.runs)} run(s) "
            f"(at most {self.chunk_size} per run{', newest first' if self.newest_first else ''}):"
        )
        for i, run in enumerate(self.runs, 1):
            lines.append(f"  run {i}: {run.first}..{run.last} ({len(run.keys)} partition(s))")
        if self.estimate:
            lines.append(self.estimate.line())
        elif self.runs:
            lines.append("no estimate: no successful destination_data run in this instance yet")
        if self.calendar_changes:
            lines += self.calendar_changes.render_lines()
        return "\n".join(lines)


def _weekday(date: str) -> str:
    return f"{dt.date.fromisoformat(date):%a}"


def action_for(state: str, reason: str, reprocess: str) -> str:
    if state == NOT_BUSINESS:
        return f"skip: {reason}"
    if state == IN_FLIGHT:
        return "skip: in flight"
    if state == MISSING:
        return "materialize"
    if state == FAILED:
        return "materialize" if reprocess in ("failed", "all") else "skip: failed (use --reprocess failed)"
    if state == MATERIALIZED:
        return "materialize" if reprocess == "all" else "skip: materialized (use --reprocess all)"
    return f"skip: {state}"


def chunk_runs(
    keys: Sequence[str], all_keys: Sequence[str], chunk_size: int, newest_first: bool = False
) -> list[PlannedRun]:
    """Consecutive partitions grouped into runs of at most ``chunk_size`` (oldest first unless
    ``newest_first``; then the newest run comes first and the short remainder is the oldest)."""
    index = {key: i for i, key in enumerate(all_keys)}
    ordered = sorted(keys, key=index.__getitem__)
    groups: list[list[str]] = []
    for key in ordered:
        if groups and index[key] == index[groups[-1][-1]] + 1:
            groups[-1].append(key)
        else:
            groups.append([key])
    runs: list[PlannedRun] = []
    for group in groups:
        if newest_first:
            pieces = [group[max(end - chunk_size, 0):end] for end in range(len(group), 0, -chunk_size)][::-1]
        else:
            pieces = [group[start:start + chunk_size] for start in range(0, len(group), chunk_size)]
        runs += [PlannedRun(tuple(piece)) for piece in pieces]
    return runs[::-1] if newest_first else runs


def estimate(past_runs: Sequence[RunAttempt], runs: Sequence[PlannedRun], concurrency: int) -> Estimate | None:
    """Duration = fixed + per_partition x partitions, least squares over past successful runs (or
    the median seconds per partition when all past runs had the same size)."""
    samples = [(len(r.partition_keys), r.duration_s) for r in past_runs if r.succeeded and r.duration_s]
    if not samples or not runs:
        return None
    sizes = [n for n, _ in samples]
    if len(set(sizes)) >= 2:
        mean_n = statistics.fmean(sizes)
        mean_t = statistics.fmean(t for _, t in samples)
        slope = sum((n - mean_n) * (t - mean_t) for n, t in samples) / sum((n - mean_n) ** 2 for n in sizes)
        slope = max(slope, 0.0)
        fixed = max(mean_t - slope * mean_n, 0.0)
    else:
        fixed, slope = 0.0, statistics.median(t / n for n, t in samples)
    per_run = [fixed + slope * len(run.keys) for run in runs]
    concurrency = max(concurrency, 1)
    total = sum(per_run)
    wall = max(total / min(concurrency, len(runs)), max(per_run))
    return Estimate(
        past_runs=len(samples),
        seconds_fixed_per_run=round(fixed, 3),
        seconds_per_partition=round(slope, 3),
        run_seconds=round(total, 1),
        wall_seconds=round(wall, 1),
        concurrency=concurrency,
    )


def make_plan(
    history: History,
    all_keys: Sequence[str],
    *,
    reprocess: str = "missing",
    chunk_size: int,
    newest_first: bool = False,
    past_runs: Sequence[RunAttempt] = (),
    concurrency: int = 1,
) -> Plan:
    if reprocess not in REPROCESS:
        raise ValueError(f"--reprocess {reprocess!r} is not one of {', '.join(REPROCESS)}")
    days = tuple(
        DayPlan(d.day.isoformat(), d.reason, d.state, action_for(d.state, d.reason, reprocess)) for d in history.days
    )
    selected = [day.date for day in days if day.selected]
    runs = tuple(chunk_runs(selected, all_keys, chunk_size, newest_first))
    return Plan(
        first=history.first.isoformat(),
        last=history.last.isoformat(),
        reprocess=reprocess,
        chunk_size=chunk_size,
        newest_first=newest_first,
        days=days,
        runs=runs,
        estimate=estimate(past_runs, runs, concurrency),
    )


@dataclasses.dataclass(frozen=True)
class ChangedDay:
    date: str
    now: str  # the current calendar's word: "business day", "closure: National Day of Mourning", ...
    was: str | None  # the stored calendar table's day_reason (None: not in the stored table)

    def line(self) -> str:
        was = f" (was: {self.was})" if self.was and self.was != self.now else ""
        return f"    {self.date} {_weekday(self.date)}  now {self.now}{was}"


@dataclasses.dataclass(frozen=True)
class CalendarChanges:
    """Business days without rows that the stored calendar did not have as business days, and dates
    with rows that are not partitions of the current calendar, in [first, last]."""

    first: str
    last: str
    table: str  # how Delta SQL names the destination
    stored_calendar: str | None  # the stored calendar table compared with, None: there is none
    new_business_days: tuple[ChangedDay, ...]
    stale_dates: tuple[ChangedDay, ...]
    backfill_commands: tuple[str, ...]
    delete_sql: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # nested ChangedDays too

    def render_lines(self) -> list[str]:
        lines = [f"Calendar changes {self.first}..{self.last} (destination rows vs the current calendar):"]
        if self.stored_calendar is None:
            lines.append(
                "  no stored calendar table to compare with (materialize business_calendar): new business "
                "days cannot be told from missing ones"
            )
        lines.append(
            f"  New business days without rows (to backfill): {len(self.new_business_days) or 'none'}"
        )
        lines += [day.line() for day in self.new_business_days]
        lines += [f"    run: {command}" for command in self.backfill_commands]
        lines.append(
            "  No longer business days but rows in the table (to remove or keep: you decide; "
            f"nothing is deleted): {len(self.stale_dates) or 'none'}"
        )
        lines += [day.line() for day in self.stale_dates]
        if self.delete_sql:
            lines.append(f"    to remove them yourself: {self.delete_sql}")
        return lines


def calendar_changes(
    business_days: Any,
    first: dt.date,
    last: dt.date,
    present: set[str],
    stored: Mapping[str, tuple[str, str]] | None,
    *,
    all_keys: Sequence[str],
    table: str,
    stored_calendar: str | None,
) -> CalendarChanges:
    """``present``: the dates with rows in the destination; ``stored``: date -> (flag, day_reason) of
    the stored calendar table (None when there is none)."""
    low, high = first.isoformat(), last.isoformat()
    keys = set(all_keys)
    new = tuple(
        ChangedDay(key, "a business day", stored[key][1])
        for key in all_keys
        if low <= key <= high and key not in present and stored and stored.get(key, ("B",))[0] != "B"
    )
    stale = []
    for date in sorted(d for d in present if low <= d <= high and d not in keys):
        verdict = business_days.calendar.explain(dt.date.fromisoformat(date))
        now = verdict.reason if not verdict.is_business_day else "not a partition (before the start date)"
        stale.append(ChangedDay(date, now, stored.get(date, (None, None))[1] if stored else None))
    runs = chunk_runs([day.date for day in new], all_keys, len(all_keys))
    dates = ", ".join(f"'{day.date}'" for day in stale)
    return CalendarChanges(
        first=low,
        last=high,
        table=table,
        stored_calendar=stored_calendar if stored is not None else None,
        new_business_days=new,
        stale_dates=tuple(stale),
        backfill_commands=tuple(f"backfill-platform backfill --from {r.first} --to {r.last}" for r in runs),
        delete_sql=f"DELETE FROM {table} WHERE position_date IN ({dates})" if stale else None,
    )


def read_calendar_changes(settings: Any, business_days: Any, first: dt.date, last: dt.date) -> CalendarChanges | None:
    """:func:`calendar_changes` of the local deployment's tables (None on Databricks: its tables are
    read on the cluster). The Delta logs are read without Spark; Spark (one DISTINCT query) only when
    the log cannot be followed."""
    from backfill_platform.resources.tables import DeltaTables

    if settings.deployment != "local":
        return None
    tables = DeltaTables.from_settings(settings, mode="path")
    destination, calendar = tables.destination, tables.calendar
    present = delta_partition_dates(destination.path)
    stored = delta_stored_calendar(calendar.path)
    if present is None or stored is None:
        from backfill_platform.resources.spark import local_spark_config, start_spark_session

        spark = start_spark_session(local_spark_config(settings))
        if present is None:
            query = f"SELECT DISTINCT position_date FROM {destination.sql_name} WHERE position_date IS NOT NULL"
            present = {str(row[0]) for row in spark.sql(query).collect()} if destination.exists(spark) else set()
        if stored is None:
            query = f"SELECT calendar_date, us_business_or_holiday_flag, day_reason FROM {calendar.sql_name}"
            rows = spark.sql(query).collect() if calendar.exists(spark) else []
            stored = {row[0].isoformat(): (row[1], row[2]) for row in rows}
    return calendar_changes(
        business_days, first, last, present, stored or None,
        all_keys=business_days.partitions_def.get_partition_keys(),
        table=destination.sql_name,
        stored_calendar=str(calendar),
    )
