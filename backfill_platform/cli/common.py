"""What every command shares: exit codes, output, errors, and the command's context (settings,
instance, business days, definitions), built once per command from the environment."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
from pathlib import Path

import dagster as dg

from backfill_platform.partitions import BusinessDays
from backfill_platform.settings import PROJECT_ROOT, Settings, SettingsError, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_EMPTY = 0, 1, 2, 3


class UsageError(ValueError):
    """Bad command line input; the message says what to do."""


def say(message: str) -> None:
    print(message, flush=True)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero (``nan``, ``inf``, 0 and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds above 0, e.g. 3600")
    return value


def add_range_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--from", dest="date_from", required=required, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="date_to", required=required, metavar="YYYY-MM-DD")


def dagster_home() -> Path:
    """``DAGSTER_HOME`` (default: the repo's ``dagster_home/``), checked to hold a dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / "dagster_home")))
    if not (home / "dagster.yaml").exists():
        raise SettingsError(
            f"DAGSTER_HOME={home} has no dagster.yaml; point DAGSTER_HOME at the repo's dagster_home/ "
            "or copy dagster_home/dagster.yaml there."
        )
    return home


@dataclasses.dataclass
class CommandContext:
    """The settings of this process and what is built from them, once per command."""

    settings: Settings

    @classmethod
    def load(cls) -> CommandContext:
        return cls(load_settings())

    @functools.cached_property
    def business_days(self) -> BusinessDays:
        return BusinessDays.from_settings(self.settings.calendar)

    @functools.cached_property
    def defs(self) -> dg.Definitions:
        """The code location as the daemon loads it (``definitions.defs``: same environment)."""
        from backfill_platform import definitions  # builds the definitions once, on first use

        return definitions.defs

    @functools.cached_property
    def home(self) -> Path:
        return dagster_home()

    @functools.cached_property
    def instance(self) -> dg.DagsterInstance:
        self.home  # noqa: B018 - checks DAGSTER_HOME first
        return dg.DagsterInstance.get()
