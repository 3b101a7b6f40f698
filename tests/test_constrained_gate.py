"""``format`` on a thinking model (worker.constrained.JsonConstraint with a ThinkingGate):
the grammar sees only the tokens after the reasoning block, whatever the block's tags look
like and however mlx-lm replays a step. A recording matcher stands in for llguidance here;
the real one runs in tests/test_generation.py and tests/test_batching.py."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from worker import constrained
from worker.constrained import JsonConstraint, ThinkingGate

VOCAB = 16
OPEN, CLOSE, CLOSE_2 = 10, 11, 12  # <think>, </think>; a two-token end: CLOSE, CLOSE_2
JSON_OK = 3  # the only token the fake grammar allows


class RecordingMatcher:
    def __init__(self) -> None:
        self.consumed: list[int] = []

    def consume_token(self, token: int) -> None:
        self.consumed.append(token)


@pytest.fixture(autouse=True)
def _fake_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    def fill(matcher: Any, mask: np.ndarray, index: int) -> None:
        mask[:] = 0
        mask[0, 0] = 1 << JSON_OK

    monkeypatch.setattr(constrained, "fill_next_token_bitmask", fill)


def allowed(constraint: JsonConstraint, history: list[int]) -> set[int]:
    """The tokens the processor leaves finite after ``history`` (prompt + generated)."""
    out = constraint(mx.array(history), mx.zeros((1, VOCAB)))
    return {i for i, v in enumerate(out.reshape(-1).tolist()) if v != float("-inf")}


def test_first_token_may_open_the_block_then_free_then_json() -> None:
    matcher = RecordingMatcher()
    gate = JsonConstraint(matcher, VOCAB, ThinkingGate(start=(OPEN,), end=(CLOSE,)))
    prompt = [1, 2]
    assert allowed(gate, prompt) == {JSON_OK, OPEN}  # JSON, or open the reasoning block
    assert allowed(gate, [*prompt, OPEN]) == set(range(VOCAB))  # thinking: free
    assert allowed(gate, [*prompt, OPEN, 5]) == set(range(VOCAB))
    assert allowed(gate, [*prompt, OPEN, 5, CLOSE]) == {JSON_OK}  # the answer: the grammar
    assert allowed(gate, [*prompt, OPEN, 5, CLOSE, JSON_OK]) == {JSON_OK}
    assert matcher.consumed == [JSON_OK]  # the grammar never saw the reasoning tokens


def test_without_the_opening_tag_the_grammar_starts_at_once() -> None:
    matcher = RecordingMatcher()
    gate = JsonConstraint(matcher, VOCAB, ThinkingGate(start=(OPEN,), end=(CLOSE,)))
    assert allowed(gate, [1]) == {JSON_OK, OPEN}
    assert allowed(gate, [1, JSON_OK]) == {JSON_OK}
    assert matcher.consumed == [JSON_OK]


def test_a_prompt_that_opened_the_block_and_a_two_token_end_tag() -> None:
    matcher = RecordingMatcher()
    gate = JsonConstraint(matcher, VOCAB, ThinkingGate(start=(OPEN,), end=(CLOSE, CLOSE_2), opened=True))
    prompt = [1, OPEN]
    assert allowed(gate, prompt) == set(range(VOCAB))
    assert allowed(gate, [*prompt, CLOSE]) == set(range(VOCAB))  # half the end tag
    assert allowed(gate, [*prompt, CLOSE, 4]) == set(range(VOCAB))
    assert allowed(gate, [*prompt, CLOSE, 4, CLOSE]) == set(range(VOCAB))
    assert allowed(gate, [*prompt, CLOSE, 4, CLOSE, CLOSE_2]) == {JSON_OK}
    assert matcher.consumed == []


def test_a_replayed_step_is_not_taken_twice() -> None:
    """Moving from generate_step into a batch repeats the last step: the same history again."""
    matcher = RecordingMatcher()
    gate = JsonConstraint(matcher, VOCAB, ThinkingGate(start=(OPEN,), end=(CLOSE,)))
    history = [1, OPEN, 5, CLOSE]
    for step in range(1, len(history) + 1):
        allowed(gate, history[:step])
    gate.replay_next()
    assert allowed(gate, history) == {JSON_OK}  # still right after the block
    assert allowed(gate, [*history, JSON_OK]) == {JSON_OK}
    gate.replay_next()
    assert allowed(gate, [*history, JSON_OK]) == {JSON_OK}
    assert matcher.consumed == [JSON_OK]


def test_no_gate_is_the_plain_grammar() -> None:
    matcher = RecordingMatcher()
    plain = JsonConstraint(matcher, VOCAB)
    assert allowed(plain, [1]) == {JSON_OK}
    assert allowed(plain, [1, JSON_OK]) == {JSON_OK}
    assert matcher.consumed == [JSON_OK]
