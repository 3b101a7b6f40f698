"""``/v1/responses`` (reference §5.5): request conversion and streamed events, after Ollama's
``openai/responses_test.go``; then through the app with the scripted engine."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from daemon.app import create_app
from daemon.config import Settings
from daemon.engine import Finished, TextChunk, ThinkingChunk, ToolCallsChunk
from daemon.openai.convert import RequestError
from daemon.openai.responses import (
    WEB_SEARCH_UNSUPPORTED,
    Request,
    ResponsesStream,
    chat_request,
    response_object,
)
from daemon.testing import ScriptedEngine
from registry.store import Store

pytest_plugins = ["tests.http_support"]

CALL = {"id": "call_abc", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
PNG = base64.b64encode(b"\x89PNG fake").decode()


def convert(**body: Any) -> dict[str, Any]:
    return chat_request({"model": "m", **body})


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of a Responses SSE body, checking the framing."""
    assert data.endswith(b"\n\n")
    out = []
    for part in data[:-2].split(b"\n\n"):
        head, body = part.split(b"\n")
        assert head.startswith(b"event: ") and body.startswith(b"data: ")
        decoded = orjson.loads(body[len(b"data: ") :])
        assert decoded["type"] == head[len(b"event: ") :].decode()
        out.append((decoded["type"], decoded))
    return out


def chunk(content: str = "", done: bool = False, **message: Any) -> dict[str, Any]:
    obj = {
        "model": "m",
        "created_at": "2024-10-26T00:00:00Z",
        "message": {"role": "assistant", "content": content},
    }
    obj["message"].update(message)
    obj["done"] = done
    if done:
        obj.update(done_reason="stop", prompt_eval_count=3, eval_count=2)
    return obj


def test_string_input_instructions_and_options() -> None:
    native = convert(input="Hi", instructions="Be brief", max_output_tokens=9, top_p=0.5, stream=True)
    assert native == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
        "options": {"temperature": 1.0, "top_p": 0.5, "num_predict": 9},
        "stream": True,
    }
    assert "top_p" not in convert(input="Hi")["options"]  # no default top_p here
    assert convert(input="Hi", reasoning={"effort": "minimal"})["think"] == "low"
    schema = {"type": "object"}
    assert (
        convert(input="x", text={"format": {"type": "json_schema", "name": "s", "schema": schema}})["format"]
        == schema
    )
    assert "format" not in convert(input="x", text={"format": {"type": "text"}})


def test_input_items() -> None:
    items = [
        {"role": "user", "content": "What is the weather?"},  # shorthand message
        {"type": "reasoning", "encrypted_content": "I should call the tool"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "And "},
                {"type": "input_text", "text": "this?"},
                {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64," + PNG},
            ],
        },
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ]
    assert convert(input=items)["messages"] == [
        {"role": "user", "content": "What is the weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
            "thinking": "I should call the tool",
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "user", "content": "And this?", "images": [PNG]},
    ]


def test_message_after_function_call_is_merged() -> None:
    items = [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling f"}]},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "done"}]},
    ]
    messages = convert(input=items)["messages"]
    assert messages == [
        {
            "role": "assistant",
            "content": "Calling f",
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {}}}],
        },
        {"role": "tool", "content": "done", "tool_call_id": "c1"},
    ]


def test_tools() -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object"},
        },
        {
            "type": "namespace",
            "name": "fs",
            "tools": [{"type": "function", "name": "read", "parameters": None}],
        },
    ]
    assert convert(input="x", tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
        },
        {"type": "function", "function": {"name": "fs.read", "description": ""}},
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": [{"content": "x"}]}, "input[0]: input item missing required 'type' field"),
        ({"input": [{"type": "thing"}]}, 'input[0]: unknown input item type: "thing"'),
        (
            {"input": [{"role": "user", "content": [{"type": "video"}]}]},
            "input[0]: content[0]: unknown content type: video",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "file inputs are not currently supported",
        ),
        ({"input": "x", "tools": [{"type": "web_search"}]}, WEB_SEARCH_UNSUPPORTED),
        ({"input": "x", "reasoning": {"effort": "huge"}}, None),
        ({"input": 3}, "input must be a string or array"),
    ],
)
def test_errors(body: dict[str, Any], message: str | None) -> None:
    with pytest.raises(RequestError) as info:
        convert(**body)
    if message is not None:
        assert info.value.message == message


def test_function_call_bad_arguments() -> None:
    with pytest.raises(RequestError) as info:
        convert(input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}])
    assert info.value.message.startswith("failed to parse function call arguments")


