"""OpenAI requests → native Ollama request bodies (reference §5.1–§5.3).

Pure functions from a decoded JSON body to the body of ``/api/chat``, ``/api/generate`` or
``/api/embed``, with Ollama's defaults (``temperature`` and ``top_p`` 1.0 when absent) and
its error texts. A problem with the request raises :class:`RequestError` (a 400).

Beyond Ollama: ``max_completion_tokens`` (OpenAI's newer name for ``max_tokens``) also sets
``num_predict``, and a ``keep_alive`` field is passed through to the native request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from daemon.schemas import json_kind

Body = dict[str, Any]

# reasoning_effort → think (OpenAI's scale clamped onto Ollama's levels)
_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))
_BLANK_IMAGE_PREFIX = "data:;base64,"
IMAGE_URLS_UNSUPPORTED = "image URLs are not currently supported, please use base64 encoded data instead"


class RequestError(Exception):
    """An OpenAI request that cannot be translated; answered with ``status`` (400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def go_type(value: Any) -> str:
    """The Go type name (``%T``) of a decoded JSON value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def decode_body(raw: bytes) -> Mapping[str, Any]:
    """The request body as a JSON object (Go's binding errors for anything else)."""
    if not raw.strip():
        raise RequestError("EOF")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"invalid JSON in request body: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RequestError(f"json: cannot unmarshal {json_kind(data)} into Go value of type openai.Request")
    return data


class Fields:
    """Typed reads of one request object; a wrong JSON type is a 400 worded like Go's decoder."""

    def __init__(self, data: Mapping[str, Any], struct: str) -> None:
        self.data = data
        self.struct = struct

    def _mismatch(self, key: str, value: Any, go: str) -> RequestError:
        where = f"Go struct field {self.struct}.{key}"
        return RequestError(f"json: cannot unmarshal {json_kind(value)} into {where} of type {go}")

    def string(self, key: str) -> str:
        value = self.data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._mismatch(key, value, "string")
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._mismatch(key, value, "bool")
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise self._mismatch(key, value, "int")
        return int(value)

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._mismatch(key, value, "float64")
        return value

    def obj(self, key: str, go: str) -> Mapping[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._mismatch(key, value, go)
        return value

    def array(self, key: str, go: str) -> list[Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._mismatch(key, value, go)
        return value


def include_usage(body: Mapping[str, Any]) -> bool:
    """``stream_options.include_usage``."""
    options = Fields(body, "ChatCompletionRequest").obj("stream_options", "openai.StreamOptions")
    return bool(options and options.get("include_usage") is True)


def _stops(value: Any, strict: bool) -> list[str] | None:
    """``stop``: a string or a list of strings; non-strings are dropped (chat) or refused."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    stops = []
    for item in value:
        if isinstance(item, str):
            stops.append(item)
        elif strict:
            raise RequestError(f"invalid type for 'stop' field: {go_type(item)}")
    return stops


def _common_options(fields: Fields) -> dict[str, Any]:
    options: dict[str, Any] = {}
    stops = _stops(fields.data.get("stop"), strict=fields.struct == "CompletionRequest")
    if stops is not None:
        options["stop"] = stops
    max_tokens = fields.integer("max_tokens")
    if max_tokens is None:
        max_tokens = fields.integer("max_completion_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    temperature = fields.number("temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    seed = fields.integer("seed")
    if seed is not None:
        options["seed"] = seed
    return options


def _passthrough(body: Mapping[str, Any], native: Body) -> Body:
    if body.get("keep_alive") is not None:
        native["keep_alive"] = body["keep_alive"]
    return native


def think_from_effort(effort: str) -> bool | str | None:
    """``reasoning_effort`` as a native ``think`` value; ``""`` leaves the model's default."""
    if not effort:
        return None
    if effort not in _EFFORT_TO_THINK:
        raise RequestError(
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")'
        )
    return _EFFORT_TO_THINK[effort]


def _format(fields: Fields) -> Any:
    response_format = fields.obj("response_format", "openai.ResponseFormat")
    if not response_format:
        return None
    kind = response_format.get("type")
    kind = kind.strip().lower() if isinstance(kind, str) else ""
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        return schema.get("schema") if isinstance(schema, dict) else None
    return None


def chat_request(body: Mapping[str, Any]) -> Body:
    """``/v1/chat/completions`` → ``/api/chat`` (Ollama's ``FromChatRequest``)."""
    fields = Fields(body, "ChatCompletionRequest")
    model = fields.string("model")
    messages = fields.array("messages", "[]openai.Message")
    if not messages:
        raise RequestError("[] is too short - 'messages'")
    options = _common_options(fields)
    for key in ("frequency_penalty", "presence_penalty"):
        value = fields.number(key)
        if value is not None:
            options[key] = value
    top_p = fields.number("top_p")
    options["top_p"] = 1.0 if top_p is None else top_p

    reasoning = fields.obj("reasoning", "openai.Reasoning")
    effort = reasoning.get("effort") if reasoning is not None else fields.string("reasoning_effort")
    native: Body = {
        "model": model,
        "messages": chat_messages(messages),
        "options": options,
        "stream": fields.boolean("stream"),
    }
    response_format = _format(fields)
    if response_format is not None:
        native["format"] = response_format
    tools = fields.array("tools", "[]api.Tool")
    if tools:
        native["tools"] = tools
    think = think_from_effort(effort if isinstance(effort, str) else "")
    if think is not None:
        native["think"] = think
    if fields.boolean("logprobs"):
        native["logprobs"] = True
    top_logprobs = fields.integer("top_logprobs")
    if top_logprobs:
        native["top_logprobs"] = top_logprobs
    if fields.boolean("_debug_render_only"):
        native["_debug_render_only"] = True
    return _passthrough(body, native)


def chat_messages(messages: list[Any]) -> list[Body]:
    """OpenAI messages → native ones; each content part becomes a message of its own."""
    out: list[Body] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(
                f"json: cannot unmarshal {json_kind(message)} into Go struct field "
                f"ChatCompletionRequest.messages of type openai.Message"
            )
        fields = Fields(message, f"ChatCompletionRequest.messages[{index}]")
        role = fields.string("role")
        reasoning = fields.string("reasoning")
        call_id = fields.string("tool_call_id")
        raw_calls = message.get("tool_calls")
        tool_name = ""
        if role.lower() == "tool":
            tool_name = fields.string("name") or (call_id and _name_for_call(messages, call_id))
        content = message.get("content")
        if isinstance(content, str):
            native: Body = {"role": role, "content": content}
            out.append(_with_extras(native, reasoning, tool_calls(raw_calls), tool_name, call_id))
        elif isinstance(content, list):
            start = len(out)
            out.extend(_content_part(role, part) for part in content)
            if len(out) > start and raw_calls:
                _with_extras(out[-1], reasoning, tool_calls(raw_calls), tool_name, call_id)
        else:
            if raw_calls is None:  # content is optional only alongside tool calls
                raise RequestError(f"invalid message content type: {go_type(content)}")
            native = {"role": role, "content": ""}
            out.append(_with_extras(native, reasoning, tool_calls(raw_calls), "", call_id))
    return out


def _with_extras(native: Body, thinking: str, calls: list[Body], tool_name: str, call_id: str) -> Body:
    for key, value in (
        ("thinking", thinking),
        ("tool_calls", calls),
        ("tool_name", tool_name),
        ("tool_call_id", call_id),
    ):
        if value:
            native[key] = value
    return native


def _name_for_call(messages: list[Any], call_id: str) -> str:
    """The function name of the latest assistant tool call with this id."""
    for message in reversed(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict) and call.get("id") == call_id:
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                return name if isinstance(name, str) else ""
    return ""


def _content_part(role: str, part: Any) -> Body:
    if not isinstance(part, dict):
        raise RequestError("invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError("invalid message format")
        return {"role": role, "content": text}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise RequestError("invalid message format")
        return {"role": role, "content": "", "images": [decode_image_url(url)]}
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise RequestError("invalid input_audio format")
        data = audio.get("data")
        if not isinstance(data, str):
            raise RequestError("invalid input_audio format: missing data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(f"invalid input_audio base64 data: {exc}") from None
        return {"role": role, "content": "", "images": [base64.b64encode(raw).decode()]}
    raise RequestError("invalid message format")


def decode_image_url(url: str) -> str:
    """A ``data:`` URI → the plain base64 the native API takes; http(s) URLs are refused."""
    if url.startswith(("http://", "https://")):
        raise RequestError(IMAGE_URLS_UNSUPPORTED)
    if url.startswith(_BLANK_IMAGE_PREFIX):
        data = url[len(_BLANK_IMAGE_PREFIX) :]
    else:
        prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise RequestError("invalid image input")
        data = url[len(prefix) :]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("invalid image input") from None
    return base64.b64encode(raw).decode()


def tool_calls(calls: Any) -> list[Body]:
    """OpenAI tool calls (``arguments`` a JSON string) → native ones (an object)."""
    out: list[Body] = []
    for call in calls if isinstance(calls, list) else []:
        call = call if isinstance(call, dict) else {}
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise RequestError("invalid tool call arguments")
        native: Body = {"function": {"name": function.get("name") or "", "arguments": parsed}}
        if isinstance(call.get("id"), str) and call["id"]:
            native = {"id": call["id"], **native}
        out.append(native)
    return out


def completion_request(body: Mapping[str, Any]) -> Body:
    """``/v1/completions`` → ``/api/generate`` (Ollama's ``FromCompleteRequest``)."""
    fields = Fields(body, "CompletionRequest")
    model = fields.string("model")
    prompt = fields.string("prompt")
    options = _common_options(fields)
    options["frequency_penalty"] = fields.number("frequency_penalty") or 0.0
    options["presence_penalty"] = fields.number("presence_penalty") or 0.0
    options["top_p"] = fields.number("top_p") or 1.0  # 0 counts as absent
    native: Body = {
        "model": model,
        "prompt": prompt,
        "options": options,
        "stream": fields.boolean("stream"),
    }
    suffix = fields.string("suffix")
    if suffix:
        native["suffix"] = suffix
    logprobs = fields.integer("logprobs")
    if logprobs is not None and logprobs > 0:
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    if fields.boolean("_debug_render_only"):
        native["_debug_render_only"] = True
    return _passthrough(body, native)


def embed_request(body: Mapping[str, Any]) -> Body:
    """``/v1/embeddings`` → ``/api/embed``."""
    fields = Fields(body, "EmbedRequest")
    model = fields.string("model")
    encoding = fields.string("encoding_format")
    if encoding and encoding.lower() not in ("float", "base64"):
        raise RequestError(
            f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64']."
        )
    text = body.get("input")
    if text == "":
        text = [""]
    if text is None or text == []:
        raise RequestError("invalid input")
    native: Body = {"model": model, "input": text}
    dimensions = fields.integer("dimensions")
    if dimensions:
        native["dimensions"] = dimensions
    return _passthrough(body, native)


def encoding_format(body: Mapping[str, Any]) -> str:
    value = body.get("encoding_format")
    return value.lower() if isinstance(value, str) else "float"
