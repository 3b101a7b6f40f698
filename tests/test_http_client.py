"""The unchanged official ``ollama`` Python client against the app (reference §10.2)."""

from __future__ import annotations

import ollama
import pytest

from daemon.engine import EngineError, TextChunk
from daemon.testing import ScriptedEngine

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio


async def test_list(api: ollama.AsyncClient) -> None:
    listed = await api.list()
    tiny = next(m for m in listed.models if m.model == "tiny:latest")
    assert tiny.size and tiny.size > 0
    assert tiny.digest and len(tiny.digest) == 64
    assert tiny.modified_at is not None and tiny.modified_at.tzinfo is not None
    assert tiny.details is not None and tiny.details.family == "llama"


async def test_show(api: ollama.AsyncClient) -> None:
    shown = await api.show("tiny")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelfile and "FROM" in shown.modelfile
    assert shown.template and shown.parameters and "You are terse." in shown.modelfile
    assert shown.capabilities == ["completion"]
    assert shown.details is not None and shown.details.parameter_size == "135M"
    with pytest.raises(ollama.ResponseError) as info:
        await api.show("missing")
    assert info.value.status_code == 404 and info.value.error == "model 'missing:latest' not found"


async def test_generate(api: ollama.AsyncClient, engine: ScriptedEngine) -> None:
    result = await api.generate("tiny", "Why is the sky blue?", options={"temperature": 0.0, "seed": 42})
    assert result.response == "Hello world" and result.done and result.done_reason == "stop"
    assert result.context == [1, 2, 3] and result.eval_count == 2 and result.load_duration == 250_000_000
    assert engine.requests[0].options["seed"] == 42
    parts = [part async for part in await api.generate("tiny", "Why?", stream=True)]
    assert "".join(p.response or "" for p in parts) == "Hello world" and parts[-1].done
    loaded = await api.generate("tiny")  # the load idiom through the client
    assert loaded.done_reason == "load"
    unloaded = await api.generate("tiny", keep_alive=0)
    assert unloaded.done_reason == "unload"


async def test_chat(api: ollama.AsyncClient, engine: ScriptedEngine) -> None:
    messages = [{"role": "user", "content": "Hello?"}]
    result = await api.chat("tiny", messages=messages, keep_alive="10m")
    assert result.message.role == "assistant" and result.message.content == "Hello world"
    assert result.done_reason == "stop" and result.prompt_eval_count == 5
    parts = [part async for part in await api.chat("tiny", messages=messages, stream=True, think=False)]
    assert "".join(p.message.content or "" for p in parts) == "Hello world" and parts[-1].done
    assert engine.requests[-1].messages[-1] == {"role": "user", "content": "Hello?"}


async def test_errors_reach_the_client(api: ollama.AsyncClient, engine: ScriptedEngine) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await api.chat("nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404 and "not found" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        await api.chat("tiny", messages=[{"role": "user", "content": "x"}], think=True)
    assert info.value.status_code == 400 and "does not support thinking" in info.value.error
    engine.script = [TextChunk("partial"), EngineError("model runner has unexpectedly stopped")]
    stream = await api.generate("tiny", "x", stream=True)
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in stream:
            pass
    assert info.value.error == "model runner has unexpectedly stopped"
