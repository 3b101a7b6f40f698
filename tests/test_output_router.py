"""Thinking / content / tool-call splitting of streamed output, whatever the token boundaries."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from worker.output import OutputRouter, Piece, ollama_tool_call

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def json_parser(text: str, tools: Any) -> Any:
    return json.loads(text.strip())


def router(**kwargs: Any) -> OutputRouter:
    defaults: dict[str, Any] = {
        "think_start": "<think>",
        "think_end": "</think>",
        "tool_start": "<tool_call>",
        "tool_end": "</tool_call>",
        "tool_parser": json_parser,
        "tools": TOOLS,
    }
    return OutputRouter(**{**defaults, **kwargs})


def run(r: OutputRouter, text: str, size: int) -> dict[str, Any]:
    pieces: list[Piece] = []
    for i in range(0, len(text), size):
        pieces += r.feed(text[i : i + size])
    pieces += r.finish()
    return {
        "thinking": "".join(p.text for p in pieces if p.kind == "thinking"),
        "content": "".join(p.text for p in pieces if p.kind == "content"),
        "calls": [c for p in pieces if p.kind == "tools" for c in p.calls],
    }


OUTPUT = (
    "  <think>\nLet me think.\n</think>\n\nSure."
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_split_whatever_the_chunking(size: int) -> None:
    out = run(router(), OUTPUT, size)
    assert out["thinking"] == "Let me think.\n"
    assert out["content"] == "Sure."
    [call] = out["calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}


def test_thinking_dropped_when_turned_off() -> None:
    out = run(router(keep_thinking=False), OUTPUT, 4)
    assert out["thinking"] == "" and out["content"] == "Sure."


def test_prompt_opened_the_reasoning_block() -> None:
    out = run(router(opened_thinking=True), "hmm</think>answer", 2)
    assert (out["thinking"], out["content"]) == ("hmm", "answer")


def test_think_tag_only_counts_at_the_start() -> None:
    out = run(router(), "a <think> b", 1)
    assert out == {"thinking": "", "content": "a <think> b", "calls": []}


def test_without_tools_the_markup_is_content() -> None:
    out = run(router(tools=None), 'x<tool_call>{"name": "f"}</tool_call>', 3)
    assert out["content"] == 'x<tool_call>{"name": "f"}</tool_call>' and out["calls"] == []


def test_several_calls_are_indexed() -> None:
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": "{\\"k\\": 1}"}</tool_call>'
    )
    out = run(router(think_start=None), text, 5)
    assert [
        (c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in out["calls"]
    ] == [
        (0, "a", {}),
        (1, "b", {"k": 1}),
    ]


def test_unparseable_or_unfinished_call_stays_text() -> None:
    out = run(router(), "<tool_call>not json</tool_call>", 4)
    assert out["content"] == "<tool_call>not json</tool_call>" and out["calls"] == []
    out = run(router(), 'ok <tool_call>{"name": "a"', 4)
    assert out["content"] == 'ok <tool_call>{"name": "a"' and out["calls"] == []


def test_partial_marker_is_released_when_it_does_not_complete() -> None:
    r = router()
    assert r.feed("answer <tool") == [Piece("content", "answer ")]
    assert r.feed("s are nice") == [Piece("content", "<tools are nice")]


def test_tool_call_shape() -> None:
    assert ollama_tool_call({"name": "f", "arguments": {"a": 1}}, 2)["function"] == {  # type: ignore[index]
        "index": 2,
        "name": "f",
        "arguments": {"a": 1},
    }
    assert ollama_tool_call({"function": {"name": "f", "arguments": "{}"}}, 0) is not None
    assert ollama_tool_call({"arguments": {}}, 0) is None
    assert ollama_tool_call(["x"], 0) is None
