"""``/v1/messages`` (reference §5.7): request conversion, answers and streamed events, after
Ollama's ``anthropic/anthropic_test.go``; then through the app with the scripted engine."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from daemon.app import create_app
from daemon.config import Settings
from daemon.engine import Finished, TextChunk, ThinkingChunk, ToolCallsChunk
from daemon.openai.anthropic import (
    WEB_SEARCH_UNSUPPORTED,
    MessagesStream,
    chat_request,
    error_object,
    message_object,
    stop_reason,
)
from daemon.openai.convert import RequestError
from daemon.testing import ScriptedEngine
from registry.store import Store

pytest_plugins = ["tests.http_support"]

USER = {"role": "user", "content": "Hello"}
PNG = base64.b64encode(b"\x89PNG fake").decode()
CALL = {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}


def convert(**body: Any) -> dict[str, Any]:
    return chat_request({"model": "m", "max_tokens": 100, "messages": [USER], **body})


def error_of(**body: Any) -> str:
    with pytest.raises(RequestError) as info:
        chat_request(body)
    return info.value.message


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    assert data.endswith(b"\n\n")
    out = []
    for part in data[:-2].split(b"\n\n"):
        head, body = part.split(b"\n")
        kind = head[len(b"event: ") :].decode()
        decoded = orjson.loads(body[len(b"data: ") :])
        assert decoded["type"] == kind
        out.append((kind, decoded))
    return out


def chunk(content: str = "", done: bool = False, **message: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "model": "m",
        "message": {"role": "assistant", "content": content, **message},
        "done": done,
    }
    if done:
        obj.update(done_reason="stop", prompt_eval_count=7, eval_count=3)
    return obj


def test_basic_conversion() -> None:
    assert convert(system="Be brief", temperature=0.2, top_p=0.9, top_k=5, stop_sequences=["END"]) == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief"}, USER],
        "options": {"num_predict": 100, "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop": ["END"]},
        "stream": False,
    }
    blocks = [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]
    assert convert(system=blocks)["messages"][0] == {"role": "system", "content": "Part one. Part two."}


def test_required_fields() -> None:
    assert error_of(max_tokens=1, messages=[USER]) == "model is required"
    assert error_of(model="m", messages=[USER]) == "max_tokens is required and must be positive"
    assert error_of(model="m", max_tokens=0, messages=[USER]) == "max_tokens is required and must be positive"
    assert error_of(model="m", max_tokens=5) == "messages is required"


def test_content_blocks() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this? "},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Let me check.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    assert convert(messages=messages)["messages"] == [
        {"role": "user", "content": "What is this? ", "images": [PNG]},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
            "thinking": "Let me check.",
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"},
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "tool_use", "name": "f", "input": {}}, "tool_use block missing required 'id' field"),
        ({"type": "tool_use", "id": "t", "input": {}}, "tool_use block missing required 'name' field"),
        (
            {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
            "invalid image source type: url. Only base64 images are supported.",
        ),
    ],
)
def test_bad_blocks(block: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError) as info:
        convert(messages=[{"role": "assistant", "content": [block]}])
    assert info.value.message == message


def test_tools_and_thinking() -> None:
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
    assert convert(tools=[tool])["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
        }
    ]
    with pytest.raises(RequestError) as info:
        convert(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert info.value.message == WEB_SEARCH_UNSUPPORTED
    assert convert(thinking={"type": "enabled", "budget_tokens": 1024})["think"] is True
    assert convert(thinking={"type": "disabled"})["think"] is False
    assert convert(output_config={"effort": " XHigh "})["think"] == "high"
    assert convert(output_config={"effort": "low"})["think"] == "low"
    assert "think" not in convert(output_config={"effort": "tiny"})


def test_errors_and_stop_reasons() -> None:
    body = error_object(404, "model 'x' not found")
    assert body["type"] == "error" and body["error"] == {
        "type": "not_found_error",
        "message": "model 'x' not found",
    }
    assert body["request_id"].startswith("req_") and len(body["request_id"]) == 28
    assert error_object(503, "busy")["error"]["type"] == "overloaded_error"
    assert error_object(500, "x")["error"]["type"] == "api_error"
    assert [stop_reason(r, False) for r in ("stop", "length", "unload", "")] == [
        "end_turn",
        "max_tokens",
        "stop_sequence",
        None,
    ]
    assert stop_reason("stop", True) == "tool_use"


def test_message_object() -> None:
    native = chunk("Sunny.", done=True, thinking="Hmm", tool_calls=[CALL])
    assert message_object("msg_1", native) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "thinking", "thinking": "Hmm"},
            {"type": "text", "text": "Sunny."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }


def test_stream_events() -> None:
    stream = MessagesStream("msg_1", "m", estimated_input_tokens=4)
    body = b"".join(
        stream.feed(native)
        for native in (
            chunk(thinking="Hmm"),
            chunk("Sun"),
            chunk("ny."),
            chunk(tool_calls=[CALL]),
            chunk(done=True),
        )
    )
    out = events(body)
    assert [kind for kind, _ in out] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = out[0][1]["message"]
    assert (
        start["id"] == "msg_1"
        and start["content"] == []
        and start["usage"] == {"input_tokens": 4, "output_tokens": 0}
    )
    assert out[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": ""},
    }
    assert out[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm"}
    assert out[5][1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "text_delta", "text": "Sun"},
    }
    assert out[8][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    assert out[9][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    assert out[10][1]["index"] == 2
    assert out[11][1]["delta"] == {"stop_reason": "tool_use"}
    assert out[11][1]["usage"] == {"input_tokens": 7, "output_tokens": 3}
    assert stream.finished


def test_stream_text_only_and_error() -> None:
    stream = MessagesStream("msg_1", "m", 1)
    out = events(stream.feed(chunk("Hi")) + stream.feed(chunk(done=True)))
    assert [kind for kind, _ in out][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert out[-2][1]["delta"] == {"stop_reason": "end_turn"}
    failing = MessagesStream("msg_2", "m", 1)
    failing.feed(chunk("Hi"))
    [(kind, data)] = events(failing.feed({"error": "boom"}))
    assert kind == "error" and data["error"] == {"type": "api_error", "message": "boom"}


@pytest.mark.anyio
async def test_through_the_app(settings: Settings, store: Store) -> None:
    engine = ScriptedEngine(
        [ThinkingChunk("Hmm."), TextChunk("Hello"), ToolCallsChunk([CALL]), Finished("stop", 4, 1, 3, 1)]
    )
    app = create_app(settings, engine, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        body = {
            "model": "tiny",
            "max_tokens": 16,
            "messages": [USER],
            "thinking": {"type": "enabled", "budget_tokens": 8},
        }
        whole = await client.post(
            "/v1/messages", json=body, headers={"x-api-key": "ignored", "anthropic-version": "2023-06-01"}
        )
        assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
        answer = whole.json()
        assert answer["id"].startswith("msg_") and answer["stop_reason"] == "tool_use"
        assert [block["type"] for block in answer["content"]] == ["thinking", "text", "tool_use"]
        assert answer["usage"] == {"input_tokens": 4, "output_tokens": 3}
        # tiny cannot think: the request is relaxed, not refused
        assert engine.requests[0].think is None and engine.requests[0].options["num_predict"] == 16

        streamed = await client.post("/v1/messages", json={**body, "stream": True})
        assert streamed.headers["content-type"] == "text/event-stream"
        kinds = [kind for kind, _ in events(streamed.content)]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]

        missing = await client.post("/v1/messages", json={**body, "model": "nope"})
        assert missing.status_code == 404
        assert missing.json()["error"] == {"type": "not_found_error", "message": "model 'nope' not found"}
        invalid = await client.post("/v1/messages", json={"model": "tiny", "messages": [USER]})
        assert invalid.status_code == 400
        assert invalid.json()["error"]["message"] == "max_tokens is required and must be positive"
