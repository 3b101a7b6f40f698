"""``/api/embed`` and ``/api/embeddings`` over the scripted engine (reference §4.8, §4.9, §11)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import ollama
import orjson
import pytest

from daemon.engine import EngineError
from daemon.testing import ScriptedEngine, fake_vector
from tests.http_support import error_of, json_body

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

NOT_FOUND = 'model "nope" not found, try pulling it first'
NO_EMBEDDINGS = "This server does not support embeddings. Start it with `--embeddings`"


async def post(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    return await client.post(path, content=orjson.dumps(body))


# ---------------------------------------------------------------------------- /api/embed


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input": "hi"}, 404, "model '' not found"),
        ({"model": "", "input": "hi"}, 404, "model '' not found"),
        ({"model": "a b c", "input": "hi"}, 400, "invalid model name"),
        ({"model": "embed", "input": 5}, 400, "invalid input type"),
        ({"model": "embed", "input": ["a", 1]}, 400, "invalid input type"),
        ({"model": "embed", "input": {"text": "a"}}, 400, "invalid input type"),
        ({"model": "nope", "input": "hi"}, 404, NOT_FOUND),
        ({"model": "nope", "input": 5}, 400, "invalid input type"),  # the input is checked first
        (
            {"model": "embed", "input": "hi", "truncate": "no"},
            400,
            "json: cannot unmarshal string into Go struct field EmbedRequest.truncate of type bool",
        ),
        (
            {"model": "embed", "input": "hi", "dimensions": "4"},
            400,
            "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int",
        ),
        ({"model": "embed", "input": "hi", "keep_alive": "5"}, 400, 'time: missing unit in duration "5"'),
        (
            {"model": "embed", "input": "hi", "options": {"temperature": "hot"}},
            500,
            'option "temperature" must be of type float32',
        ),
    ],
)
async def test_embed_errors(
    client: httpx.AsyncClient, engine: ScriptedEngine, body: dict[str, Any], status: int, message: str
) -> None:
    response = await post(client, "/api/embed", body)
    assert (response.status_code, error_of(response)) == (status, message)
    assert engine.loads == [] and engine.embeds == []


async def test_embed_missing_body(client: httpx.AsyncClient) -> None:
    for path in ("/api/embed", "/api/embeddings"):
        response = await client.post(path, content=b"")
        assert (response.status_code, error_of(response)) == (400, "missing request body")


@pytest.mark.parametrize("empty", ["", [], None])
async def test_empty_input_loads_the_model(
    client: httpx.AsyncClient, engine: ScriptedEngine, empty: Any
) -> None:
    body = {"model": "embed", "keep_alive": "1m"} | ({} if empty is None else {"input": empty})
    response = await post(client, "/api/embed", body)
    assert response.status_code == 200
    assert json_body(response) == {"model": "embed", "embeddings": []}
    assert [m.name for m in engine.loads] == ["embed:latest"]
    assert engine.keep_alives == [60.0]
    assert engine.embeds == []


async def test_embed_batch(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    body = {"model": "embed", "input": ["hello world", "bye"], "keep_alive": 0, "options": {"num_ctx": 128}}
    response = await post(client, "/api/embed", body)
    assert response.status_code == 200
    out = json_body(response)
    assert list(out) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    assert out["model"] == "embed"
    assert out["prompt_eval_count"] == 4 + 3
    assert out["total_duration"] > 0
    assert out["load_duration"] == 250_000_000  # what the engine says loading took
    vectors = np.array(out["embeddings"])
    assert vectors.shape == (2, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    expected = fake_vector("hello world") / np.linalg.norm(fake_vector("hello world"))
    assert np.allclose(vectors[0], expected, atol=1e-6)
    (record,) = engine.embeds
    assert record.inputs == ["hello world", "bye"]
    assert (record.truncate, record.dimensions, record.keep_alive) == (True, 0, 0.0)
    assert (record.normalize, record.num_ctx) == (True, 128)
    assert engine.unloads  # keep_alive 0: gone once answered


async def test_embed_float32_text(client: httpx.AsyncClient) -> None:
    """Values print as Go prints a float32: the shortest text that reads back the same."""
    response = await post(client, "/api/embed", {"model": "embed", "input": "hello"})
    text = response.text
    values = json_body(response)["embeddings"][0]
    assert all(np.float32(repr(v)) == np.float32(v) for v in values)
    assert all(len(str(v).lstrip("-")) <= 16 for v in values), text


async def test_embed_options(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    body = {"model": "embed", "input": "hi there", "truncate": False, "dimensions": 3}
    out = json_body(await post(client, "/api/embed", body))
    (vector,) = out["embeddings"]
    assert len(vector) == 3
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-6
    assert (engine.embeds[0].truncate, engine.embeds[0].dimensions) == (False, 3)
    assert engine.embeds[0].num_ctx == 4096  # the server default when nothing lowers it


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (EngineError("the input length exceeds the context length", 400), 400),
        (EngineError(NO_EMBEDDINGS, 501), 501),
        (EngineError("server busy, please try again.  maximum pending requests exceeded", 503), 503),
    ],
)
async def test_embed_engine_errors(
    client: httpx.AsyncClient, engine: ScriptedEngine, error: EngineError, status: int
) -> None:
    engine.embed_error = error
    response = await post(client, "/api/embed", {"model": "tiny", "input": "hi"})
    assert (response.status_code, error_of(response)) == (status, error.message)


async def test_embed_with_the_ollama_client(api: ollama.AsyncClient, engine: ScriptedEngine) -> None:
    result = await api.embed(model="embed", input=["one", "two", "three"], dimensions=5, truncate=False)
    assert result.model == "embed"
    assert len(result.embeddings) == 3 and all(len(v) == 5 for v in result.embeddings)
    assert result.prompt_eval_count == 9
    with pytest.raises(ollama.ResponseError) as info:
        await api.embed(model="nope", input="x")
    assert (info.value.status_code, info.value.error) == (404, NOT_FOUND)
    engine.embed_error = EngineError("the input length exceeds the context length", 400)
    with pytest.raises(ollama.ResponseError) as info:
        await api.embed(model="embed", input="x", truncate=False)
    assert info.value.status_code == 400


# ---------------------------------------------------------------------------- /api/embeddings


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": "hi"}, 400, "model is required"),
        ({"model": "a b c", "prompt": "hi"}, 400, "invalid model name"),
        ({"model": "nope", "prompt": "hi"}, 404, NOT_FOUND),
        (
            {"model": "embed", "prompt": 5},
            400,
            "json: cannot unmarshal number 5 into Go struct field EmbeddingRequest.prompt of type string",
        ),
    ],
)
async def test_embeddings_errors(
    client: httpx.AsyncClient, engine: ScriptedEngine, body: dict[str, Any], status: int, message: str
) -> None:
    response = await post(client, "/api/embeddings", body)
    assert (response.status_code, error_of(response)) == (status, message)
    assert engine.embeds == []


async def test_embeddings_legacy(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await post(client, "/api/embeddings", {"model": "embed", "prompt": "hello world"})
    body = json_body(response)
    assert list(body) == ["embedding"]
    # The model's own vector as float64, not normalized again.
    assert np.allclose(body["embedding"], fake_vector("hello world"), atol=1e-6)
    (record,) = engine.embeds
    assert (record.inputs, record.normalize, record.truncate) == (["hello world"], False, False)


async def test_embeddings_empty_prompt_loads(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await post(client, "/api/embeddings", {"model": "embed", "prompt": ""})
    assert json_body(response) == {"embedding": []}
    assert len(engine.loads) == 1 and engine.embeds == []


async def test_embeddings_runner_errors_are_500(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.embed_error = EngineError(NO_EMBEDDINGS, 501)
    response = await post(client, "/api/embeddings", {"model": "tiny", "prompt": "hi"})
    assert (response.status_code, error_of(response)) == (500, NO_EMBEDDINGS)


async def test_embeddings_with_the_ollama_client(api: ollama.AsyncClient) -> None:
    result = await api.embeddings(model="embed", prompt="hello")
    assert len(result.embedding) == 8
