"""Stop strings over arbitrary token splits: never leaked, nothing else lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.stops import StopMatcher

ALPHABET = "ab\n<|>é"


def run(deltas: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for delta in deltas:
        out.append(matcher.feed(delta))
        if matcher.stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


@given(
    st.lists(st.text(alphabet=ALPHABET, max_size=4), max_size=30),
    st.lists(st.text(alphabet=ALPHABET, min_size=0, max_size=4), max_size=3),
)
def test_any_split_matches_the_whole_text(deltas: list[str], stops: list[str]) -> None:
    assert run(deltas, stops) == expected("".join(deltas), stops)


def test_stop_split_across_tokens() -> None:
    assert run(["Hello <", "|im", "_end|> more"], ["<|im_end|>"]) == ("Hello ", True)


def test_prefix_that_does_not_complete_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a ST") == "a "
    assert matcher.feed("ILL") == "STILL"
    assert matcher.flush() == ""


def test_no_stops_passes_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("abc") == "abc" and not matcher.stopped
