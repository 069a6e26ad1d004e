"""The business-day calendar: which days are partitions of ``destination_data``, and why not.

A business day is a Monday-Friday that is not a holiday of the configured pandas holiday calendar
(US federal holidays, observed dates, by default) and not an extra closure. Non-business days are
not partitions at all: they are Dagster ``exclusions`` of a daily partitions definition, so each
partition's window is exactly one day (Friday's partition closes Saturday 00:00, not Monday).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from backfill_platform import tags
from backfill_platform.settings import CalendarSettings, SettingsError

TIMEZONE = "America/New_York"
WEEKEND_CRON = "0 0 * * 0,6"  # Saturdays and Sundays, at the start of their daily window
DATE_KEY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class InvalidPartitionDateError(ValueError):
    """A date that cannot be a partition of destination_data; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class DayVerdict:
    day: dt.date
    is_business_day: bool
    reason: str  # "business day", "weekend (Saturday)", "holiday: Independence Day", ...

    def __str__(self) -> str:
        return f"{self.day.isoformat()} ({self.day:%A}): {self.reason}"


@dataclasses.dataclass(frozen=True)
class BusinessCalendar:
    """Holidays and closures between two dates, and the answer to 'is D a business day, and why'."""

    holidays: Mapping[dt.date, str]
    first_day: dt.date
    last_day: dt.date

    @classmethod
    def from_settings(cls, settings: CalendarSettings, last_day: dt.date | None = None) -> BusinessCalendar:
        # Holidays are listed to the end of next year, so that every partition up to today (and the
        # calendar table's default range) is covered whatever the start date.
        today = dt.date.today()
        last = last_day or dt.date(max(today.year + 1, 2026), 12, 31)
        first = min(settings.start_date, dt.date(2020, 1, 1))
        holidays = _named_holidays(settings.holiday_calendar, first, last)
        holidays.update(
            {day: f"closure: {reason}" for day, reason in settings.extra_closures.items()}
        )
        return cls(holidays=holidays, first_day=first, last_day=last)

    def explain(self, day: dt.date) -> DayVerdict:
        if day.weekday() >= 5:
            return DayVerdict(day, False, f"weekend ({day:%A})")
        if day in self.holidays:
            name = self.holidays[day]
            reason = name if name.startswith("closure: ") else f"holiday: {name}"
            return DayVerdict(day, False, reason)
        return DayVerdict(day, True, "business day")

    def weekday_holidays(self) -> list[dt.date]:
        """Holidays and closures that fall on a weekday (weekend ones are excluded anyway)."""
        return sorted(day for day in self.holidays if day.weekday() < 5)


def _named_holidays(path: str, first: dt.date, last: dt.date) -> dict[dt.date, str]:
    """The holidays the calendar class at ``path`` names in [first, last].

    Importing pandas takes 0.5-0.9 s on this 2-core machine, in every process that loads the definitions
    (the code server, each run, each CLI command). pandas' own calendars (the default) only change with
    pandas, so their answer is kept in a file per calendar, span and pandas version (``holiday_cache_file``)
    and later processes read it instead; any other calendar class, or a file that cannot be read, is
    computed by pandas as before. A file that cannot be written is skipped.
    """
    cache = holiday_cache_file(path, first, last)
    if cache is not None:
        try:
            kept = {dt.date.fromisoformat(day): str(name) for day, name in json.loads(cache.read_text())}
            if kept:  # the spans asked for (years) always hold holidays: an empty file is a damaged one
                return kept
        except (OSError, ValueError, TypeError):
            pass
    calendar_class = _import_holiday_calendar(path)
    named = calendar_class().holidays(first, last, return_name=True)
    holidays = {timestamp.date(): str(name) for timestamp, name in named.items()}
    if cache is not None:
        temporary = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(sorted((day.isoformat(), name) for day, name in holidays.items())))
            os.replace(temporary, cache)  # readers see the old file or the whole new one
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)  # a half-written file is not left behind
    return holidays


def holiday_cache_file(path: str, first: dt.date, last: dt.date) -> Path | None:
    """Where pandas' answer for calendar ``path`` over [first, last] is kept: under ``$XDG_CACHE_HOME``
    (default ``~/.cache``) ``/backfill_platform/``; None for a calendar that is not pandas' own."""
    if not path.startswith("pandas.tseries.holiday:"):
        return None
    try:
        version = importlib.metadata.version("pandas")
    except importlib.metadata.PackageNotFoundError:
        return None
    key = hashlib.sha256(f"{path}|{first}|{last}|{version}".encode()).hexdigest()[:16]
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory: nowhere to keep it
        return None
    return root / "backfill_platform" / f"holidays-{key}.json"


