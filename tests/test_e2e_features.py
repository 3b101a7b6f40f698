"""End to end through the official ``ollama`` client: tools, thinking, ``format`` under
concurrent requests, options, templates (a real daemon, real workers, real MLX)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import ollama
import orjson
import pytest

from registry.tiny_model import AGENT_ANSWER, AGENT_THOUGHT, write_tiny_model
from tests.conftest import TINY, Daemon, daemon_with_tiny

pytestmark = pytest.mark.e2e

AGENT = "agent"


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name
    """
    return "sunny"


@pytest.fixture(scope="module")
def daemon(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    agent_dir = tmp_path_factory.mktemp("models") / "agent"
    write_tiny_model(agent_dir, flavour="agent")
    with daemon_with_tiny(tmp_path_factory.mktemp("home-features"), tiny_model_dir) as daemon:
        response = httpx.post(
            daemon.url + "/api/create",
            json={"model": AGENT, "from": str(agent_dir), "stream": False},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    client = ollama.Client(host=daemon.url)
    yield client
    client._client.close()


def test_tool_call_streamed_and_not(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = client.chat(model=AGENT, messages=messages, tools=[get_weather], options={"num_predict": 20})
    assert whole.message.content == AGENT_ANSWER
    assert whole.message.thinking == AGENT_THOUGHT  # a thinking model thinks by default
    [call] = whole.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    parts = list(client.chat(model=AGENT, messages=messages, tools=[get_weather], stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].message.content  # its own chunk
    assert "".join(p.message.thinking or "" for p in parts) == AGENT_THOUGHT
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_tool_call_raw_shape_and_round_trip(daemon: Daemon) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    body = {
        "model": AGENT,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [tool],
        "stream": False,
    }
    answer = httpx.post(daemon.url + "/api/chat", json=body, timeout=60).json()
    [call] = answer["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    # the client sends the call and the tool's result back; the template renders both
    body["messages"] += [answer["message"], {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    again = httpx.post(daemon.url + "/api/chat", json=body, timeout=60)
    assert again.status_code == 200 and again.json()["done"]


def test_thinking_off_and_generate(client: ollama.Client) -> None:
    off = client.chat(model=AGENT, messages=[{"role": "user", "content": "Hi"}], think=False)
    assert not off.message.thinking and off.message.content.startswith(AGENT_ANSWER)
    generated = client.generate(model=AGENT, prompt="Hi", think=True, options={"num_predict": 20})
    assert generated.thinking == AGENT_THOUGHT and generated.response.startswith(AGENT_ANSWER)


def test_capabilities_gate_tools_and_thinking(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=TINY, messages=[{"role": "user", "content": "x"}], tools=[get_weather])
    assert info.value.status_code == 400 and info.value.error.endswith("tiny:latest does not support tools")
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=TINY, messages=[{"role": "user", "content": "x"}], think=True)
    assert info.value.error == '"tiny" does not support thinking'


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 50},
        "sky": {"enum": ["clear", "cloudy", "rain"]},
    },
    "required": ["city", "temperature", "sky"],
    "additionalProperties": False,
}


def test_format_schema_under_concurrent_requests(client: ollama.Client) -> None:
    def ask(seed: int) -> str:
        options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": seed, "num_predict": 120}
        return client.generate(model=TINY, prompt="Weather?", format=SCHEMA, options=options).response

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(6)))
    for answer in answers:
        jsonschema.validate(orjson.loads(answer), SCHEMA)
    assert len(set(answers)) > 1


def test_format_errors(client: ollama.Client, daemon: Daemon) -> None:
    response = httpx.post(daemon.url + "/api/generate", json={"model": TINY, "prompt": "x", "format": "xml"})
    assert response.status_code == 500
    assert (
        response.json()["error"]
        == 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'
    )
    answer = client.chat(
        model=TINY, messages=[{"role": "user", "content": "x"}], format="json", options={"seed": 1}
    )
    assert isinstance(json.loads(answer.message.content), dict)  # valid JSON (numbers may be huge)


def test_template_override_and_raw(client: ollama.Client) -> None:
    options = {"temperature": 0, "num_predict": 4}
    templated = client.generate(model=TINY, prompt="Why?", template="Q: {{ .Prompt }}\nA:", options=options)
    raw = client.generate(model=TINY, prompt="Q: Why?\nA:", raw=True, options=options)
    assert templated.response == raw.response
    assert templated.context and raw.context is None


def test_options_reach_the_sampler(client: ollama.Client) -> None:
    options = {"temperature": 0, "num_predict": 20}
    plain = client.generate(model=TINY, prompt="Tell me", options=options).response
    penalised = client.generate(model=TINY, prompt="Tell me", options={**options, "repeat_penalty": 3.0})
    assert penalised.response != plain
