"""A lone request's per-token work on the token thread (in process, tiny model): the same
events as inline, stop strings and cancels end it, what fails there reaches the decoding
thread, and it is on by default where there is a second core. A request that is not
streamed flushes its tokens' events rarely, on either path."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_batching import Recorder
from worker import token_thread
from worker.token_thread import TokenThread

pytestmark = pytest.mark.e2e

_ids = itertools.count(1)
PROMPT = "The river town woke slowly on autumn mornings"


def command(request_id: int, **options: Any) -> dict[str, Any]:
    return {"op": "generate", "id": request_id, "prompt": PROMPT, "raw": True, "options": options}


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> Iterator[Any]:
    from worker.generation import Generator

    gen = Generator(tiny_model_dir)
    gen.prefix_cache.enabled = False  # every run cold: inline and threaded runs compare equal
    yield gen
    if gen.tokens is not None:
        gen.tokens.close()


def serve(generator: Any, threaded: bool, cmd: dict[str, Any], cancel_after: int | None = None) -> Recorder:
    """Run one command with its per-token work inline or on a token thread; what it sent.
    ``cancel_after``: the request is cancelled once that many text events have gone out."""
    rec = Recorder()
    generator.tokens = TokenThread() if threaded else None
    try:
        generator.run(cmd, rec, lambda: cancel_after is not None and rec.count(cmd["id"]) >= cancel_after)
    finally:
        if generator.tokens is not None:
            generator.tokens.close()
    return rec


def outcome(
    generator: Any, threaded: bool, cancel_after: int | None = None, **options: Any
) -> tuple[list[str], str, int, int]:
    """One raw greedy request, its per-token work inline or on a token thread: the text
    pieces sent, the done reason, ``eval_count`` and ``prompt_eval_count``."""
    request_id = next(_ids)
    rec = serve(generator, threaded, command(request_id, temperature=0, **options), cancel_after)
    stats = rec.stats(request_id)
    pieces = [e["s"] for e in rec.by_id[request_id] if e["t"] == "x"]
    return pieces, stats["done_reason"], stats["eval_count"], stats["prompt_eval_count"]


def test_the_token_thread_sends_what_the_inline_path_sends(generator: Any) -> None:
    inline = outcome(generator, False, num_predict=40)
    threaded = outcome(generator, True, num_predict=40)
    assert threaded == inline
    assert inline[1] == "length" and inline[2] == 40


def test_a_stop_string_found_on_the_token_thread_ends_the_request_where_inline_does(generator: Any) -> None:
    text = "".join(outcome(generator, False, num_predict=40)[0])
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), "the tiny model's output has text to stop at"
    inline = outcome(generator, False, num_predict=40, stop=[stop])
    threaded = outcome(generator, True, num_predict=40, stop=[stop])
    assert threaded == inline
    assert inline[1] == "stop" and stop not in "".join(inline[0]) and inline[2] < 40


def test_a_cancel_seen_on_the_token_thread_ends_the_request(generator: Any) -> None:
    pieces, reason, count, _ = outcome(generator, True, cancel_after=5, num_predict=200)
    assert reason == "cancel"
    assert len(pieces) == 5 and count == 5  # nothing is sent past the cancel


class _BrokenAfter(Recorder):
    def __init__(self, flushes: int) -> None:
        super().__init__()
        self.limit = flushes

    def flush(self) -> None:
        super().flush()
        if self.flushes > self.limit:
            raise BrokenPipeError("the event reader is closed")


def test_what_fails_on_the_token_thread_reaches_the_decoding_thread(generator: Any) -> None:
    rec = _BrokenAfter(3)
    generator.tokens = TokenThread()
    cmd = command(next(_ids), temperature=0, num_predict=400)
    try:
        with pytest.raises(BrokenPipeError):
            generator.run(cmd, rec, lambda: False)
    finally:
        generator.tokens.close()
    assert rec.flushes < 100, "the decoding thread stopped soon after the failure"


def test_log_probabilities_stay_on_the_decoding_thread(generator: Any) -> None:
    # They read the step's MLX arrays; a request that asks for them is accepted inline.
    rec = Recorder()
    request_id = next(_ids)
    generator.tokens = TokenThread()
    cmd = {**command(request_id, temperature=0, num_predict=6), "logprobs": True}
    try:
        generator.run(cmd, rec, lambda: False)
        assert generator.tokens._thread is None, "no token was handed over"
    finally:
        generator.tokens.close()
    assert sum(1 for e in rec.by_id[request_id] if e["t"] == "l") == 6


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("on", True), ("0", False), ("off", False)])
def test_the_switch_forces_it(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv(token_thread.ENV, value)
    assert token_thread.wanted() is expected


@pytest.mark.parametrize(("cores", "expected"), [(1, False), (2, True), (16, True), (None, False)])
def test_by_default_it_runs_where_there_is_a_second_core(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: bool
) -> None:
    monkeypatch.delenv(token_thread.ENV, raising=False)
    monkeypatch.setattr(token_thread.os, "cpu_count", lambda: cores)
    assert token_thread.wanted() is expected


class _FakeWriter:
    def __init__(self, fail_at: int | None = None) -> None:
        self.flushes = 0
        self.fail_at = fail_at

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes == self.fail_at:
            raise BrokenPipeError("the event reader is closed")


class _FakeSequence:
    """What the token thread uses of a ``Sequence``: ``accept``, ``flush_token``, ``done_reason``."""

    def __init__(self, writer: _FakeWriter, stop_at: int | None = None) -> None:
        self.writer = writer
        self.accepted: list[int] = []
        self.stop_at = stop_at
        self.done_reason: str | None = None

    def accept(self, token: int) -> bool:
        self.accepted.append(token)
        if len(self.accepted) == self.stop_at:
            self.done_reason = "stop"
        return self.done_reason is not None

    def flush_token(self) -> None:
        self.writer.flush()


def test_tokens_are_accepted_in_order_and_none_past_the_end() -> None:
    thread = TokenThread()
    seq = _FakeSequence(_FakeWriter(), stop_at=3)
    for token in range(6):
        thread.push(seq, token)  # type: ignore[arg-type]
    thread.drain()
    thread.close()
    assert seq.accepted == [0, 1, 2] and seq.writer.flushes == 3


def test_a_failure_is_raised_for_its_own_sequence_only() -> None:
    thread = TokenThread()
    failing = _FakeSequence(_FakeWriter(fail_at=2))
    for token in range(2):
        thread.push(failing, token)  # type: ignore[arg-type]
    with pytest.raises(BrokenPipeError):
        thread.drain()
    # A failure of a request that the decoding thread gave up on itself is not raised later.
    again = _FakeSequence(_FakeWriter(fail_at=1))
    thread.push(again, 0)  # type: ignore[arg-type]
    thread.abandon(again)  # type: ignore[arg-type]
    later = _FakeSequence(_FakeWriter())
    for token in range(3):
        thread.push(later, token)  # type: ignore[arg-type]
    thread.drain()
    thread.close()
    assert later.accepted == [0, 1, 2]


@pytest.mark.parametrize("threaded", [False, True])
def test_a_request_that_is_not_streamed_flushes_rarely_and_sends_the_same_events(
    generator: Any, monkeypatch: pytest.MonkeyPatch, threaded: bool
) -> None:
    from worker import sequence

    def run(stream: bool) -> tuple[list[dict[str, Any]], int]:
        request_id = next(_ids)
        rec = serve(
            generator, threaded, {**command(request_id, temperature=0, num_predict=24), "stream": stream}
        )
        events = [{k: v for k, v in e.items() if k != "id"} for e in rec.by_id[request_id]]
        for event in events:
            if event["t"] == "d":  # timings differ between runs
                event["stats"] = {k: v for k, v in event["stats"].items() if not k.endswith("_ns")}
        return events, rec.flushes

    streamed, streamed_flushes = run(True)
    monkeypatch.setattr(sequence, "QUIET_FLUSH_SECONDS", 3600.0)
    quiet, quiet_flushes = run(False)
    assert quiet == streamed and sum(e["t"] == "x" for e in quiet) >= 20
    assert streamed_flushes >= 24
    assert quiet_flushes == 2  # the first token's, then the end's
    monkeypatch.setattr(sequence, "QUIET_FLUSH_SECONDS", 0.0)
    _, paced_flushes = run(False)
    assert paced_flushes >= 24  # past the interval, every token flushes again
