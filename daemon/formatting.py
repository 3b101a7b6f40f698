"""Human-readable sizes, ages and tables, as Ollama's CLI prints them."""

from __future__ import annotations

from datetime import datetime, timezone


def human_bytes(n: int) -> str:
    """Decimal units like Ollama's ``format.HumanBytes``: ``934 MB``, ``2.0 GB``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_since(stamp: str, now: datetime | None = None) -> str:
    """``2 hours ago`` from an RFC 3339 time stamp."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    if seconds < 1:
        return "Less than a second ago"
    for size, unit in (
        (31536000, "year"),
        (2592000, "month"),
        (604800, "week"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ):
        if seconds >= size:
            count = seconds // size
            if count == 1:
                return f"{'An' if unit == 'hour' else 'A'} {unit} ago" if unit != "second" else "1 second ago"
            return f"{count} {unit}s ago"
    return "Less than a second ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by at least three spaces, like Ollama's tabwriter."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)
