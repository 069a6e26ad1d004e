"""``status --png``: a calendar heatmap of coverage, one cell per day, coloured by state.

Columns are weeks (Monday first), rows are weekdays; weekends and holidays are pale grey with the
holiday cells marked "H"; a legend gives the count of each state. The image size depends only on
the number of weeks shown (:func:`heatmap_size`), so a caller (and the tests) know it in advance.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from backfill_platform.reports.history import (
    FAILED,
    IN_FLIGHT,
    MATERIALIZED,
    MISSING,
    NOT_BUSINESS,
    History,
)

COLOURS = {
    MATERIALIZED: "#2e9e44",
    FAILED: "#d62728",
    MISSING: "#f2b134",
    IN_FLIGHT: "#3b7dd8",
    NOT_BUSINESS: "#e6e6e6",
}
DPI = 100
CELL_INCHES = 0.22
HEIGHT_INCHES = 3.2
MARGIN_INCHES = 1.6


def _weeks(first: dt.date, last: dt.date) -> int:
    start = first - dt.timedelta(days=first.weekday())
    end = last - dt.timedelta(days=last.weekday())
    return (end - start).days // 7 + 1


def heatmap_size(first: dt.date, last: dt.date) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for the range [first, last]."""
    width = max(MARGIN_INCHES + _weeks(first, last) * CELL_INCHES, 7.0)
    return round(width * DPI), round(HEIGHT_INCHES * DPI)


def draw_heatmap(history: History, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    width_px, height_px = heatmap_size(history.first, history.last)
    fig = plt.figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    ax = fig.add_axes((0.9 / (width_px / DPI), 0.28, 1 - 1.3 / (width_px / DPI), 0.52))
    week0 = history.first - dt.timedelta(days=history.first.weekday())
    weeks = _weeks(history.first, history.last)
    for day in history.days:
        column = (day.day - week0).days // 7
        row = day.day.weekday()
        ax.add_patch(Rectangle((column, 6 - row), 0.9, 0.9, color=COLOURS[day.state], linewidth=0))
        if day.state == NOT_BUSINESS and day.day.weekday() < 5:
            ax.text(column + 0.45, 6 - row + 0.45, "H", ha="center", va="center", fontsize=6, color="#666666")
        elif day.state == FAILED and day.gave_up:
            ax.text(column + 0.45, 6 - row + 0.45, "x", ha="center", va="center", fontsize=7, color="white")
    ax.set_xlim(-0.2, max(weeks, 1) + 0.1)
    ax.set_ylim(-0.2, 7.1)
    ax.set_aspect("equal", anchor="C")  # square cells whatever the range
    ax.set_yticks([6.45 - i for i in range(7)], ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], fontsize=7)
    months, labels = [], []
    for day in history.days:
        if day.day.day == 1 or day.day == history.first:
            months.append((day.day - week0).days // 7 + 0.45)
            labels.append(f"{day.day:%b %Y}" if day.day.month == 1 or day.day == history.first else f"{day.day:%b}")
    ax.set_xticks(months, labels, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    counts = history.counts()
    fig.suptitle(f"destination_data coverage  {history.first} .. {history.last}", fontsize=10, y=0.97)
    fig.text(0.5, 0.86, history.summary_line().split(": ", 1)[1], ha="center", fontsize=7, color="#333333")
    legend = [Patch(color=COLOURS[s], label=f"{s} ({counts[s]})") for s in COLOURS]
    fig.legend(handles=legend, loc="lower center", ncol=5, fontsize=7, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path
