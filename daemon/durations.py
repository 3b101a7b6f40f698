"""Go duration syntax and Ollama's ``keep_alive`` rules (reference §2.4, §8).

Keep-alive values are seconds as a ``float``: ``0.0`` unloads as soon as the request is done,
``math.inf`` keeps the model loaded forever, ``None`` means "not given" (the server default
applies).
"""

from __future__ import annotations

import math
from typing import Any

# Go's %q quoting, as Go's error messages print strings (shared with Modelfile rendering).
from registry.modelfile import go_quote as go_quote

FOREVER = math.inf
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5m
DEFAULT_LOAD_TIMEOUT = 300.0  # Ollama's 5m

_NS_PER_S = 1_000_000_000
_MAX_UINT63 = 1 << 63  # Go parses into a uint64 and rejects anything above 1<<63

_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # U+00B5 micro sign
    "\u03bcs": 1_000,  # U+03BC Greek small letter mu
    "ms": 1_000_000,
    "s": _NS_PER_S,
    "m": 60 * _NS_PER_S,
    "h": 3600 * _NS_PER_S,
}


def _invalid(orig: str) -> ValueError:
    return ValueError(f"time: invalid duration {go_quote(orig)}")


def _leading_digits(s: str, i: int) -> int:
    while i < len(s) and "0" <= s[i] <= "9":
        i += 1
    return i


def _leading_fraction(digits: str) -> tuple[int, float]:
    """Go's ``leadingFraction``: the digits as an integer and its scale, ignoring the digits
    that would overflow (float64 arithmetic as in Go, so results match to the nanosecond)."""
    value, scale = 0, 1.0
    for ch in digits:
        if value > ((1 << 63) - 1) // 10:
            break
        candidate = value * 10 + ord(ch) - 48
        if candidate > _MAX_UINT63:
            break
        value, scale = candidate, scale * 10
    return value, scale


def parse_go_duration(text: str) -> int:
    """Parse a Go ``time.ParseDuration`` string into nanoseconds.

    Accepts ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`` with the units ns, us, µs, ms, s, m, h, plus the
    bare ``"0"``. Raises :class:`ValueError` with Go's own message otherwise.
    """
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(orig)
    total = 0
    i = 0
    while i < len(s):
        if not (s[i] == "." or "0" <= s[i] <= "9"):
            raise _invalid(orig)
        start = i
        i = _leading_digits(s, i)
        whole_digits = s[start:i]
        frac_digits = ""
        if i < len(s) and s[i] == ".":
            frac_start = i + 1
            i = _leading_digits(s, frac_start)
            frac_digits = s[frac_start:i]
        if not whole_digits and not frac_digits:
            raise _invalid(orig)  # e.g. ".s"
        unit_start = i
        while i < len(s) and s[i] != "." and not ("0" <= s[i] <= "9"):
            i += 1
        unit_text = s[unit_start:i]
        if not unit_text:
            raise ValueError(f"time: missing unit in duration {go_quote(orig)}")
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise ValueError(f"time: unknown unit {go_quote(unit_text)} in duration {go_quote(orig)}")
        whole = int(whole_digits) if whole_digits else 0
        if whole > _MAX_UINT63 // unit:
            raise _invalid(orig)
        value = whole * unit
        if frac_digits:
            fraction, scale = _leading_fraction(frac_digits)
            value += int(float(fraction) * (float(unit) / scale))
        total += value
        if total > _MAX_UINT63:
            raise _invalid(orig)
    if neg:
        return -total
    if total > _MAX_UINT63 - 1:
        raise _invalid(orig)
    return total


def _go_type_name(value: Any) -> str:
    """The Go type ``encoding/json`` gives a JSON value decoded into ``any``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def parse_keep_alive(value: Any) -> float | None:
    """A request's ``keep_alive`` (already JSON-decoded) as seconds; ``None`` when absent or null.

    Numbers are seconds (negative: forever); strings are Go durations (negative: forever).
    Raises :class:`ValueError` with Ollama's message for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"Unsupported type: '{_go_type_name(value)}'")
    if isinstance(value, str):
        ns = parse_go_duration(value)
        return FOREVER if ns < 0 else ns / _NS_PER_S
    if value < 0 or value * _NS_PER_S >= _MAX_UINT63:
        return FOREVER
    return float(value)


def parse_keep_alive_env(text: str) -> float:
    """``OLLAMA_KEEP_ALIVE``: a Go duration or integer seconds; unparsable text keeps 5m."""
    seconds = _env_seconds(text, DEFAULT_KEEP_ALIVE)
    return FOREVER if seconds < 0 else seconds


def parse_load_timeout_env(text: str) -> float:
    """``OLLAMA_LOAD_TIMEOUT``: the same syntax as ``OLLAMA_KEEP_ALIVE``; zero or less means
    no limit (``FOREVER``), as in Ollama; unparsable text keeps 5m."""
    seconds = _env_seconds(text, DEFAULT_LOAD_TIMEOUT)
    return FOREVER if seconds <= 0 else seconds


def _env_seconds(text: str, default: float) -> float:
    """A Go duration or integer seconds (what Ollama's ``envconfig`` accepts), else ``default``."""
    if not text:
        return default
    try:
        return parse_go_duration(text) / _NS_PER_S
    except ValueError:
        return float(int(text)) if _is_go_int(text) else default


def _is_go_int(text: str) -> bool:
    """What ``strconv.ParseInt(s, 10, 64)`` accepts: an optional sign and decimal digits."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    return digits.isascii() and digits.isdigit() and -(1 << 63) <= int(text) < (1 << 63)
