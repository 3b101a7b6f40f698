"""Numbers, sizes, times and tables as Ollama's CLI prints them (its ``format`` package,
``time.Duration.String`` and the olekukonko/tablewriter settings of ``ollama list``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone

from rich.cells import cell_len

from registry.modelfile import go_float as go_float  # Go's %v of a float64, shared

_STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def human_bytes(n: int) -> str:
    """``format.HumanBytes``: decimal units, truncated above 10 (``274 MB``), one decimal below
    unless whole (``2.0 GB`` is ``2 GB`` only when exact)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            value = n / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_number(n: int) -> str:
    """``format.HumanNumber``: ``8B``, ``1.5B``, ``135M``, ``494.03M``, ``12K``."""
    if n >= 1_000_000_000:
        value = n / 1_000_000_000
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1_000_000
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def parse_time(stamp: str) -> datetime | None:
    """An RFC 3339 time stamp (nanoseconds allowed) as an aware datetime; None if unparsable."""
    match = _STAMP_RE.match(stamp.strip())
    if match is None:
        return None
    base, fraction, zone = match.groups()
    text = base + (f".{fraction[:6].ljust(6, '0')}" if fraction else "")
    text += "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """``format.humanDuration``: ``Less than a second``, ``About a minute``, ``3 weeks``."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def human_time(stamp: str | datetime | None, zero: str = "Never", now: datetime | None = None) -> str:
    """``format.HumanTime``: ``2 days ago``, ``4 minutes from now``, ``Forever`` (more than 20
    years ahead), or ``zero`` for a missing time."""
    then = parse_time(stamp) if isinstance(stamp, str) else stamp
    if then is None or then.year <= 1:
        return zero
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    delta = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    if int(int(delta / 3600) / 24 / 365) < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def _fraction(value: int, digits: int) -> str:
    """Go's ``fmtFrac``: ``value / 10**digits`` with the trailing zeros (and the point) dropped."""
    whole, part = divmod(value, 10**digits)
    decimals = f"{part:0{digits}d}".rstrip("0")
    return f"{whole}.{decimals}" if decimals else str(whole)


def go_duration(nanoseconds: int) -> str:
    """``time.Duration.String``: ``1.234567s``, ``12.5ms``, ``2m3.5s``, ``0s``."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    u = abs(nanoseconds)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_fraction(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_fraction(u, 6)}ms"
    seconds = _fraction(u % 60_000_000_000, 9)
    minutes_total = u // 60_000_000_000
    if minutes_total == 0:
        return f"{sign}{seconds}s"
    hours, minutes = divmod(minutes_total, 60)
    if hours == 0:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{hours}h{minutes}m{seconds}s"


def _wrap(text: str, limit: int) -> list[str]:
    """tablewriter's cell reflow: the lines joined, then wrapped to ``limit`` columns on spaces."""
    words = " ".join(text.splitlines()).split(" ")
    lines: list[str] = []
    current: str | None = None
    for word in words:
        if current is None:
            current = word
        elif cell_len(current) + 1 + cell_len(word) <= limit:
            current += " " + word
        else:
            lines.append(current)
            current = word
    lines.append(current or "")
    return lines


def table(
    rows: Sequence[Sequence[str]],
    headers: Sequence[str] | None = None,
    padding: str = "    ",
    wrap: int = 30,
) -> str:
    """A table the way ``ollama list``/``ps``/``show`` configure tablewriter: no borders, left
    aligned, columns separated by ``padding``, which also ends every line (a header's last
    cell is followed by one space instead); cells longer than ``wrap`` columns are wrapped."""

    def cells(row: Sequence[str]) -> list[list[str]]:
        out = []
        for cell in row:
            lines = str(cell).splitlines() or [""]
            longest = max(cell_len(line) for line in lines)
            out.append(_wrap(str(cell), min(longest, wrap)) if str(cell) else [""])
        return out

    header_cells = cells(headers) if headers else None
    body = [cells(row) for row in rows]
    count = max([len(header_cells or [])] + [len(row) for row in body])
    widths = [0] * count
    for row in [header_cells or [], *body]:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(cell_len(line) for line in lines))

    def render(row: list[list[str]], last_pad: str) -> list[str]:
        row = row + [[""]] * (count - len(row))
        height = max(len(lines) for lines in row)
        out = []
        for i in range(height):
            parts = []
            for j, lines in enumerate(row):
                line = lines[i] if i < len(lines) else ""
                pad = last_pad if j == count - 1 else padding
                parts.append(line + " " * (widths[j] - cell_len(line)) + pad)
            out.append("".join(parts))
        return out

    output: list[str] = []
    if header_cells is not None:
        output += render(header_cells, " ")
    for row in body:
        output += render(row, padding)
    return "".join(line + "\n" for line in output)
