"""Request bodies: decoding and validation (reference §1.3, §2, §13.1).

The body is decoded whatever the Content-Type says. Unknown fields are ignored; ``""`` and
``null`` mean "not given". A field of the wrong JSON type is a 400 worded like Go's decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request

from daemon.durations import go_quote, parse_keep_alive
from daemon.errors import ApiError
from worker.protocol import ChatMessage

THINK_LEVELS = ("high", "medium", "low", "max")
ThinkValue = bool | str | None


def json_kind(value: Any) -> str:
    """How Go's decoder names a JSON value in an unmarshal error."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {orjson.dumps(value).decode()}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


async def read_json(request: Request, struct: str) -> Fields:
    """The body as a JSON object; ``null`` decodes to ``{}`` like Go's zero value."""
    body = await request.body()
    if not body.strip():
        raise ApiError("missing request body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(f"invalid JSON in request body: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ApiError(
            f"json: cannot unmarshal {json_kind(data).split()[0]} into Go value of type api.{struct}"
        )
    return Fields(data, struct)


class Fields:
    """Typed access to the fields of a decoded body; a type mismatch raises a 400 :class:`ApiError`."""

    def __init__(self, data: Mapping[str, Any], struct: str) -> None:
        self.data = data
        self.struct = struct

    def mismatch(self, key: str, value: Any, go_type: str) -> ApiError:
        where = f"Go struct field {self.struct}.{key}"
        return ApiError(f"json: cannot unmarshal {json_kind(value)} into {where} of type {go_type}")

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def string(self, key: str) -> str:
        value = self.data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.mismatch(key, value, "string")
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.mismatch(key, value, "bool")
        return value

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.mismatch(key, value, "int")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.mismatch(key, value, "[]int")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.mismatch(key, item, "int")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.mismatch(key, value, "[]string")
        for item in value:
            if not isinstance(item, str):
                raise self.mismatch(key, item, "string")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.mismatch(key, value, "[]any")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.mismatch(key, value, "map[string]interface {}")
        return value

    def model_name(self) -> str:
        """``model``, or the deprecated ``name`` when ``model`` is empty (Go's ``cmp.Or``)."""
        return self.string("model") or self.string("name")

    def keep_alive(self) -> float | None:
        try:
            return parse_keep_alive(self.data.get("keep_alive"))
        except ValueError as exc:
            raise ApiError(str(exc)) from None

    def think(self) -> ThinkValue:
        value = self.data.get("think")
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value not in THINK_LEVELS:
                raise ApiError(
                    f"invalid think value: {go_quote(value)} "
                    '(must be "high", "medium", "low", "max", true, or false)'
                )
            return value
        raise ApiError('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')

    def messages(self, key: str = "messages") -> list[Message]:
        return [Message.parse(item, self.struct, index) for index, item in enumerate(self.array(key))]


@dataclass
class Message:
    """One chat message (reference §2.1); the role is lower-cased."""

    role: str
    content: str = ""
    images: list[str] = field(default_factory=list)
    thinking: str = ""
    tool_calls: list[Any] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""

    @classmethod
    def parse(cls, value: Any, struct: str, index: int) -> Message:
        if not isinstance(value, dict):
            raise ApiError(f"messages[{index}] must be an object with string role and content")
        fields = Fields(value, f"{struct}.messages[{index}]")
        role = value.get("role")
        if not isinstance(role, str) or not role:
            raise ApiError(f"messages[{index}].role must be a non-empty string")
        content = value.get("content")
        if content is not None and not isinstance(content, str):
            raise ApiError(f"messages[{index}].content must be a string")
        return cls(
            role=role.lower(),
            content=content or "",
            images=fields.string_list("images"),
            thinking=fields.string("thinking"),
            tool_calls=fields.array("tool_calls"),
            tool_name=fields.string("tool_name"),
            tool_call_id=fields.string("tool_call_id"),
        )

    def chat(self) -> ChatMessage:
        message = ChatMessage(role=self.role, content=self.content)
        if self.thinking:
            message["thinking"] = self.thinking
        if self.tool_calls:
            message["tool_calls"] = [call for call in self.tool_calls if isinstance(call, dict)]
        if self.tool_name:
            message["tool_name"] = self.tool_name
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass
class InferenceBody:
    """What ``/api/generate`` and ``/api/chat`` share."""

    model: str
    stream: bool
    format: Any
    keep_alive: float | None
    options: dict[str, Any] | None
    think: ThinkValue
    logprobs: bool
    top_logprobs: int
    truncate: bool
    shift: bool
    debug_render_only: bool  # ``_debug_render_only``: answer the rendered prompt, generate nothing


def _inference_fields(fields: Fields) -> dict[str, Any]:
    return {
        "model": fields.string("model"),
        "stream": fields.boolean("stream", default=True),
        "format": fields.raw("format"),
        "keep_alive": fields.keep_alive(),
        "options": fields.mapping("options"),
        "think": fields.think(),
        "logprobs": fields.boolean("logprobs"),
        "top_logprobs": fields.integer("top_logprobs"),
        "truncate": fields.boolean("truncate", default=True),
        "shift": fields.boolean("shift", default=True),
        "debug_render_only": fields.boolean("_debug_render_only"),
    }


@dataclass
class GenerateBody(InferenceBody):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] = field(default_factory=list)
    raw: bool = False
    images: list[str] = field(default_factory=list)

    @classmethod
    async def read(cls, request: Request) -> GenerateBody:
        fields = await read_json(request, "GenerateRequest")
        return cls(
            **_inference_fields(fields),
            prompt=fields.string("prompt"),
            suffix=fields.string("suffix"),
            system=fields.string("system"),
            template=fields.string("template"),
            context=fields.int_list("context"),
            raw=fields.boolean("raw"),
            images=fields.string_list("images"),
        )


@dataclass
class ChatBody(InferenceBody):
    messages: list[Message] = field(default_factory=list)
    tools: list[Any] = field(default_factory=list)

    @classmethod
    async def read(cls, request: Request) -> ChatBody:
        fields = await read_json(request, "ChatRequest")
        return cls(**_inference_fields(fields), messages=fields.messages(), tools=fields.array("tools"))


@dataclass
class ShowBody:
    model: str
    verbose: bool
    system: str
    options: dict[str, Any] | None

    @classmethod
    async def read(cls, request: Request) -> ShowBody:
        fields = await read_json(request, "ShowRequest")
        return cls(
            model=fields.model_name(),
            verbose=fields.boolean("verbose"),
            system=fields.string("system"),
            options=fields.mapping("options"),
        )


def validate_top_logprobs(value: int) -> None:
    if not 0 <= value <= 20:
        raise ApiError("top_logprobs must be between 0 and 20")
