"""``status`` output: a table for people, JSON and CSV for programs."""

from __future__ import annotations

import csv
import io
import json

from backfill_platform.reports.history import NOT_BUSINESS, History

CSV_COLUMNS = (
    "date", "weekday", "state", "reason", "attempts", "last_status", "last_duration_s",
    "succeeded_after_retries", "gave_up", "last_error", "run_ids", "last_run_url",
)


def _short(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def render_table(history: History) -> str:
    lines = [
        f"destination_data coverage and history, {history.first}..{history.last}",
        (
            f"{'date':<10} {'day':<3} {'state':<19} {'tries':>5} {'last run':<9} "
            f"{'status':<8} {'secs':>6}  error / reason / link"
        ),
    ]
    for day in history.days:
        last = day.last
        if day.state == NOT_BUSINESS:
            lines.append(f"{day.day} {day.day:%a} {day.state:<19} {'':>5} {'':<9} {'':<8} {'':>6}  {day.reason}")
            continue
        secs = f"{day.last_duration_s:.1f}" if day.last_duration_s is not None else ""
        flags = " (succeeded after retries)" if day.succeeded_after_retries else ""
        flags += " (rerun sensor gave up)" if day.gave_up else ""
        detail = _short(day.last_error, 70) if day.state == "failed" else ""
        link = last.url if last else ""
        separator = "  " if detail or flags else ""
        lines.append(
            f"{day.day} {day.day:%a} {day.state:<19} {len(day.attempts):>5} {(last.run_id[:8] if last else ''):<9} "
            f"{(last.status if last else ''):<8} {secs:>6}  {detail + flags}{separator}{link}".rstrip()
        )
    lines.append("")
    lines.append(history.summary_line())
    analytics = history.analytics()
    lines.append("Retry analytics:")
    after = analytics["succeeded_after_retries"]
    lines.append(
        "  succeeded only after retries: "
        + (", ".join(f"{d['date']} ({_retries(d)})" for d in after) if after else "none")
    )
    rates = analytics["success_rate_by_attempt"]
    rate_summary = ", ".join(
        f"#{n}: {int(r['succeeded'])}/{int(r['attempts'])} ({100 * r['rate']:.0f}%)" for n, r in rates.items()
    )
    lines.append(
        "  success rate by attempt:      "
        + (rate_summary if rates else "no finished attempts")
    )
    gave_up = analytics["give_ups"]
    give_up_summary = ", ".join(
        f"{g['date']} (run {str(g['run_id'])[:8]}{': ' + g['reason'] if g['reason'] else ''})" for g in gave_up
    )
    lines.append(
        "  rerun sensor give-ups:        "
        + (give_up_summary if gave_up else "none")
    )
    lines.append(f"  retry runs: {analytics['retry_runs']}; step retries: {analytics['step_retries']}")
    return "\n".join(lines)


def _retries(entry: dict) -> str:
    parts = [f"run attempt {entry['attempts']}"]
    if entry["step_retries"]:
        parts.append(f"{entry['step_retries']} step retr{'y' if entry['step_retries'] == 1 else 'ies'}")
    return ", ".join(parts)


def render_json(history: History) -> str:
    return json.dumps(history.to_dict(), indent=2, default=str)


def render_csv(history: History) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for day in history.days:
        row = day.to_dict()
        row["run_ids"] = " ".join(row["run_ids"])
        writer.writerow(row)
    return out.getvalue()


RENDERERS = {"table": render_table, "json": render_json, "csv": render_csv}
