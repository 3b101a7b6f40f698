"""``POST /v1/messages``: Anthropic's Messages API onto ``/api/chat`` (reference §5.7).

What Claude Code and the Anthropic SDKs send with ``ANTHROPIC_BASE_URL`` pointing here:
:func:`chat_request` converts the request (system blocks, text/image/tool_use/tool_result/
thinking content blocks, tools with ``input_schema``, ``thinking``, ``output_config.effort``),
:func:`message_object` writes a whole answer, :class:`MessagesStream` the streamed events
(``message_start``, ``content_block_start``/``_delta``/``_stop``, ``message_delta``,
``message_stop``). Errors have Anthropic's shape. As in Ollama, a ``thinking`` request to a
model that cannot think is relaxed to the model's default instead of refused. Built-in
``web_search_*`` tools need Ollama's cloud: they are refused.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request

from daemon.openai import shapes
from daemon.openai.convert import Fields, RequestError
from daemon.openai.native import read_native

Obj = dict[str, Any]
WEB_SEARCH_UNSUPPORTED = "the web_search tool is not supported by this server"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_EFFORTS = ("high", "medium", "low", "max")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def error_object(status: int, message: str) -> Obj:
    """Anthropic's error body."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": new_id("req")}


def _image(source: Any, where: str = "") -> str:
    if not isinstance(source, dict):
        raise RequestError(f"invalid {where}image source")
    if source.get("type") != "base64":
        raise RequestError(
            f"invalid image source type: {source.get('type') or ''}. Only base64 images are supported."
        )
    data = source.get("data")
    try:
        raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"invalid base64 image data: {exc}") from None
    return base64.b64encode(raw).decode()


def _tool_result(content: Any) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "image":
            images.append(_image(block.get("source"), "tool_result "))
    return "".join(text), images


def convert_message(message: Any) -> list[Obj]:
    """One Anthropic message → native messages: tool results become ``tool`` messages (before
    the user's own text), everything else joins one message."""
    if not isinstance(message, dict):
        raise RequestError("messages must be objects")
    role = str(message.get("role") or "").lower()
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    text: list[str] = []
    images: list[str] = []
    calls: list[Obj] = []
    thinking = ""
    results: list[Obj] = []
    for block in blocks if isinstance(blocks, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(block["text"] if isinstance(block.get("text"), str) else "")
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind == "tool_use":
            if not block.get("id"):
                raise RequestError("tool_use block missing required 'id' field")
            if not block.get("name"):
                raise RequestError("tool_use block missing required 'name' field")
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            calls.append({"id": block["id"], "function": {"name": block["name"], "arguments": arguments}})
        elif kind == "tool_result":
            result_text, result_images = _tool_result(block.get("content"))
            result: Obj = {"role": "tool", "content": result_text}
            if result_images:
                result["images"] = result_images
            if block.get("tool_use_id"):
                result["tool_call_id"] = block["tool_use_id"]
            results.append(result)
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
    out: list[Obj] = list(results) if role == "user" else []
    if text or images or calls or thinking:
        native: Obj = {"role": role, "content": "".join(text)}
        for key, value in (("images", images), ("tool_calls", calls), ("thinking", thinking)):
            if value:
                native[key] = value
        out.append(native)
    if role != "user":
        out.extend(results)
    return out


def _system(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            block["text"]
            for block in value
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return ""


def _tools(tools: list[Any]) -> list[Obj]:
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise RequestError("tools must be objects")
        if str(tool.get("type") or "").startswith("web_search"):
            raise RequestError(WEB_SEARCH_UNSUPPORTED)
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise RequestError(f'invalid input_schema for tool "{tool.get("name") or ""}"')
        function: Obj = {"name": tool.get("name") or "", "description": tool.get("description") or ""}
        if schema is not None:
            function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def chat_request(body: Mapping[str, Any]) -> Obj:
    """``/v1/messages`` → ``/api/chat`` (Ollama's ``FromMessagesRequest`` and its checks)."""
    fields = Fields(body, "MessagesRequest")
    model = fields.string("model")
    if not model:
        raise RequestError("model is required")
    max_tokens = fields.integer("max_tokens")
    if not max_tokens or max_tokens <= 0:
        raise RequestError("max_tokens is required and must be positive")
    messages = fields.array("messages", "[]anthropic.MessageParam")
    if not messages:
        raise RequestError("messages is required")
    native_messages: list[Obj] = []
    system = _system(body.get("system"))
    if system:
        native_messages.append({"role": "system", "content": system})
    for message in messages:
        native_messages.extend(convert_message(message))
    options: Obj = {"num_predict": max_tokens}
    for key, value in (
        ("temperature", fields.number("temperature")),
        ("top_p", fields.number("top_p")),
        ("top_k", fields.integer("top_k")),
    ):
        if value is not None:
            options[key] = value
    stops = fields.array("stop_sequences", "[]string")
    if stops:
        options["stop"] = [stop for stop in stops if isinstance(stop, str)]
    native: Obj = {
        "model": model,
        "messages": native_messages,
        "options": options,
        "stream": fields.boolean("stream"),
    }
    tools = _tools(fields.array("tools", "[]anthropic.Tool") or [])
    if tools:
        native["tools"] = tools
    think = _think(fields)
    if think is not None:
        native["think"] = think
    if body.get("keep_alive") is not None:
        native["keep_alive"] = body["keep_alive"]
    return native


def _think(fields: Fields) -> bool | str | None:
    thinking = fields.obj("thinking", "anthropic.ThinkingConfig") or {}
    if thinking.get("type") == "enabled":
        return True
    if thinking.get("type") == "disabled":
        return False
    config = fields.obj("output_config", "anthropic.OutputConfig") or {}
    effort = config.get("effort")
    effort = effort.strip().lower() if isinstance(effort, str) else ""
    effort = "high" if effort == "xhigh" else effort
    return effort if effort in _EFFORTS else None


async def relax_thinking(request: Request, native: Obj) -> None:
    """Drop ``think`` for a model without the ``thinking`` capability (Ollama relaxes it for
    Anthropic clients, which ask for thinking whatever the model)."""
    if not native.get("think"):
        return
    status, body = await read_native(request, "POST", "/api/show", {"model": native["model"]})
    if status != 200:
        return  # the chat request answers the same error
    capabilities = orjson.loads(body).get("capabilities") or []
    if "thinking" not in capabilities:
        del native["think"]


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """About four characters a token, for ``message_start`` before the real count is known."""
    size = len(orjson.dumps(body.get("system"))) if body.get("system") else 0
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            size += len(str(message.get("role") or "")) + len(orjson.dumps(message.get("content")))
    return max(size // 4, 1)


def stop_reason(reason: str, has_calls: bool) -> str | None:
    if has_calls:
        return "tool_use"
    if reason == "stop":
        return "end_turn"
    if reason == "length":
        return "max_tokens"
    return "stop_sequence" if reason else None


def message_object(message_id: str, native: Obj) -> Obj:
    """A whole native answer as an Anthropic ``message``."""
    message = native.get("message") or {}
    content: list[Obj] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"]})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": function.get("arguments") or {},
            }
        )
    out: Obj = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": native.get("model", ""),
        "content": content,
    }
    reason = stop_reason(native.get("done_reason") or "", bool(calls))
    if reason:
        out["stop_reason"] = reason
    out["usage"] = {
        "input_tokens": int(native.get("prompt_eval_count") or 0),
        "output_tokens": int(native.get("eval_count") or 0),
    }
    return out


