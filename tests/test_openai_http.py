"""The ``/v1`` routes through the app, with the scripted engine (reference §5, §10.4)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.app import create_app
from daemon.config import Settings
from daemon.engine import EngineError, Finished, TextChunk, ThinkingChunk, ToolCallsChunk
from daemon.testing import Delay, ScriptedEngine, Step, install_fake_model
from registry.store import Store

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

USER = {"role": "user", "content": "Why is the sky blue?"}
OPENAI_CT = "application/json"
SSE_CT = "text/event-stream"
FINISHED = Finished("stop", 5, 1_000_000, 2, 2_000_000)
CALL = {
    "id": "call_x1y2z3w4",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
}


async def chat(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [USER], **body})


def openai_json(response: httpx.Response) -> Any:
    """An OpenAI JSON answer: ``application/json`` without charset, ending in a newline."""
    assert response.headers["content-type"] == OPENAI_CT
    assert response.content.endswith(b"}\n")
    return orjson.loads(response.content)


def openai_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status
    body = openai_json(response)
    assert list(body) == ["error"]
    error = body["error"]
    assert error["type"] == kind and error["param"] is None and error["code"] is None
    message: str = error["message"]
    return message


def sse(response: httpx.Response) -> list[Any]:
    """The decoded ``data:`` frames; the literal ``[DONE]`` stays a string."""
    assert response.status_code == 200
    assert response.headers["content-type"] == SSE_CT
    body = response.content
    assert body.endswith(b"\n\n")
    out: list[Any] = []
    for part in body[:-2].split(b"\n\n"):
        assert part.startswith(b"data: ")
        data = part[len(b"data: ") :]
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


async def test_chat_not_streamed(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await chat(client, headers={"Authorization": "Bearer ignored"})
    assert response.status_code == 200
    body = openai_json(response)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "tiny" and body["system_fingerprint"] == "fp_ollama"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    options = engine.requests[0].options
    assert options["temperature"] == 1.0 and options["top_p"] == 1.0  # over the model's 0.5
    assert engine.requests[0].messages[-1]["content"] == USER["content"]


async def test_chat_streamed_with_usage(client: httpx.AsyncClient) -> None:
    frames = sse(await chat(client, stream=True, stream_options={"include_usage": True}))
    assert frames[-1] == "[DONE]"
    first, second, finish, usage = frames[:-1]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}
    ]
    assert second["choices"][0]["delta"] == {"content": " world"}
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7
    assert len({frame["id"] for frame in frames[:-1]}) == 1
    assert len({frame["created"] for frame in frames[:-1]}) == 1


async def test_chat_options_reach_the_engine(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    schema = {"type": "object", "properties": {"sky": {"type": "string"}}, "required": ["sky"]}
    response = await chat(
        client,
        max_completion_tokens=7,
        stop=["\n\n"],
        seed=42,
        temperature=0.2,
        top_p=0.5,
        frequency_penalty=0.1,
        presence_penalty=0.3,
        response_format={"type": "json_schema", "json_schema": {"name": "sky", "schema": schema}},
        keep_alive=0,
    )
    assert response.status_code == 200
    request = engine.requests[0]
    assert request.format == schema and request.keep_alive == 0
    options = request.options
    assert options["num_predict"] == 7 and options["stop"] == ["\n\n"] and options["seed"] == 42
    assert options["temperature"] == 0.2 and options["top_p"] == 0.5
    assert options["frequency_penalty"] == 0.1 and options["presence_penalty"] == 0.3
    assert engine.unloads  # keep_alive 0 honoured


async def test_chat_json_object(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    await chat(client, response_format={"type": "json_object"})
    assert engine.requests[0].format == "json"


@contextlib.asynccontextmanager
async def scripted(settings: Settings, store: Store, *steps: Step) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose engine plays ``steps``."""
    app = create_app(settings, ScriptedEngine(list(steps)), store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_chat_reasoning_and_tool_calls(settings: Settings, store: Store) -> None:
    steps = (ThinkingChunk("Let me think."), TextChunk("Checking."), ToolCallsChunk([CALL]), FINISHED)
    async with scripted(settings, store, *steps) as client:
        body = openai_json(await chat(client))
        frames = sse(await chat(client, stream=True))
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning"] == "Let me think." and choice["message"]["content"] == "Checking."
    [call] = choice["message"]["tool_calls"]
    assert call == {
        "id": "call_x1y2z3w4",
        "index": 0,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    deltas = [frame["choices"][0]["delta"] for frame in frames[:-1]]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": "Let me think."}
    assert deltas[1] == {"content": "Checking."}
    assert deltas[2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert deltas[3] == {} and frames[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_history_reaches_the_engine(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    response = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert response.status_code == 200
    sent = engine.requests[0].messages[-2:]
    assert sent[0]["tool_calls"] == [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert sent[1] == {
        "role": "tool",
        "content": "sunny",
        "tool_name": "get_weather",
        "tool_call_id": "call_1",
    }


async def test_chat_errors(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/chat/completions", json={"model": "nope", "messages": [USER]})
    assert openai_error(missing, 404, "not_found_error") == "model 'nope' not found"
    empty = await client.post("/v1/chat/completions", json={"model": "", "messages": [USER]})
    assert openai_error(empty, 400, "invalid_request_error") == "model is required"
    no_messages = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert openai_error(no_messages, 400, "invalid_request_error") == "[] is too short - 'messages'"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    tools = await chat(client, tools=[tool])
    assert openai_error(tools, 400, "invalid_request_error") == (
        "registry.ollama.ai/library/tiny:latest does not support tools"
    )
    image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    url = await client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": [image]}]}
    )
    assert "image URLs are not currently supported" in openai_error(url, 400, "invalid_request_error")
    bad_json = await client.post("/v1/chat/completions", content=b"{nope")
    assert openai_error(bad_json, 400, "invalid_request_error").startswith("invalid JSON")
    keep_alive = await chat(client, keep_alive="5")
    assert openai_error(keep_alive, 400, "invalid_request_error").startswith("time: missing unit")
    bad_format = await chat(client, response_format={"type": "json_schema", "json_schema": {"schema": "xml"}})
    assert openai_error(bad_format, 500, "api_error").startswith("invalid format")


async def test_engine_failures(settings: Settings, store: Store) -> None:
    busy_error = EngineError("server busy, please try again.  maximum pending requests exceeded", 503)
    async with scripted(settings, store, busy_error) as client:
        busy = await chat(client, stream=True)
    assert openai_error(busy, 503, "api_error").startswith("server busy")

    midway = (TextChunk("Hi"), Delay(0.01), EngineError("model runner has unexpectedly stopped"))
    async with scripted(settings, store, *midway) as client:
        frames = sse(await chat(client, stream=True, stream_options={"include_usage": True}))
    assert frames[0]["choices"][0]["delta"]["content"] == "Hi"
    assert frames[-1] == {
        "error": {
            "message": "model runner has unexpectedly stopped",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }


async def test_completions(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 3})
    body = openai_json(response)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [{"text": "Hello world", "index": 0, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert engine.requests[0].options["num_predict"] == 3
    assert engine.requests[0].messages[-1]["content"] == "Once"

    streamed = await client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": "Once", "stream": True, "stream_options": {"include_usage": True}},
    )
    frames = sse(streamed)
    assert [frame["choices"][0]["text"] for frame in frames[:3]] == ["Hello", " world", ""]
    assert frames[2]["choices"][0]["finish_reason"] == "stop"
    assert frames[3]["choices"] == [] and frames[3]["usage"]["total_tokens"] == 7
    assert frames[4] == "[DONE]"

    missing = await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert openai_error(missing, 404, "not_found_error") == "model 'nope' not found"
    bad_stop = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stop": [1]})
    assert openai_error(bad_stop, 400, "invalid_request_error") == "invalid type for 'stop' field: float64"


async def test_completion_load_idiom_streamed(client: httpx.AsyncClient) -> None:
    """An empty prompt loads the model: one native JSON object, still sent as SSE."""
    frames = sse(await client.post("/v1/completions", json={"model": "tiny", "prompt": "", "stream": True}))
    assert frames[0]["choices"][0]["finish_reason"] == "load" and frames[-1] == "[DONE]"


async def test_models(client: httpx.AsyncClient, store: Store) -> None:
    install_fake_model(store, "someone/agent:v1")
    body = openai_json(await client.get("/v1/models"))
    assert body["object"] == "list"
    by_id = {entry["id"]: entry for entry in body["data"]}
    assert set(by_id) == {"tiny:latest", "chatty:latest", "embed:latest", "someone/agent:v1"}
    assert by_id["tiny:latest"]["object"] == "model" and by_id["tiny:latest"]["owned_by"] == "library"
    assert by_id["someone/agent:v1"]["owned_by"] == "someone"
    assert all(isinstance(entry["created"], int) and entry["created"] > 0 for entry in body["data"])

    one = openai_json(await client.get("/v1/models/tiny"))
    assert one == {
        "id": "tiny",
        "object": "model",
        "created": by_id["tiny:latest"]["created"],
        "owned_by": "library",
    }
    namespaced = openai_json(await client.get("/v1/models/someone/agent:v1"))
    assert namespaced["id"] == "someone/agent:v1" and namespaced["owned_by"] == "someone"
    missing = await client.get("/v1/models/nope")
    assert openai_error(missing, 404, "not_found_error") == "model 'nope:latest' not found"


async def test_models_empty_store(client: httpx.AsyncClient, store: Store) -> None:
    for name in ("tiny", "chatty", "embed"):
        response = await client.request("DELETE", "/api/delete", json={"model": name})
        assert response.status_code == 200
    assert openai_json(await client.get("/v1/models")) == {"object": "list", "data": []}


async def _fake_embed(request: Request) -> Response:
    """``/api/embed`` as documented (reference §4.8): these tests cover the translation alone."""
    body = orjson.loads(await request.body())
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if body["model"] != "embed":
        return JSONResponse({"error": f'model "{body["model"]}" not found, try pulling it first'}, 404)
    vectors = [[0.6, 0.8][: body.get("dimensions") or 2] for _ in inputs]
    return JSONResponse({"model": body["model"], "embeddings": vectors, "prompt_eval_count": 3 * len(inputs)})


async def test_embeddings(client: httpx.AsyncClient, app: Starlette) -> None:
    app.router.routes.insert(0, Route("/api/embed", _fake_embed, methods=["POST"]))
    response = await client.post("/v1/embeddings", json={"model": "embed", "input": ["a", "b"]})
    body = openai_json(response)
    assert body["object"] == "list" and body["model"] == "embed"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" and len(item["embedding"]) == 2 for item in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    encoded = await client.post(
        "/v1/embeddings", json={"model": "embed", "input": "a", "encoding_format": "base64"}
    )
    assert isinstance(openai_json(encoded)["data"][0]["embedding"], str)
    missing = await client.post("/v1/embeddings", json={"model": "nope", "input": "a"})
    assert "not found" in openai_error(missing, 404, "not_found_error")
    no_input = await client.post("/v1/embeddings", json={"model": "embed"})
    assert openai_error(no_input, 400, "invalid_request_error") == "invalid input"


async def test_methods(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/chat/completions")
    assert response.status_code == 405


async def test_a_client_leaving_mid_stream_cancels_the_generation(settings: Settings, store: Store) -> None:
    """Over a real socket: closing the SSE stream closes the native stream and the engine's."""
    steps: list[Step] = [step for _ in range(200) for step in (TextChunk("tick "), Delay(0.01))]
    engine = ScriptedEngine([*steps, FINISHED])
    config = uvicorn.Config(create_app(settings, engine, store), port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            body = {"model": "tiny", "messages": [USER], "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break
        with anyio.fail_after(5):
            while not engine.generations[0].closed_early:
                await anyio.sleep(0.01)
        assert engine.generations[0].events_sent < 200
        server.should_exit = True
