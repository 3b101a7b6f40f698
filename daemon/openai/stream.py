"""Server-sent events: native NDJSON chunks → OpenAI's streamed frames (reference §5.1, §5.2).

Each writer is fed the native objects of one stream, in order, and returns the bytes to
send for each: ``data: <json>\\n\\n`` frames, then ``data: [DONE]\\n\\n`` after the final one.

Chat: the first chunk's delta carries the role; ``created`` is pinned to the first chunk;
the native metrics-only final object gives no empty content chunk but a finish chunk with
``"delta": {}``; with ``include_usage`` a chunk with ``"choices": []`` and the usage follows.
A native ``{"error"}`` line (a failure after the stream started) becomes an error frame,
and the stream ends there without ``[DONE]``, so OpenAI's clients raise it.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from daemon.openai import shapes

Obj = dict[str, Any]

SSE_MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"


class EventWriter(Protocol):
    """Turns the native objects of one stream into the bytes to send; ``finished`` once the
    last event is written (nothing more is sent after it)."""

    finished: bool

    def feed(self, native: Obj) -> bytes: ...


def frame(obj: Obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_frame(message: str) -> bytes:
    return frame(shapes.error_object(500, message))


class ChatStream:
    """``/api/chat`` chunks → ``chat.completion.chunk`` frames."""

    def __init__(self, ident: str, include_usage: bool) -> None:
        self.ident = ident
        self.include_usage = include_usage
        self.created: int | None = None
        self.first_sent = False
        self.tool_call_sent = False
        self.finished = False
        self._head = b""  # a content chunk's frame up to the content, once the first is out

    def feed(self, native: Obj) -> bytes:
        message = native.get("message") or {}
        plain = len(native) == 4 and len(message) == 2 and "content" in message  # no thinking, calls…
        if self._head and plain and not native.get("done"):
            # the common case, a plain content chunk: one orjson call, as the native side does
            return b"".join((self._head, orjson.dumps(message["content"]), _CONTENT_TAIL))
        if "error" in native:
            self.finished = True
            return error_frame(str(native["error"]))
        if self.created is None:
            self.created = shapes.unix_seconds(native.get("created_at"))
        model = native.get("model", "")
        done = bool(native.get("done"))
        out = []
        if not self._head:
            prefix = orjson.dumps(shapes.chunk(self.ident, self.created, model, {"content": ""}))
            self._head = (
                b"data: " + prefix[: prefix.index(b'"delta":{"content":') + len(b'"delta":{"content":')]
            )
        if not (done and self.first_sent and _empty(native)):
            for delta, logprobs in shapes.chat_deltas(native, include_role=not self.first_sent):
                obj = shapes.chunk(self.ident, self.created, model, delta)
                if logprobs:
                    obj["choices"][0]["logprobs"] = {"content": logprobs}
                self.tool_call_sent = self.tool_call_sent or "tool_calls" in delta
                out.append(frame(obj))
            self.first_sent = True
        if done:
            self.finished = True
            reason = native.get("done_reason") or "stop"
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            out.append(frame(shapes.chunk(self.ident, self.created, model, {}, reason)))
            if self.include_usage:
                last = shapes.chunk(self.ident, self.created, model, {})
                last["choices"] = []
                last["usage"] = shapes.usage(native)
                out.append(frame(last))
            out.append(DONE)
        return b"".join(out)


_CONTENT_TAIL = b'},"finish_reason":null}]}\n\n'


def _empty(native: Obj) -> bool:
    message = native.get("message") or {}
    return not (
        message.get("content")
        or message.get("thinking")
        or message.get("tool_calls")
        or native.get("logprobs")
    )


class CompletionStream:
    """``/api/generate`` chunks → ``text_completion`` frames; with ``include_usage`` every
    chunk carries a zero usage and a last chunk with ``"choices": []`` the real one."""

    def __init__(self, ident: str, include_usage: bool) -> None:
        self.ident = ident
        self.include_usage = include_usage
        self.finished = False

    def feed(self, native: Obj) -> bytes:
        if "error" in native:
            self.finished = True
            return error_frame(str(native["error"]))
        obj = shapes.completion_chunk(self.ident, native)
        if self.include_usage:
            obj["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = [frame(obj)]
        if native.get("done"):
            self.finished = True
            if self.include_usage:
                obj["choices"] = []
                obj["usage"] = shapes.usage(native)
                out.append(frame(obj))
            out.append(DONE)
        return b"".join(out)
