"""Go duration parsing and the keep_alive rules (reference §2.4, §13.16)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from daemon.durations import go_quote, parse_go_duration, parse_keep_alive

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("+0", 0),
        ("-0", 0),
        ("0s", 0),
        ("5s", 5 * S),
        ("30s", 30 * S),
        ("1478s", 1478 * S),
        ("-5s", -5 * S),
        ("+5s", 5 * S),
        ("5.0s", 5 * S),
        ("5.6s", 5 * S + 600_000_000),
        ("5.s", 5 * S),
        (".5s", S // 2),
        ("1.004s", S + 4_000_000),
        ("1.0040s", S + 4_000_000),
        ("100.00100s", 100 * S + 1_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12\u00b5s", 12_000),
        ("12\u03bcs", 12_000),
        ("13ms", 13_000_000),
        ("14s", 14 * S),
        ("15m", 15 * 60 * S),
        ("16h", 16 * 3600 * S),
        ("3h30m", (3 * 3600 + 30 * 60) * S),
        ("10.5s4m", 4 * 60 * S + 10 * S + S // 2),
        ("-2m3.4s", -(2 * 60 * S + 3 * S + 400_000_000)),
        ("1h2m3s4ms5us6ns", 3600 * S + 2 * 60 * S + 3 * S + 4_000_000 + 5_000 + 6),
        ("39h9m14.425s", (39 * 3600 + 9 * 60 + 14) * S + 425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 20 * 60 * S),
        ("9007199254740993ns", (1 << 53) + 1),
        ("9223372036854775807ns", (1 << 63) - 1),
        ("-9223372036854775808ns", -(1 << 63)),
        ("0.100000000000000000000h", 6 * 60 * S),
        ("5m0s", 300 * S),
        ("1.5h", 5400 * S),
    ],
)
def test_parse_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("3", 'time: missing unit in duration "3"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("5", 'time: missing unit in duration "5"'),
        ("-", 'time: invalid duration "-"'),
        ("s", 'time: invalid duration "s"'),
        (".", 'time: invalid duration "."'),
        ("-.", 'time: invalid duration "-."'),
        (".s", 'time: invalid duration ".s"'),
        ("+.s", 'time: invalid duration "+.s"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("9223372036854775.808us", 'time: invalid duration "9223372036854775.808us"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
    ],
)
def test_parse_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (42, 42.0),
        (42.5, 42.5),
        (0, 0.0),
        (0.0, 0.0),
        (-1, math.inf),
        (-3.14, math.inf),
        (1e300, math.inf),
        ("42m", 2520.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("5m0s", 300.0),
        ("1h30m0s", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("-1m", math.inf),
    ],
)
def test_keep_alive(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "Unsupported type: 'bool'"),
        ([], "Unsupported type: '[]interface {}'"),
        ({}, "Unsupported type: 'map[string]interface {}'"),
        ("5", 'time: missing unit in duration "5"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("soon", 'time: invalid duration "soon"'),
    ],
)
def test_keep_alive_errors(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_keep_alive(value)
    assert str(info.value) == message


def test_go_quote() -> None:
    assert go_quote("plain") == '"plain"'
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\tnl\n\x00") == '"tab\\tnl\\n\\x00"'
    assert go_quote("héllo ✓") == '"héllo ✓"'