def test_response_object() -> None:
    request = Request({"model": "m", "input": "x", "instructions": "Be brief"})
    native = chunk("Hello", done=True, thinking="Hmm")
    response = response_object(request, "resp_1", "msg_1", native)
    assert (
        response["id"] == "resp_1" and response["object"] == "response" and response["status"] == "completed"
    )
    assert response["output"] == [
        {
            "id": "rs_resp_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Hmm"}],
            "encrypted_content": "Hmm",
        },
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
        },
    ]
    assert response["usage"] == {
        "input_tokens": 3,
        "output_tokens": 2,
        "total_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    assert response["instructions"] == "Be brief" and response["tools"] == [] and response["store"] is False
    assert (
        response["temperature"] == 1.0 and response["top_p"] == 1.0 and response["truncation"] == "disabled"
    )
    assert response["text"] == {"format": {"type": "text"}} and isinstance(response["completed_at"], int)
    with_call = response_object(request, "resp_1", "msg_1", chunk(done=True, tool_calls=[CALL]))
    assert with_call["output"] == [
        {
            "id": "fc_resp_1_0",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_abc",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
    ]


def test_stream_text_only() -> None:
    stream = ResponsesStream(Request({"model": "m"}), "resp_1", "msg_1")
    first = events(stream.feed(chunk("Hello")))
    assert [kind for kind, _ in first] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert first[0][1]["response"]["status"] == "in_progress"
    assert [kind for kind, _ in events(stream.feed(chunk(" World")))] == ["response.output_text.delta"]
    last = events(stream.feed(chunk(done=True)))
    assert [kind for kind, _ in last] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert last[0][1]["text"] == "Hello World"
    completed = last[-1][1]["response"]
    assert completed["status"] == "completed" and completed["usage"]["total_tokens"] == 5
    assert completed["output"][0]["content"][0]["text"] == "Hello World"
    numbers = [data["sequence_number"] for _, data in first + last]
    assert numbers == sorted(numbers) and numbers[0] == 0
    assert stream.finished


def test_stream_reasoning_then_tool_calls() -> None:
    stream = ResponsesStream(Request({"model": "m"}), "resp_1", "msg_1")
    thinking = events(stream.feed(chunk(thinking="Let me think...")))
    assert [kind for kind, _ in thinking][2:] == [
        "response.output_item.added",
        "response.reasoning_summary_text.delta",
    ]
    assert thinking[2][1]["item"]["type"] == "reasoning"
    calls = events(stream.feed(chunk(tool_calls=[CALL])))
    assert [kind for kind, _ in calls] == [
        "response.reasoning_summary_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert calls[1][1]["item"]["encrypted_content"] == "Let me think..."
    assert calls[2][1]["item"]["status"] == "in_progress" and calls[2][1]["output_index"] == 1
    assert calls[4][1]["arguments"] == '{"city":"Paris"}'
    done = events(stream.feed(chunk(done=True)))
    assert [kind for kind, _ in done] == ["response.completed"]
    assert [item["type"] for item in done[0][1]["response"]["output"]] == ["reasoning", "function_call"]


def test_stream_error() -> None:
    stream = ResponsesStream(Request({"model": "m"}), "resp_1", "msg_1")
    stream.feed(chunk("Hi"))
    [(kind, data)] = events(stream.feed({"error": "boom"}))
    assert kind == "error" and data["message"] == "boom" and stream.finished


@pytest.mark.anyio
async def test_through_the_app(settings: Settings, store: Store) -> None:
    engine = ScriptedEngine(
        [ThinkingChunk("Hmm."), TextChunk("Hello"), ToolCallsChunk([CALL]), Finished("stop", 4, 1, 3, 1)]
    )
    app = create_app(settings, engine, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        whole = await client.post(
            "/v1/responses", json={"model": "tiny", "input": "Weather?", "max_output_tokens": 5}
        )
        assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
        body = whole.json()
        assert body["id"].startswith("resp_") and body["model"] == "tiny"
        assert [item["type"] for item in body["output"]] == ["reasoning", "function_call"]
        assert engine.requests[0].options["num_predict"] == 5
        assert engine.requests[0].messages[-1] == {"role": "user", "content": "Weather?"}

        streamed = await client.post(
            "/v1/responses", json={"model": "tiny", "input": "Weather?", "stream": True}
        )
        assert streamed.headers["content-type"] == "text/event-stream"
        kinds = [kind for kind, _ in events(streamed.content)]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.function_call_arguments.done" in kinds

        missing = await client.post("/v1/responses", json={"model": "nope", "input": "x"})
        assert missing.status_code == 404
        assert missing.json()["error"] == {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
        refused = await client.post(
            "/v1/responses", json={"model": "tiny", "input": "x", "tools": [{"type": "web_search"}]}
        )
        assert refused.status_code == 400 and refused.json()["error"]["message"] == WEB_SEARCH_UNSUPPORTED
