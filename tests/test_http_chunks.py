"""Golden chunk shapes for thinking and tool calls (scripted engine), and what reaches the
engine for tools, think, format, template, suffix, truncate (reference §4.6, §4.7)."""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import orjson
import pytest
from starlette.applications import Starlette

from daemon.app import create_app
from daemon.config import Settings
from daemon.engine import Finished, LogprobsChunk, ThinkingChunk, ToolCallsChunk
from daemon.engine import TextChunk as T
from daemon.testing import ScriptedEngine, install_fake_model
from registry.store import ModelConfig, Store
from tests.http_support import CREATED_AT, error_of, ndjson

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

CALL = {
    "id": "call_abcd1234",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
}
SCRIPT = [ThinkingChunk("Hmm."), T("Sure."), ToolCallsChunk([CALL]), Finished("stop", 5, 10, 3, 20)]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
QWEN_LIKE = "{% if tools %}<tool_call>{{ tool_call.name }}{% endif %}<think></think>{{ messages }}"


@pytest.fixture
def agent_engine() -> ScriptedEngine:
    return ScriptedEngine(SCRIPT)


@pytest.fixture
def agent_app(settings: Settings, agent_engine: ScriptedEngine, store: Store) -> Starlette:
    install_fake_model(store, "agent", ModelConfig(), chat_template=QWEN_LIKE)
    install_fake_model(store, "fim", ModelConfig(template="<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>"))
    return create_app(settings, agent_engine, store)


@pytest.fixture
async def agent_client(agent_app: Starlette) -> Any:
    transport = httpx.ASGITransport(app=agent_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def strip(chunk: dict[str, Any]) -> dict[str, Any]:
    assert CREATED_AT.match(chunk.pop("created_at"))
    return chunk


async def test_chat_stream_chunks(agent_client: httpx.AsyncClient) -> None:
    body = {"model": "agent", "messages": [{"role": "user", "content": "x"}], "tools": [TOOL]}
    chunks = [strip(c) for c in ndjson(await agent_client.post("/api/chat", json=body))]
    assistant = {"role": "assistant"}
    assert chunks[:3] == [
        {"model": "agent", "message": {**assistant, "content": "", "thinking": "Hmm."}, "done": False},
        {"model": "agent", "message": {**assistant, "content": "Sure."}, "done": False},
        {"model": "agent", "message": {**assistant, "content": "", "tool_calls": [CALL]}, "done": False},
    ]
    final = chunks[3]
    assert final["message"] == {**assistant, "content": ""} and final["done"] is True
    assert final["done_reason"] == "stop" and final["eval_count"] == 3


async def test_chat_whole(agent_client: httpx.AsyncClient) -> None:
    body = {
        "model": "agent",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [TOOL],
        "stream": False,
    }
    answer = (await agent_client.post("/api/chat", json=body)).json()
    assert answer["message"] == {
        "role": "assistant",
        "content": "Sure.",
        "thinking": "Hmm.",
        "tool_calls": [CALL],
    }


async def test_generate_chunks(agent_client: httpx.AsyncClient) -> None:
    chunks = [
        strip(c)
        for c in ndjson(await agent_client.post("/api/generate", json={"model": "agent", "prompt": "x"}))
    ]
    assert chunks[0] == {"model": "agent", "response": "", "thinking": "Hmm.", "done": False}
    assert chunks[1] == {"model": "agent", "response": "Sure.", "done": False}
    whole = (
        await agent_client.post("/api/generate", json={"model": "agent", "prompt": "x", "stream": False})
    ).json()
    assert (whole["response"], whole["thinking"]) == ("Sure.", "Hmm.")


async def test_the_official_client_reads_them(agent_app: Starlette) -> None:
    transport = httpx.ASGITransport(app=agent_app)
    client = ollama.AsyncClient(host="http://test", transport=transport)
    answer = await client.chat(model="agent", messages=[{"role": "user", "content": "x"}], tools=[TOOL])
    assert answer.message.thinking == "Hmm." and answer.message.content == "Sure."
    [call] = answer.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}


async def test_what_reaches_the_engine(agent_client: httpx.AsyncClient, agent_engine: ScriptedEngine) -> None:
    schema = {"type": "object"}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_abcd1234"},
    ]
    body = {"model": "agent", "messages": messages, "tools": [TOOL], "format": schema, "truncate": False}
    await agent_client.post("/api/chat", json=body)
    request = agent_engine.requests[-1]
    assert request.tools == [TOOL] and request.format == schema and request.truncate is False
    assert request.think is None  # the model's default: thinking models think
    assert request.messages[1]["tool_calls"] == [CALL]
    assert request.messages[2] == {
        "role": "tool",
        "content": "sunny",
        "tool_name": "get_weather",
        "tool_call_id": "call_abcd1234",
    }
    await agent_client.post("/api/chat", json={**body, "think": False})
    assert agent_engine.requests[-1].think is False
    await agent_client.post("/api/generate", json={"model": "fim", "prompt": "a", "suffix": "b"})
    request = agent_engine.requests[-1]
    assert (request.prompt, request.suffix, request.template) == (
        "a",
        "b",
        "<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>",
    )


async def test_capabilities(agent_client: httpx.AsyncClient) -> None:
    # tiny: neither tools nor thinking nor insert
    response = await agent_client.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [TOOL]}
    )
    assert response.status_code == 400 and error_of(response).endswith("does not support tools")
    response = await agent_client.post("/api/generate", json={"model": "agent", "prompt": "a", "suffix": "b"})
    assert response.status_code == 400 and error_of(response).endswith("agent:latest does not support insert")
    response = await agent_client.post(
        "/api/generate", json={"model": "agent", "prompt": "a", "think": "high"}
    )
    assert response.status_code == 200


async def test_bad_format_is_500(agent_client: httpx.AsyncClient) -> None:
    response = await agent_client.post(
        "/api/generate", json={"model": "agent", "prompt": "x", "format": ["json"]}
    )
    assert response.status_code == 500
    assert orjson.loads(response.content)["error"].startswith('invalid format: "[\\"json\\"]"')


def _lp(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode())}


LOGPROBS_SCRIPT = [
    LogprobsChunk([_lp("Su")]),
    LogprobsChunk([_lp("re")]),
    T("Sure"),
    T("."),  # a chunk whose token's entry came with the previous one
    LogprobsChunk([_lp("!")]),  # held back until the end: goes with the final object
    Finished("stop", 5, 10, 3, 20),
]


async def test_logprobs_ride_with_the_chunk_of_their_tokens(settings: Settings, store: Store) -> None:
    engine = ScriptedEngine(LOGPROBS_SCRIPT)
    install_fake_model(store, "m", ModelConfig())
    app = create_app(settings, engine, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        body = {"model": "m", "prompt": "x", "logprobs": True, "top_logprobs": 2}
        chunks = ndjson(await client.post("/api/generate", json=body))
        assert [c.get("logprobs") for c in chunks] == [[_lp("Su"), _lp("re")], None, [_lp("!")]]
        assert [c["response"] for c in chunks] == ["Sure", ".", ""]
        whole = (
            await client.post(
                "/api/chat", json={**body, "messages": [{"role": "user", "content": "x"}], "stream": False}
            )
        ).json()
        assert whole["logprobs"] == [_lp("Su"), _lp("re"), _lp("!")]
        assert whole["message"]["content"] == "Sure."
    request = engine.requests[0]
    assert request.logprobs is True and request.top_logprobs == 2
