"""OpenAI requests → native bodies (reference §5.1–§5.3), after Ollama's
``middleware/openai_test.go`` (TestChatMiddleware, TestCompletionsMiddleware,
TestEmbeddingsMiddleware) and ``openai/openai_test.go`` (FromChatRequest, FromCompleteRequest)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from daemon.openai.convert import (
    IMAGE_URLS_UNSUPPORTED,
    RequestError,
    chat_request,
    completion_request,
    decode_body,
    embed_request,
    include_usage,
    think_from_effort,
)

USER = {"role": "user", "content": "Hello"}
DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER_CALL = {
    "id": "id",
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "arguments": '{"location": "Paris, France", "format": "celsius"}',
    },
}
NATIVE_CALL = {
    "id": "id",
    "function": {
        "name": "get_current_weather",
        "arguments": {"location": "Paris, France", "format": "celsius"},
    },
}


def chat(**body: Any) -> dict[str, Any]:
    return chat_request({"model": "test-model", **body})


def error_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(RequestError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value.message


def test_chat_defaults() -> None:
    assert chat(messages=[USER]) == {
        "model": "test-model",
        "messages": [USER],
        "options": DEFAULTS,
        "stream": False,
    }


def test_chat_options() -> None:
    native = chat(
        messages=[USER],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=999,
        seed=123,
        stop=["\n", "stop"],
        temperature=3.0,
        frequency_penalty=4.0,
        presence_penalty=5.0,
        top_p=6.0,
        response_format={"type": "json_object"},
    )
    assert native["options"] == {
        "stop": ["\n", "stop"],
        "num_predict": 999,
        "temperature": 3.0,
        "seed": 123,
        "frequency_penalty": 4.0,
        "presence_penalty": 5.0,
        "top_p": 6.0,
    }
    assert native["format"] == "json" and native["stream"] is True
    assert include_usage({"stream_options": {"include_usage": True}})
    assert not include_usage({"stream": True})


def test_chat_stop_and_token_limits() -> None:
    assert chat(messages=[USER], stop="END")["options"]["stop"] == ["END"]
    assert chat(messages=[USER], stop=["a", 1, "b"])["options"]["stop"] == ["a", "b"]  # non-strings dropped
    assert chat(messages=[USER], max_completion_tokens=7)["options"]["num_predict"] == 7
    assert chat(messages=[USER], max_tokens=5, max_completion_tokens=7)["options"]["num_predict"] == 5
    assert chat(messages=[USER], temperature=0)["options"]["temperature"] == 0  # 0 is a value, not absent
    assert chat(messages=[USER], temperature=None)["options"]["temperature"] == 1.0


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    as_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert chat(messages=[USER], response_format=as_schema)["format"] == schema
    assert chat(messages=[USER], response_format={"type": " JSON_OBJECT "})["format"] == "json"
    assert "format" not in chat(messages=[USER], response_format={"type": "text"})
    assert "format" not in chat(messages=[USER], response_format={"type": "json_schema"})


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        ("", None),
        ("high", "high"),
        ("medium", "medium"),
        ("low", "low"),
        ("max", "max"),
        ("minimal", "low"),
        ("xhigh", "max"),
        ("ultra", "max"),
        ("none", False),
    ],
)
def test_reasoning_effort(effort: str, think: bool | str | None) -> None:
    assert think_from_effort(effort) == think
    assert chat(messages=[USER], reasoning_effort=effort).get("think") == think
    assert chat(messages=[USER], reasoning={"effort": effort}).get("think") == think


def test_reasoning_effort_invalid() -> None:
    message = error_of(chat, messages=[USER], reasoning_effort="extreme")
    assert message.startswith('invalid reasoning value: "extreme" (must be "minimal"')


def test_logprobs_tools_keep_alive() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    native = chat(messages=[USER], logprobs=True, top_logprobs=3, tools=[tool], keep_alive="0s")
    assert native["logprobs"] is True and native["top_logprobs"] == 3
    assert native["tools"] == [tool]
    assert native["keep_alive"] == "0s"
    assert "logprobs" not in chat(messages=[USER], logprobs=False)


def test_content_parts_become_messages() -> None:
    parts = [
        {"type": "text", "text": "Hello"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}},
    ]
    native = chat(messages=[{"role": "user", "content": parts}])
    assert native["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "", "images": [PNG]},
    ]
    bare = chat(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "data:;base64," + PNG}]}]
    )
    assert bare["messages"][0]["images"] == [PNG]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.png", IMAGE_URLS_UNSUPPORTED),
        ("http://example.com/cat.png", IMAGE_URLS_UNSUPPORTED),
        ("data:image/gif;base64," + PNG, "invalid image input"),
        ("data:image/png;base64,!!!", "invalid image input"),
    ],
)
def test_bad_images(url: str, message: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    assert error_of(chat, messages=[{"role": "user", "content": [part]}]) == message


def test_bad_content_parts() -> None:
    assert (
        error_of(chat, messages=[{"role": "user", "content": [{"type": "video"}]}])
        == "invalid message format"
    )
    assert error_of(chat, messages=[{"role": "user", "content": ["text"]}]) == "invalid message format"
    assert (
        error_of(chat, messages=[{"role": "user", "content": [{"type": "text"}]}]) == "invalid message format"
    )


def test_tool_call_history() -> None:
    native = chat(
        messages=[
            {"role": "user", "content": "What's the weather like in Paris Today?"},
            {"role": "assistant", "tool_calls": [WEATHER_CALL]},
        ]
    )
    assert native["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [NATIVE_CALL]}
    with_content = chat(
        messages=[{"role": "assistant", "content": "Let's see", "tool_calls": [WEATHER_CALL]}]
    )
    assert with_content["messages"] == [
        {"role": "assistant", "content": "Let's see", "tool_calls": [NATIVE_CALL]}
    ]
    empty = chat(messages=[{"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}])
    assert empty["messages"] == [{"role": "assistant", "content": "", "tool_calls": [NATIVE_CALL]}]
    thinking = chat(messages=[{"role": "assistant", "reasoning": "Let's see", "tool_calls": [WEATHER_CALL]}])
    assert thinking["messages"] == [
        {"role": "assistant", "content": "", "thinking": "Let's see", "tool_calls": [NATIVE_CALL]}
    ]


def test_tool_arguments_keep_their_order() -> None:
    call = {"id": "c", "function": {"name": "f", "arguments": '{"z": 1, "a": 2}'}}
    [message] = chat(messages=[{"role": "assistant", "tool_calls": [call]}])["messages"]
    assert list(message["tool_calls"][0]["function"]["arguments"]) == ["z", "a"]


@pytest.mark.parametrize("arguments", ["{not json", "", "[1]", None])
def test_invalid_tool_arguments(arguments: Any) -> None:
    call = {"id": "c", "function": {"name": "f", "arguments": arguments}}
    assert (
        error_of(chat, messages=[{"role": "assistant", "tool_calls": [call]}])
        == "invalid tool call arguments"
    )


def test_tool_results_find_their_function() -> None:
    call = {**WEATHER_CALL, "id": "id_abc"}
    history = [USER, {"role": "assistant", "tool_calls": [call]}]
    by_id = chat(messages=[*history, {"role": "tool", "tool_call_id": "id_abc", "content": "20 degrees"}])
    assert by_id["messages"][-1] == {
        "role": "tool",
        "content": "20 degrees",
        "tool_name": "get_current_weather",
        "tool_call_id": "id_abc",
    }
    by_name = chat(
        messages=[*history, {"role": "tool", "name": "get_current_weather", "content": "20 degrees"}]
    )
    assert by_name["messages"][-1] == {
        "role": "tool",
        "content": "20 degrees",
        "tool_name": "get_current_weather",
    }


@pytest.mark.parametrize(
    ("content", "type_name"),
    [(2, "float64"), (None, "<nil>"), ({"a": 1}, "map[string]interface {}"), (True, "bool")],
)
def test_invalid_content_type(content: Any, type_name: str) -> None:
    message = error_of(chat, messages=[{"role": "user", "content": content}])
    assert message == f"invalid message content type: {type_name}"


def test_empty_messages_and_field_types() -> None:
    assert error_of(chat, messages=[]) == "[] is too short - 'messages'"
    assert error_of(chat) == "[] is too short - 'messages'"
    assert error_of(chat, messages=[USER], max_tokens="ten") == (
        "json: cannot unmarshal string into Go struct field ChatCompletionRequest.max_tokens of type int"
    )
    assert error_of(chat, messages=[USER], temperature="hot").endswith("temperature of type float64")
    assert error_of(chat_request, {"model": 3, "messages": [USER]}).endswith("model of type string")
    assert error_of(chat, messages=[USER], stream="yes").endswith("stream of type bool")


def test_decode_body() -> None:
    assert decode_body(b'{"a": 1}') == {"a": 1}
    assert decode_body(b"null") == {}
    assert error_of(decode_body, b"") == "EOF"
    assert error_of(decode_body, b"{").startswith("invalid JSON in request body")
    assert (
        error_of(decode_body, b"[1]") == "json: cannot unmarshal array into Go value of type openai.Request"
    )


def test_completion_defaults_and_options() -> None:
    body = {
        "model": "test-model",
        "prompt": "Hello",
        "temperature": 0.8,
        "stop": ["\n", "stop"],
        "suffix": "suffix",
    }
    assert completion_request(body) == {
        "model": "test-model",
        "prompt": "Hello",
        "options": {
            "stop": ["\n", "stop"],
            "temperature": 0.8,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "top_p": 1.0,
        },
        "stream": False,
        "suffix": "suffix",
    }
    streamed = completion_request({"model": "m", "prompt": "x", "stream": True, "top_p": 0, "max_tokens": 4})
    assert streamed["stream"] is True
    assert streamed["options"]["top_p"] == 1.0 and streamed["options"]["num_predict"] == 4
    assert streamed["options"]["temperature"] == 1.0
    logprobs = completion_request({"model": "m", "prompt": "x", "logprobs": 2, "seed": 9})
    assert logprobs["logprobs"] is True and logprobs["top_logprobs"] == 2 and logprobs["options"]["seed"] == 9


def test_completion_errors() -> None:
    body = {"model": "m", "prompt": "Hello", "temperature": None, "stop": [1, 2], "suffix": "suffix"}
    assert error_of(completion_request, body) == "invalid type for 'stop' field: float64"
    assert error_of(completion_request, {"model": "m", "prompt": ["a", "b"]}) == (
        "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string"
    )


def test_embed_requests() -> None:
    assert embed_request({"input": "Hello", "model": "test-model"}) == {
        "model": "test-model",
        "input": "Hello",
    }
    batch = embed_request({"input": ["Hello", "World"], "model": "m", "dimensions": 8, "keep_alive": -1})
    assert batch == {"model": "m", "input": ["Hello", "World"], "dimensions": 8, "keep_alive": -1}
    assert embed_request({"input": "", "model": "m"})["input"] == [""]
    assert embed_request({"input": "x", "model": "m", "encoding_format": "BASE64"})["input"] == "x"
    assert error_of(embed_request, {"model": "m"}) == "invalid input"
    assert error_of(embed_request, {"model": "m", "input": []}) == "invalid input"
    assert error_of(embed_request, {"model": "m", "input": "x", "encoding_format": "int8"}) == (
        "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64']."
    )


def test_native_bodies_are_json() -> None:
    native = chat(messages=[USER], tools=[{"type": "function", "function": {"name": "f"}}])
    assert orjson.loads(orjson.dumps(native)) == native
