"""Native answers → OpenAI objects and server-sent events (reference §5), after Ollama's
``middleware/openai_test.go`` ChatWriter tests and ``openai/openai_test.go`` (ToChatCompletion,
ToStreamChunks, FinishChunk, ToListCompletion, ToModel, NewError)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from daemon.openai import shapes
from daemon.openai.stream import DONE, ChatStream, CompletionStream

STAMP = "2024-10-26T00:00:00.123456789Z"
CREATED = 1729900800
CALL = {
    "id": "call_ab12cd34",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
}


def native_chunk(content: str = "", done: bool = False, **extra: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    message.update({k: v for k, v in extra.items() if k in ("thinking", "tool_calls")})
    obj: dict[str, Any] = {"model": "test-model", "created_at": STAMP, "message": message, "done": done}
    obj.update({k: v for k, v in extra.items() if k not in ("thinking", "tool_calls")})
    return obj


def final(reason: str = "stop", **extra: Any) -> dict[str, Any]:
    return native_chunk(done=True, done_reason=reason, prompt_eval_count=3, eval_count=2, **extra)


def frames(data: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing."""
    assert data.endswith(b"\n\n")
    parts = data[:-2].split(b"\n\n")
    assert all(part.startswith(b"data: ") for part in parts)
    return [part[len(b"data: ") :].decode() for part in parts]


def run_chat(*natives: dict[str, Any], include_usage: bool = False) -> list[str]:
    stream = ChatStream("chatcmpl-test", include_usage)
    return frames(b"".join(stream.feed(native) for native in natives))


def test_errors() -> None:
    assert shapes.error_object(400, "bad") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert shapes.error_object(404, "x")["error"]["type"] == "not_found_error"
    assert shapes.error_object(500, "x")["error"]["type"] == "api_error"
    assert shapes.error_object(503, "x")["error"]["type"] == "api_error"
    assert shapes.native_error(b'{"error":"model not found"}') == "model not found"
    assert shapes.native_error(b"404 page not found") == "404 page not found"


def test_unix_seconds() -> None:
    assert shapes.unix_seconds(STAMP) == CREATED
    assert shapes.unix_seconds("2024-10-26T02:00:00+02:00") == CREATED
    assert shapes.unix_seconds("2024-10-25T19:00:00.5-05:00") == CREATED
    assert abs(shapes.unix_seconds(None) - shapes.unix_seconds("nonsense")) <= 1


def test_ids() -> None:
    assert shapes.chat_id().startswith("chatcmpl-") and 0 <= int(shapes.chat_id()[9:]) < 999
    assert shapes.completion_id().startswith("cmpl-")