def event(kind: str, data: Obj) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessagesStream:
    """Native ``/api/chat`` chunks → Anthropic's streamed events."""

    def __init__(self, message_id: str, model: str, estimated_input_tokens: int) -> None:
        self.message_id = message_id
        self.model = model
        self.estimated = estimated_input_tokens
        self.finished = False
        self.started = False
        self.index = 0
        self.thinking_open = False
        self.thinking_done = False
        self.text_open = False
        self.calls_sent: set[str] = set()

    def _start(self, block: Obj) -> bytes:
        return event("content_block_start", {"index": self.index, "content_block": block})

    def _delta(self, delta: Obj) -> bytes:
        return event("content_block_delta", {"index": self.index, "delta": delta})

    def _stop_block(self) -> bytes:
        out = event("content_block_stop", {"index": self.index})
        self.index += 1
        return out

    def feed(self, native: Obj) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            usage = {
                "input_tokens": int(native.get("prompt_eval_count") or self.estimated),
                "output_tokens": 0,
            }
            start = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model}
            out.append(event("message_start", {"message": {**start, "content": [], "usage": usage}}))
        if "error" in native:
            self.finished = True
            out.append(event("error", {"error": {"type": "api_error", "message": str(native["error"])}}))
            return b"".join(out)
        message = native.get("message") or {}
        if message.get("thinking") and not self.thinking_done:
            if self.text_open:
                out.append(self._stop_block())
                self.text_open = False
            if not self.thinking_open:
                self.thinking_open = True
                out.append(self._start({"type": "thinking", "thinking": ""}))
            out.append(self._delta({"type": "thinking_delta", "thinking": message["thinking"]}))
        if message.get("content"):
            out.extend(self._close_thinking())
            if not self.text_open:
                self.text_open = True
                out.append(self._start({"type": "text", "text": ""}))
            out.append(self._delta({"type": "text_delta", "text": message["content"]}))
        for call in shapes.tool_calls(message.get("tool_calls")):
            if call["id"] in self.calls_sent:
                continue
            out.extend(self._close_thinking())
            if self.text_open:
                out.append(self._stop_block())
                self.text_open = False
            out.append(
                self._start(
                    {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}
                )
            )
            out.append(
                self._delta({"type": "input_json_delta", "partial_json": call["function"]["arguments"]})
            )
            out.append(self._stop_block())
            self.calls_sent.add(call["id"])
        if native.get("done"):
            out.extend(self._finish(native))
        return b"".join(out)

    def _close_thinking(self) -> list[bytes]:
        if not self.thinking_open or self.thinking_done:
            return []
        self.thinking_done = True
        return [self._stop_block()]

    def _finish(self, native: Obj) -> list[bytes]:
        self.finished = True
        out = []
        if self.text_open or (self.thinking_open and not self.thinking_done):
            out.append(event("content_block_stop", {"index": self.index}))
        reason = stop_reason(native.get("done_reason") or "", bool(self.calls_sent))
        usage = {
            "input_tokens": int(native.get("prompt_eval_count") or 0),
            "output_tokens": int(native.get("eval_count") or 0),
        }
        delta = {"stop_reason": reason} if reason else {}
        out.append(event("message_delta", {"delta": delta, "usage": usage}))
        out.append(event("message_stop", {}))
        return out