def _import_holiday_calendar(path: str) -> type:
    module_name, _, class_name = path.partition(":")
    try:
        calendar_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise SettingsError(
            f"BACKFILL_HOLIDAY_CALENDAR={path!r} does not name a holiday calendar class; "
            "use 'module:Class', e.g. 'pandas.tseries.holiday:USFederalHolidayCalendar'."
        ) from None
    if not hasattr(calendar_class, "holidays"):
        raise SettingsError(
            f"BACKFILL_HOLIDAY_CALENDAR={path!r} is not a pandas AbstractHolidayCalendar."
        )
    return calendar_class


class BusinessDayPartitionsDefinition(dg.DailyPartitionsDefinition):
    """Dagster's daily partitions with exclusions, whose 'unknown partition' error says why.

    Dagster rejects a holiday with "Could not find a partition with key `2024-07-04`"; this says
    "2024-07-04 (Thursday): holiday: Independence Day: not a business day, ..." instead.
    """

    def validate_partition_key(self, partition_key: str, context) -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except dg.DagsterUnknownPartitionError as error:
            calendar = self.__dict__.get("_calendar")
            if calendar is None:
                raise
            try:
                BusinessDays(calendar, self).parse_date(partition_key)
            except InvalidPartitionDateError as reason:
                raise dg.DagsterUnknownPartitionError(
                    f"Could not find a partition with key `{partition_key}`: {reason}"
                ) from None
            raise error

    # Speed (issue 5: the rerun sensor's tick over ~1,750 partitions). Dagster validates keys, e.g.
    # while building the partition status cache, with has_partition_key, which walks the exclusion
    # schedules for every key, and its lru_cached methods hash the definition through a repr that
    # lists every exclusion. Both answers are the same when computed once.

    def __hash__(self) -> int:
        cached = self.__dict__.get("_cached_hash")
        if cached is None:
            cached = super().__hash__()
            object.__setattr__(self, "_cached_hash", cached)  # the definition is immutable
        return cached

    def _excluded_dates(self) -> frozenset[dt.date] | None:
        """The excluded dates, when the exclusions are the weekend cron plus dates (the only shape
        ``build_business_day_partitions`` makes); None otherwise."""
        cached = self.__dict__.get("_cached_excluded")
        if cached is None:
            crons = [e for e in self.exclusions if isinstance(e, str)]
            dates = [e for e in self.exclusions if not isinstance(e, str)]
            tz = ZoneInfo(self.timezone)
            cached = (
                frozenset(dt.datetime.fromtimestamp(e.timestamp, tz).date() for e in dates)
                if crons == [WEEKEND_CRON] and self.fmt == "%Y-%m-%d" and self.end is None
                else False
            )
            object.__setattr__(self, "_cached_excluded", cached)
        return cached or None

    def get_partition_keys(self, current_time=None, dynamic_partitions_store=None):
        """Dagster's keys, computed once per last partition (per business day) rather than per call:
        a command such as ``plan`` asks several times and each walk of 10 years costs ~0.08 s."""
        if current_time is not None or dynamic_partitions_store is not None:
            return super().get_partition_keys(current_time, dynamic_partitions_store)
        last = self.get_last_partition_key()
        cached = self.__dict__.get("_cached_keys")
        if cached is None or cached[0] != last:
            cached = (last, tuple(super().get_partition_keys()))
            object.__setattr__(self, "_cached_keys", cached)
        return list(cached[1])

    def has_partition_key(self, partition_key: str) -> bool:
        """Dagster's answer (test_partitions checks they agree), from a set of excluded dates."""
        excluded = self._excluded_dates()
        if excluded is None:
            return super().has_partition_key(partition_key)
        try:
            day = dt.date.fromisoformat(partition_key)
        except (TypeError, ValueError):
            return False
        if day.isoformat() != partition_key or day.weekday() >= 5 or day in excluded or day < self.start.date():
            return False
        last = self.get_last_partition_key()
        return last is not None and partition_key <= last


def build_business_day_partitions(
    settings: CalendarSettings, calendar: BusinessCalendar
) -> BusinessDayPartitionsDefinition:
    tz = ZoneInfo(TIMEZONE)
    exclusions: list[str | dt.datetime] = [WEEKEND_CRON]
    exclusions += [
        dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        for day in calendar.weekday_holidays()
        if day >= settings.start_date
    ]
    partitions_def = BusinessDayPartitionsDefinition(
        start_date=settings.start_date.isoformat(),
        timezone=TIMEZONE,
        fmt="%Y-%m-%d",
        exclusions=exclusions,
    )
    object.__setattr__(partitions_def, "_calendar", calendar)  # for validate_partition_key's reasons
    return partitions_def


