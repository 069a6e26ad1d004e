"""``write_hooks``: the one seam between ``destination_data`` and its Delta write.

``destination_data`` calls ``before_write(dates, frame)`` with the rows it is about to write and
writes what it gets back. The production binding, :class:`WriteHooks`, returns the rows unchanged:
nothing else happens. The acceptance tests bind a subclass that injects faults (transient errors,
logic errors, a killed run worker, a hung step: ``backfill_platform_tests/faults.py``), so no fault
code ships in the product or in the package zipped for Databricks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

WRITE_HOOKS_KEY = "write_hooks"


class WriteHooks(dg.ConfigurableResource):
    """Production binding: the rows are written as they are."""

    def before_write(self, dates: Sequence[str], frame: Any) -> Any:
        """Called once per attempt, after the expectations and before the write; returns the rows
        to write."""
        return frame
