"""``POST /api/chat`` (reference §4.7): chunks, the final object, idioms, prompt building."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from daemon.testing import ScriptedEngine
from tests.http_support import CREATED_AT, METRICS, error_of, json_body, ndjson

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

USER = {"role": "user", "content": "Why is the sky blue?"}


async def post(client: httpx.AsyncClient, **payload: Any) -> httpx.Response:
    return await client.post("/api/chat", json={"model": "tiny", **payload})


async def test_streamed(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await post(client, messages=[USER])
    assert response.status_code == 200
    chunks = ndjson(response)
    for chunk in chunks[:-1]:
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert chunk["message"]["role"] == "assistant" and chunk["done"] is False
        assert CREATED_AT.match(chunk["created_at"])
    assert [c["message"]["content"] for c in chunks] == ["Hello", " world", ""]
    final = chunks[-1]
    assert list(final) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done"] is True and final["done_reason"] == "stop"
    assert "context" not in final
    assert final["model"] == "tiny"
    assert engine.requests[0].return_context is False


async def test_not_streamed(client: httpx.AsyncClient) -> None:
    body = json_body(await post(client, messages=[USER], stream=False))
    assert body["message"] == {"role": "assistant", "content": "Hello world"}
    assert body["done"] is True and body["done_reason"] == "stop"
    assert all(key in body for key in METRICS) and "context" not in body


async def test_prompt_building(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    await post(
        client, messages=[{"role": "User", "content": "hi"}, {"role": "ASSISTANT", "content": "yo"}, USER]
    )
    assert engine.requests[-1].messages == [
        {"role": "system", "content": "You are terse."},  # the model's SYSTEM
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        USER,
    ]
    await post(client, messages=[{"role": "system", "content": "Mine."}, USER])
    assert engine.requests[-1].messages == [{"role": "system", "content": "Mine."}, USER]
    await post(client, model="chatty", messages=[USER])
    assert engine.requests[-1].messages == [
        {"role": "user", "content": "Who are you?"},  # Modelfile MESSAGEs first
        {"role": "assistant", "content": "A test model."},
        USER,
    ]
    assert engine.requests[-1].options["temperature"] == 0.8


async def test_message_fields(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "thinking": "hmm", "tool_calls": []},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user"},
    ]
    assert (await post(client, messages=history)).status_code == 200
    assert [m["content"] for m in engine.requests[0].messages[1:]] == ["weather?", "", "sunny", ""]


async def test_load_and_unload_idioms(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    payloads: list[dict[str, Any]] = [{}, {"messages": []}, {"messages": None}]
    for payload in payloads:
        body = json_body(await post(client, **payload))
        assert body == {
            "model": "tiny",
            "created_at": body["created_at"],
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "load",
        }
    assert len(engine.loads) == 3
    body = json_body(await post(client, messages=[], keep_alive=0))
    assert body["done_reason"] == "unload" and body["message"] == {"role": "assistant", "content": ""}
    assert len(engine.unloads) == 1 and engine.generations == []


async def test_keep_alive_zero(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    assert (await post(client, messages=[USER], keep_alive="0s", stream=False)).status_code == 200
    assert len(engine.unloads) == 1


async def test_model_errors(client: httpx.AsyncClient) -> None:
    cases = [
        ({}, 400, "model is required"),
        ({"model": ""}, 400, "model is required"),
        ({"model": "  "}, 400, "model is required"),
        ({"model": "nope", "messages": [USER]}, 404, "model 'nope' not found"),
        ({"model": "bad name!"}, 400, "invalid model name"),
        ({"model": "embed", "messages": [USER]}, 400, '"embed" does not support chat'),
    ]
    for payload, status, message in cases:
        response = await client.post("/api/chat", json=payload)
        assert (response.status_code, error_of(response)) == (status, message), payload


async def test_unsupported_features(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    response = await post(client, messages=[USER], tools=[tool])
    assert (response.status_code, error_of(response)) == (
        400,
        "registry.ollama.ai/library/tiny:latest does not support tools",
    )
    assert (await post(client, messages=[USER], tools=[])).status_code == 200
    response = await post(client, messages=[{**USER, "images": ["aGVsbG8="]}])
    assert (response.status_code, error_of(response)) == (
        400,
        "this model is missing data required for image input",
    )
    for think in (True, "high"):
        response = await post(client, messages=[USER], think=think)
        assert (response.status_code, error_of(response)) == (400, '"tiny" does not support thinking')
    assert (await post(client, messages=[USER], think=False)).status_code == 200


async def test_invalid_messages(client: httpx.AsyncClient) -> None:
    cases: list[Any] = [
        "hello",
        {"role": "user"},
        ["hello"],
        [None],
        [{"content": "no role"}],
        [{"role": 5, "content": "x"}],
        [{"role": "", "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": ["parts"]}],
        [{"role": "user", "content": "x", "images": "notalist"}],
    ]
    for messages in cases:
        response = await post(client, messages=messages)
        assert response.status_code == 400, messages
        assert error_of(response)


async def test_format_and_options(client: httpx.AsyncClient) -> None:
    assert (await post(client, messages=[USER], format="json")).status_code == 200
    response = await post(client, messages=[USER], format="yaml")
    assert response.status_code == 500 and error_of(response).startswith("invalid format: ")
    response = await post(client, messages=[USER], options={"top_p": "high"})
    assert (response.status_code, error_of(response)) == (500, 'option "top_p" must be of type float32')
    response = await post(client, messages=[USER], top_logprobs=30)
    assert (response.status_code, error_of(response)) == (400, "top_logprobs must be between 0 and 20")