def parse_iso_date(value: str) -> dt.date:
    """Strict YYYY-MM-DD, or an error that shows the expected form."""
    text = str(value).strip()
    if not DATE_KEY_PATTERN.match(text):
        raise InvalidPartitionDateError(
            f"{value!r} is not a date: use the form YYYY-MM-DD, e.g. 2024-06-17."
        )
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidPartitionDateError(
            f"{value!r} is not a calendar date (month 01-12, day valid for the month)."
        ) from None


@dataclasses.dataclass(frozen=True)
class BusinessDays:
    """The calendar and the partitions definition built from it: every question about dates.

    Built once per code location (``definitions.build_defs``) or per command, from the calendar
    settings; nothing here reads the environment.
    """

    calendar: BusinessCalendar
    partitions_def: BusinessDayPartitionsDefinition

    @classmethod
    def from_settings(cls, settings: CalendarSettings) -> BusinessDays:
        calendar = BusinessCalendar.from_settings(settings)
        return cls(calendar, build_business_day_partitions(settings, calendar))

    def parse_date(self, value: str, now: dt.datetime | None = None) -> dt.date:
        """Turn user input into a business date that is a partition, or say exactly why it is not.

        This is the only way a date from outside (CLI, partition key) reaches a SQL string.
        """
        day = parse_iso_date(value)
        start = dt.date.fromisoformat(self.partitions_def.start.strftime("%Y-%m-%d"))
        if day < start:
            raise InvalidPartitionDateError(
                f"{day} is before the first partition {start} (set BACKFILL_START_DATE to go further back)."
            )
        verdict = self.calendar.explain(day)
        if not verdict.is_business_day:
            raise InvalidPartitionDateError(
                f"{verdict}: not a business day, so it is not a partition of destination_data."
            )
        existing = self.partitions_def.get_partition_keys(current_time=now)
        last_key = existing[-1] if existing else None
        if last_key is None or day > dt.date.fromisoformat(last_key):
            raise InvalidPartitionDateError(
                f"{day} has not ended yet in {TIMEZONE}: the latest complete business day is {last_key}."
            )
        return day

    def between(self, first: str, last: str, now: dt.datetime | None = None) -> list[str]:
        """Partition keys of the business days in [first, last], both ends inclusive.

        The ends may be non-business days (a backfill 'from Saturday'), but must be real dates within
        the partitions' span, and ``first`` must not be after ``last``.
        """
        days = []
        for label, value in (("--from", first), ("--to", last)):
            try:
                days.append(self.parse_date(value, now=now))
            except InvalidPartitionDateError as error:
                if "not a business day" not in str(error):
                    raise InvalidPartitionDateError(f"{label}: {error}") from None
                days.append(dt.date.fromisoformat(str(value).strip()))
        start, end = days
        if start > end:
            raise InvalidPartitionDateError(f"--from {start} is after --to {end}.")
        keys = [
            key
            for key in self.partitions_def.get_partition_keys(current_time=now)
            if start.isoformat() <= key <= end.isoformat()
        ]
        if not keys:
            raise InvalidPartitionDateError(
                f"there is no business day between {start} and {end}: "
                + "; ".join(
                    str(self.calendar.explain(start + dt.timedelta(days=i))) for i in range((end - start).days + 1)
                )
            )
        return keys

    def dates_of(self, keys: Sequence[str]) -> list[dt.date]:
        """Partition keys -> dates, each checked to be a business date (they go into a SQL predicate)."""
        days = [parse_iso_date(key) for key in keys]
        for day in days:
            verdict = self.calendar.explain(day)
            if not verdict.is_business_day:
                raise InvalidPartitionDateError(f"{verdict}: not a business day, refusing to write it.")
        return days

    def run_dates(self, run_tags: Mapping[str, str]) -> list[dt.date] | None:
        """The business dates a run processes, from its partition tags (None: not date-partitioned).

        The one parser of "which dates does this run cover": the run queue's date slots, the rerun
        and alert sensors and the status reports all use it.
        """
        covered = tags.partition_range(run_tags)
        if covered is None:
            return None
        try:
            if covered[0] == covered[1]:
                return [dt.date.fromisoformat(covered[0])]
            keys = self.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(*covered))
            return [dt.date.fromisoformat(key) for key in keys]
        except (ValueError, dg.DagsterInvariantViolationError, dg.DagsterUnknownPartitionError):
            return None

    def run_keys(self, run_tags: Mapping[str, str]) -> list[str]:
        """:meth:`run_dates` as partition keys ([] for a run that is not date-partitioned)."""
        return [day.isoformat() for day in self.run_dates(run_tags) or []]
