"""Native Ollama answers → OpenAI's response objects (reference §5).

Pure functions over decoded native JSON: ``chat.completion`` and its chunks,
``text_completion``, the ``list``/``model`` objects, the embedding list and the error
object. Key order and omitted keys follow Ollama's ``openai`` package.
"""

from __future__ import annotations

import base64
import calendar
import random
import re
import sys
import time
from array import array
from typing import Any

import orjson

from registry.names import DEFAULT_NAMESPACE, InvalidName, parse_name

Obj = dict[str, Any]
FINGERPRINT = "fp_ollama"

_STAMP = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.\d+)?(?:([Zz])|([+-])(\d\d):?(\d\d))?$"
)


def chat_id() -> str:
    return f"chatcmpl-{random.randrange(999)}"


def completion_id() -> str:
    return f"cmpl-{random.randrange(999)}"


def unix_seconds(stamp: Any) -> int:
    """Unix seconds of an RFC 3339 timestamp (nanoseconds allowed); now if there is none."""
    match = _STAMP.match(stamp) if isinstance(stamp, str) else None
    if match is None:
        return int(time.time())
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match.group(8):
        offset = int(match.group(9)) * 3600 + int(match.group(10)) * 60
        seconds -= offset if match.group(8) == "+" else -offset
    return seconds


def error_object(status: int, message: str) -> Obj:
    """``{"error": {...}}`` with the type Ollama gives each status."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def native_error(body: bytes) -> str:
    """The message of a native error body: its ``error`` field, else the text itself."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return body.decode(errors="replace")


def usage(native: Obj) -> Obj:
    prompt = int(native.get("prompt_eval_count") or 0)
    completion = int(native.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def tool_calls(calls: Any) -> list[Obj]:
    """Native tool calls → OpenAI's, with ``arguments`` as a JSON string."""
    out = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id") or "",
                "index": function.get("index") or 0,
                "type": "function",
                "function": {
                    "name": function.get("name") or "",
                    "arguments": orjson.dumps(function.get("arguments") or {}).decode(),
                },
            }
        )
    return out


def _reason(native: Obj, has_calls: bool) -> str | None:
    reason = native.get("done_reason") or ""
    if reason == "stop" and has_calls:
        reason = "tool_calls"
    return reason or None


def chat_completion(ident: str, native: Obj) -> Obj:
    """A whole (``stream: false``) ``/api/chat`` answer as a ``chat.completion``."""
    message = native.get("message") or {}
    calls = tool_calls(message.get("tool_calls"))
    out_message: Obj = {"role": message.get("role") or "assistant", "content": message.get("content", "")}
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if calls:
        out_message["tool_calls"] = calls
    choice: Obj = {"index": 0, "message": out_message, "finish_reason": _reason(native, bool(calls))}
    if native.get("logprobs"):
        choice["logprobs"] = {"content": native["logprobs"]}
    return {
        "id": ident,
        "object": "chat.completion",
        "created": unix_seconds(native.get("created_at")),
        "model": native.get("model", ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage(native),
    }


def chunk(ident: str, created: int, model: str, delta: Obj, finish: str | None = None) -> Obj:
    """One ``chat.completion.chunk`` with a single choice."""
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def chat_deltas(native: Obj, include_role: bool) -> list[tuple[Obj, Any]]:
    """The deltas (with their logprobs) of one streamed native chunk: one, or two when it
    carries both reasoning and content or tool calls (reasoning first)."""
    message = native.get("message") or {}
    content = message.get("content", "")
    thinking = message.get("thinking") or ""
    calls = tool_calls(message.get("tool_calls"))
    logprobs = native.get("logprobs") or None
    role: Obj = {"role": "assistant"} if include_role else {}
    if thinking and (content or calls):
        return [({**role, "reasoning": thinking}, logprobs), (_delta({}, content, "", calls), None)]
    return [(_delta(role, content, thinking, calls), logprobs)]


def _delta(role: Obj, content: str, thinking: str, calls: list[Obj]) -> Obj:
    delta = {**role, "content": content}
    if thinking:
        delta["reasoning"] = thinking
    if calls:
        delta["tool_calls"] = calls
    return delta


def _text_choice(native: Obj) -> Obj:
    return {"text": native.get("response", ""), "index": 0, "finish_reason": _reason(native, False)}


def completion(ident: str, native: Obj) -> Obj:
    """A whole ``/api/generate`` answer as a ``text_completion``."""
    return {
        "id": ident,
        "object": "text_completion",
        "created": unix_seconds(native.get("created_at")),
        "model": native.get("model", ""),
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"text": native.get("response", ""), "index": 0, "finish_reason": _reason(native, False)}
        ],
        "usage": usage(native),
    }


def completion_chunk(ident: str, native: Obj) -> Obj:
    """One streamed ``/api/generate`` chunk as a ``text_completion`` chunk (``created`` is now)."""
    return {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "choices": [
            {"text": native.get("response", ""), "index": 0, "finish_reason": _reason(native, False)}
        ],
        "model": native.get("model", ""),
        "system_fingerprint": FINGERPRINT,
    }


def owner(name: str) -> str:
    """``owned_by``: the namespace of a model name (``library`` by default)."""
    try:
        return parse_name(name).namespace
    except InvalidName:
        return DEFAULT_NAMESPACE


def model_list(tags: Obj) -> Obj:
    """``/api/tags`` → ``{"object": "list", "data": [...]}`` (an empty list, never null)."""
    data = []
    for entry in tags.get("models") or []:
        ident = entry.get("model") or entry.get("name") or ""
        data.append(
            {
                "id": ident,
                "object": "model",
                "created": unix_seconds(entry.get("modified_at")),
                "owned_by": owner(ident),
            }
        )
    return {"object": "list", "data": data}


def model_object(name: str, show: Obj) -> Obj:
    """``/api/show`` → one ``model`` object named as the request named it."""
    return {
        "id": name,
        "object": "model",
        "created": unix_seconds(show.get("modified_at")),
        "owned_by": owner(name),
    }


def floats_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (OpenAI's ``encoding_format: base64``)."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def embedding_list(model: str, native: Obj, encoding: str) -> Obj:
    """``/api/embed`` → the ``list`` of ``embedding`` objects."""
    data = [
        {
            "object": "embedding",
            "embedding": floats_base64(vector) if encoding == "base64" else vector,
            "index": index,
        }
        for index, vector in enumerate(native.get("embeddings") or [])
    ]
    tokens = int(native.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