def test_chat_completion() -> None:
    assert shapes.chat_completion("chatcmpl-1", final(content="Hello!")) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": "test-model",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_chat_completion_tool_calls_reasoning_logprobs() -> None:
    logprobs = [{"token": "a", "logprob": -0.1, "bytes": [97]}]
    native = final(thinking="hmm", tool_calls=[CALL], logprobs=logprobs)
    [choice] = shapes.chat_completion("chatcmpl-1", native)["choices"]
    assert choice["finish_reason"] == "tool_calls"  # "stop" with tool calls
    assert choice["message"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "hmm",
        "tool_calls": [
            {
                "id": "call_ab12cd34",
                "index": 0,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert choice["logprobs"] == {"content": logprobs}
    assert (
        shapes.chat_completion("c", final("length", tool_calls=[CALL]))["choices"][0]["finish_reason"]
        == "length"
    )
    no_reason = native_chunk(done=True)
    assert shapes.chat_completion("c", no_reason)["choices"][0]["finish_reason"] is None


def test_stream_mixed_thinking_and_content_emits_split_chunks() -> None:
    """Ollama's TestChatWriter_StreamMixedThinkingAndContentEmitsSplitChunks: five frames."""
    out = run_chat(final(content="final answer", thinking="reasoning"), include_usage=True)
    assert len(out) == 5 and out[4] == "[DONE]"
    reasoning, content, finish, usage = (orjson.loads(frame) for frame in out[:4])
    assert reasoning["choices"][0]["delta"] == {"role": "assistant", "reasoning": "reasoning"}
    assert content["choices"][0]["delta"] == {"content": "final answer"}
    assert reasoning["choices"][0]["finish_reason"] is None and content["choices"][0]["finish_reason"] is None
    assert '"delta":{}' in out[2] and '"content"' not in out[2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert '"choices":[]' in out[3]
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_stream_chunk_shape_role_and_timestamp() -> None:
    later = native_chunk(" world")
    later["created_at"] = "2024-10-26T00:00:09Z"
    out = run_chat(native_chunk("Hello"), later, final())
    assert out[-1] == "[DONE]"
    first, second, finish = (orjson.loads(frame) for frame in out[:-1])
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-test"
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}
    ]
    assert second["choices"][0]["delta"] == {"content": " world"}  # the role only once
    assert {first["created"], second["created"], finish["created"]} == {CREATED}  # pinned to the first
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert "usage" not in finish


def test_stream_metrics_trailer_skips_empty_chunk_but_not_logprobs() -> None:
    assert len(run_chat(native_chunk("Hi"), final())) == 3  # content, finish, [DONE]
    with_logprobs = run_chat(native_chunk("Hi"), final(logprobs=[{"token": "x", "logprob": 0.0}]))
    assert len(with_logprobs) == 4
    assert orjson.loads(with_logprobs[1])["choices"][0]["logprobs"] == {
        "content": [{"token": "x", "logprob": 0.0}]
    }


def test_stream_empty_completion_still_emits_role_chunk() -> None:
    out = run_chat(final())
    assert orjson.loads(out[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert orjson.loads(out[1])["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        ("", False, "stop"),
        ("load", False, "load"),
        ("load", True, "load"),
    ],
)
def test_finish_reason(reason: str, calls: bool, expected: str) -> None:
    natives = [native_chunk(tool_calls=[CALL])] if calls else [native_chunk("x")]
    out = run_chat(*natives, final(reason))
    assert orjson.loads(out[-2])["choices"][0]["finish_reason"] == expected


def test_stream_thinking_and_tool_calls_without_done() -> None:
    out = run_chat(native_chunk(thinking="plan", tool_calls=[CALL]))
    reasoning, calls = (orjson.loads(frame)["choices"][0]["delta"] for frame in out)
    assert reasoning == {"role": "assistant", "reasoning": "plan"}
    assert calls["content"] == "" and calls["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    only_thinking = run_chat(native_chunk(thinking="plan"))
    assert orjson.loads(only_thinking[0])["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "plan",
    }


def test_stream_error_line_ends_the_stream() -> None:
    stream = ChatStream("chatcmpl-test", include_usage=True)
    out = frames(stream.feed(native_chunk("Hi")) + stream.feed({"error": "runner stopped"}))
    assert orjson.loads(out[1]) == shapes.error_object(500, "runner stopped")
    assert stream.finished and "[DONE]" not in out


def test_completion_shapes() -> None:
    native = {"model": "m", "created_at": STAMP, "response": "Hi", "done": True, "done_reason": "length"}
    assert shapes.completion("cmpl-1", {**native, "prompt_eval_count": 1, "eval_count": 1}) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": CREATED,
        "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": "Hi", "index": 0, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def test_completion_stream_with_usage() -> None:
    stream = CompletionStream("cmpl-1", include_usage=True)
    chunk = {"model": "m", "created_at": STAMP, "response": "Hi", "done": False}
    done = {
        **chunk,
        "response": "",
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 4,
        "eval_count": 1,
    }
    body = stream.feed(chunk) + stream.feed(done)
    assert body.endswith(DONE)
    first, last, usage = (orjson.loads(frame) for frame in frames(body)[:-1])
    assert list(first) == ["id", "object", "created", "choices", "model", "system_fingerprint", "usage"]
    assert first["choices"] == [{"text": "Hi", "index": 0, "finish_reason": None}]
    assert first["usage"] == last["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert last["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5
    plain = CompletionStream("cmpl-2", include_usage=False)
    assert "usage" not in orjson.loads(frames(plain.feed(chunk))[0])


def test_model_list_and_object() -> None:
    tags = {
        "models": [
            {"name": "test-model", "modified_at": "2023-06-16T17:03:22Z"},
            {"name": "x:latest", "model": "user/m:latest", "modified_at": "2023-06-16T17:03:22Z"},
        ]
    }
    assert shapes.model_list(tags) == {
        "object": "list",
        "data": [
            {"id": "test-model", "object": "model", "created": 1686935002, "owned_by": "library"},
            {"id": "user/m:latest", "object": "model", "created": 1686935002, "owned_by": "user"},
        ],
    }
    assert shapes.model_list({"models": []}) == {"object": "list", "data": []}
    show = {"modified_at": "2023-06-16T10:03:22-07:00"}
    assert shapes.model_object("test-model", show) == {
        "id": "test-model",
        "object": "model",
        "created": 1686935002,
        "owned_by": "library",
    }


def test_embedding_list() -> None:
    native = {"model": "e", "embeddings": [[0.5, -1.0], [0.25, 2.0]], "prompt_eval_count": 6}
    floats = shapes.embedding_list("e", native, "float")
    assert floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.5, -1.0], "index": 0},
            {"object": "embedding", "embedding": [0.25, 2.0], "index": 1},
        ],
        "model": "e",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    encoded = shapes.embedding_list("e", native, "base64")["data"][1]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.25, 2.0)


def test_stream_fast_path_matches_the_general_one() -> None:
    """Plain content chunks after the first are assembled from pre-encoded pieces."""
    stream = ChatStream("chatcmpl-test", include_usage=False)
    stream.feed(native_chunk("Hi"))
    for text in ("", " there", 'a "quoted"\n line ✓'):
        expected = shapes.chunk("chatcmpl-test", CREATED, "test-model", {"content": text})
        assert stream.feed(native_chunk(text)) == b"data: " + orjson.dumps(expected) + b"\n\n"
