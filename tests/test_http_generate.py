"""``POST /api/generate`` (reference §4.6): chunks, the final object, idioms, handler order."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from daemon.config import Settings
from daemon.engine import EngineError, Finished, TextChunk
from daemon.testing import ScriptedEngine
from tests.http_support import CREATED_AT, METRICS, error_of, json_body, ndjson

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

TINY_FULL = "registry.ollama.ai/library/tiny:latest"


async def post(client: httpx.AsyncClient, **payload: Any) -> httpx.Response:
    return await client.post("/api/generate", json={"model": "tiny", **payload})


async def test_streamed(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await post(client, prompt="Why?")
    assert response.status_code == 200
    chunks = ndjson(response)
    assert [c["response"] for c in chunks] == ["Hello", " world", ""]
    for chunk in chunks[:-1]:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["model"] == "tiny" and chunk["done"] is False
        assert CREATED_AT.match(chunk["created_at"])
    final = chunks[-1]
    assert list(final) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["context"] == [1, 2, 3]
    assert final["load_duration"] == 250_000_000
    assert final["total_duration"] > 0
    assert (final["prompt_eval_count"], final["prompt_eval_duration"]) == (5, 1_000_000)
    assert (final["eval_count"], final["eval_duration"]) == (2, 2_000_000)
    assert CREATED_AT.match(final["created_at"])
    assert [m.name for m in engine.loads] == ["tiny:latest"]
    assert engine.unloads == []


async def test_not_streamed(client: httpx.AsyncClient) -> None:
    response = await post(client, prompt="Why?", stream=False)
    assert response.status_code == 200
    body = json_body(response)
    assert body["response"] == "Hello world"
    assert body["done"] is True and body["done_reason"] == "stop" and body["context"] == [1, 2, 3]
    assert all(key in body for key in METRICS)


async def test_the_engine_is_told_whether_the_answer_streams(
    client: httpx.AsyncClient, engine: ScriptedEngine
) -> None:
    # A whole answer lets the worker flush its events less often.
    await post(client, prompt="Why?")
    await post(client, prompt="Why?", stream=False)
    await post(client, prompt="Why?", _debug_render_only=True)
    assert [r.stream for r in engine.requests] == [True, False, False]


async def test_model_echoes_the_request_string(client: httpx.AsyncClient) -> None:
    chunks = ndjson(await post(client, model="TINY:latest", prompt="x"))
    assert {c["model"] for c in chunks} == {"TINY:latest"}


async def test_engine_request(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    await post(client, prompt="Why?", options={"temperature": 0.1, "top_k": 3.9, "num_keep": 1, "numa": True})
    request = engine.requests[0]
    assert request.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Why?"},
    ]
    assert request.raw is False and request.return_context is True and request.context == []
    assert request.options == {
        "num_predict": -1,
        "temperature": 0.1,  # request beats the model's 0.5
        "top_p": 0.9,
        "top_k": 3,
        "seed": -1,
        "stop": ["<|end|>"],  # the model's PARAMETER stop
        "num_ctx": 4096,
        "min_p": 0.0,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "repeat_last_n": 64,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "num_keep": 1,
    }


async def test_request_system_overrides_the_model(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    await post(client, prompt="Why?", system="Be kind.")
    assert engine.requests[0].messages[0] == {"role": "system", "content": "Be kind."}


async def test_num_ctx_default_from_settings(settings: Settings, store: Any) -> None:
    from daemon.app import create_app

    engine = ScriptedEngine()
    app = create_app(Settings(home=settings.home, context_length=8192), engine, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await post(client, prompt="x")
    assert engine.requests[0].options["num_ctx"] == 8192


async def test_modelfile_messages_and_context(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    await post(client, model="chatty", prompt="Hi")
    assert engine.requests[0].messages == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A test model."},
        {"role": "user", "content": "Hi"},
    ]
    await post(client, model="chatty", prompt="Again", context=[7, 8, 9])
    assert engine.requests[1].messages == [{"role": "user", "content": "Again"}]
    assert engine.requests[1].context == [7, 8, 9]


async def test_raw(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    final = ndjson(await post(client, prompt="<s>[INST] hi", raw=True))[-1]
    request = engine.requests[0]
    assert (request.raw, request.prompt, request.messages, request.return_context) == (
        True,
        "<s>[INST] hi",
        [],
        False,
    )
    assert "context" not in final
    for extra in ({"system": "x"}, {"template": "x"}, {"context": [1]}):
        response = await post(client, prompt="p", raw=True, **extra)
        assert (response.status_code, error_of(response)) == (
            400,
            "raw mode does not support template, system, or context",
        )


async def test_load_idiom(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    for payload in ({}, {"prompt": ""}, {"prompt": None, "keep_alive": "5m"}):
        response = await post(client, **payload)
        assert response.status_code == 200
        body = json_body(response)  # one JSON object even though streaming was requested
        assert list(body) == ["model", "created_at", "response", "done", "done_reason"]
        assert body == {"model": "tiny", "created_at": body["created_at"], "response": "", "done": True,
                        "done_reason": "load"}  # fmt: skip
    assert len(engine.loads) == 3 and engine.generations == [] and engine.unloads == []


async def test_unload_idiom(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    for keep_alive in (0, "0", "0s", 0.0, "0m"):
        response = await post(client, keep_alive=keep_alive)
        body = json_body(response)
        assert body["done_reason"] == "unload" and body["response"] == "" and body["done"] is True
    assert len(engine.unloads) == 5 and engine.loads == [] and engine.generations == []


async def test_unload_idiom_skips_later_checks(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await post(client, keep_alive=0, think=True, options={"temperature": "x"})
    assert json_body(response)["done_reason"] == "unload"


@pytest.mark.parametrize("stream", [True, False])
async def test_keep_alive_zero_unloads_after_the_request(
    client: httpx.AsyncClient, engine: ScriptedEngine, stream: bool
) -> None:
    response = await post(client, prompt="x", keep_alive=0, stream=stream)
    assert response.status_code == 200
    assert [m.name for m in engine.unloads] == ["tiny:latest"]


async def test_other_keep_alive_values_keep_the_model(
    client: httpx.AsyncClient, engine: ScriptedEngine
) -> None:
    for keep_alive in (-1, "10m", 3.5, "1h30m0s"):
        assert (await post(client, prompt="x", keep_alive=keep_alive)).status_code == 200
    assert engine.unloads == []


async def test_model_errors(client: httpx.AsyncClient) -> None:
    cases = [
        ({"model": ""}, 404, "model '' not found"),
        ({"model": None}, 404, "model '' not found"),
        ({"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ({"model": "nope:7b"}, 404, "model 'nope:7b' not found"),
        ({"model": "bad name!"}, 400, "invalid model name"),
        ({"model": "embed", "prompt": "x"}, 400, '"embed" does not support generate'),
    ]
    for payload, status, message in cases:
        response = await client.post("/api/generate", json=payload)
        assert (response.status_code, error_of(response)) == (status, message), payload
    response = await client.post("/api/generate", json={})
    assert (response.status_code, error_of(response)) == (404, "model '' not found")


async def test_think(client: httpx.AsyncClient) -> None:
    for think in (True, "high", "low", "medium", "max"):
        response = await post(client, prompt="x", think=think)
        assert (response.status_code, error_of(response)) == (400, '"tiny" does not support thinking')
    assert (await post(client, prompt="x", think=False)).status_code == 200
    assert (await post(client, prompt="x", think=None)).status_code == 200
    response = await post(client, prompt="x", think="hard")
    assert (response.status_code, error_of(response)) == (
        400,
        'invalid think value: "hard" (must be "high", "medium", "low", "max", true, or false)',
    )
    response = await post(client, prompt="x", think=1)
    assert (response.status_code, error_of(response)) == (
        400,
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)',
    )


async def test_top_logprobs(client: httpx.AsyncClient) -> None:
    for value in (-1, 21):
        response = await post(client, prompt="x", top_logprobs=value)
        assert (response.status_code, error_of(response)) == (400, "top_logprobs must be between 0 and 20")
    # checked before the model name
    response = await client.post("/api/generate", json={"model": "nope", "top_logprobs": 99})
    assert error_of(response) == "top_logprobs must be between 0 and 20"
    for value in (0, 20):
        assert (await post(client, prompt="x", top_logprobs=value, logprobs=True)).status_code == 200


async def test_format(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    for value in ("", None, "json", {"type": "object", "properties": {"a": {"type": "string"}}}, {}):
        assert (await post(client, prompt="x", format=value)).status_code == 200, value
    cases: list[tuple[Any, str]] = [
        ("xml", 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'),
        ("JSON", 'invalid format: "\\"JSON\\""; expected "json" or a valid JSON Schema object'),
        (5, 'invalid format: "5"; expected "json" or a valid JSON Schema object'),
        ([], 'invalid format: "[]"; expected "json" or a valid JSON Schema object'),
    ]
    for value, message in cases:
        response = await post(client, prompt="x", format=value)
        assert (response.status_code, error_of(response)) == (500, message)
    # the load idiom answers before the format is looked at, as in Ollama
    assert json_body(await post(client, format="xml"))["done_reason"] == "load"


async def test_bad_options(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    cases = [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"seed": True}, 'option "seed" must be of type integer'),
        ({"num_predict": "10"}, 'option "num_predict" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "END"}, 'option "stop" must be of type array'),
        ({"stop": ["a", 2]}, 'option "stop" must be of an array of strings'),
    ]
    for options, message in cases:
        response = await post(client, prompt="x", options=options)
        assert (response.status_code, error_of(response)) == (500, message)
        # scheduled before the load idiom, so an empty prompt fails the same way
        assert (await post(client, options=options)).status_code == 500
    assert engine.loads == []
    response = await post(client, prompt="x", options={"temperature": None, "low_vram": True, "mirostat": 1})
    assert response.status_code == 200


async def test_unsupported_features(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    response = await post(client, prompt="def f(", suffix="    return 1")
    assert (response.status_code, error_of(response)) == (400, f"{TINY_FULL} does not support insert")
    response = await post(client, prompt="what is this?", images=["aGVsbG8="])
    assert (response.status_code, error_of(response)) == (
        400,
        "this model is missing data required for image input",
    )
    response = await post(client, prompt="x", template='{{ define "t" }}x{{ end }}')
    assert response.status_code == 400 and "unsupported template" in error_of(response)
    response = await post(client, prompt="x", template="{{ .Prompt")
    assert response.status_code == 500 and error_of(response).startswith("template:")
    assert engine.loads == []
    assert (await post(client, prompt="x", template="Q: {{ .Prompt }} A:")).status_code == 200
    assert engine.requests[-1].template == "Q: {{ .Prompt }} A:"
    # empty values are "not given"
    go_client = {"prompt": "x", "suffix": "", "system": "", "template": "", "images": None, "options": None}
    assert (await post(client, **go_client)).status_code == 200


async def test_ignores_unknown_fields(client: httpx.AsyncClient) -> None:
    response = await post(client, prompt="x", width=512, height=512, steps=4, truncate=True, shift=False)
    assert response.status_code == 200


async def test_load_failure(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.load_error = EngineError("server busy, please try again.  maximum pending requests exceeded", 503)
    response = await post(client, prompt="x")
    assert (response.status_code, error_of(response)) == (
        503,
        "server busy, please try again.  maximum pending requests exceeded",
    )


async def test_zero_metrics_are_omitted(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.script = [TextChunk("a"), Finished("length", 0, 0, 1, 0)]
    engine.load_seconds = 0.0  # a warm model
    final = ndjson(await post(client, prompt="x"))[-1]
    assert final["done_reason"] == "length"
    assert (
        "prompt_eval_count" not in final
        and "prompt_eval_duration" not in final
        and "eval_duration" not in final
    )
    assert final["eval_count"] == 1 and final["total_duration"] > 0
    assert 0 < final["load_duration"] < final["total_duration"]  # the wait for the model, as Ollama reports
    assert "context" not in final  # the engine gave none
    engine.script = [Finished("cancel", 1, 1, 1, 1)]
    assert "done_reason" not in ndjson(await post(client, prompt="x"))[-1]


async def test_unicode_round_trip(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.script = [TextChunk('héllo 🌍 "q" \n<&>'), Finished("stop", 1, 1, 1, 1)]
    response = await post(client, prompt="ünïcödé ✓")
    assert ndjson(response)[0]["response"] == 'héllo 🌍 "q" \n<&>'
    assert engine.requests[0].messages[-1]["content"] == "ünïcödé ✓"
    assert orjson.loads(response.content.split(b"\n")[0])["response"] == 'héllo 🌍 "q" \n<&>'
