"""``POST /v1/responses``: OpenAI's stateless Responses API onto ``/api/chat`` (reference §5.5).

:func:`chat_request` turns the request's ``input`` items (messages, function calls and their
outputs, reasoning) into native messages; :func:`response_object` writes a whole native
answer as a ``response``; :class:`ResponsesStream` turns native chunks into the typed events
(``event: <type>`` frames, an increasing ``sequence_number``, no ``[DONE]``).
Built-in ``web_search`` needs Ollama's cloud: it is refused.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import orjson

from daemon.openai import shapes
from daemon.openai.convert import Fields, RequestError, decode_image_url, think_from_effort

Obj = dict[str, Any]
WEB_SEARCH_UNSUPPORTED = "the web_search tool is not supported by this server"


def response_ids() -> tuple[str, str]:
    """A response id and the id of its message item."""
    return f"resp_{random.randrange(999999)}", f"msg_{random.randrange(999999)}"


def _content(parts: list[Any], where: str) -> tuple[str, list[str]]:
    """Text and images of content parts (``input_text``, ``output_text``, ``input_image``)."""
    text, images = [], []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            value = part.get("text")
            text.append(value if isinstance(value, str) else "")
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url:
                images.append(decode_image_url(url))
        elif kind == "input_file":
            raise RequestError("file inputs are not currently supported")
        else:
            raise RequestError(f"{where}: content[{index}]: unknown content type: {kind or ''}")
    return "".join(text), images


def _parts(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "input_text", "text": value}]
    if isinstance(value, list):
        return value
    raise RequestError("content must be a string or array")


def _message(role: str, content: str, images: list[str]) -> Obj:
    message: Obj = {"role": role, "content": content}
    if images:
        message["images"] = images
    return message


def input_messages(items: list[Any]) -> list[Obj]:
    """The ``input`` items as native messages (Ollama's ``FromResponsesRequest``)."""
    messages: list[Obj] = []
    pending_thinking = ""
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where}: input item missing required 'type' field")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            encrypted = item.get("encrypted_content")
            pending_thinking = encrypted if isinstance(encrypted, str) else ""
        elif kind == "message":
            role = item.get("role") if isinstance(item.get("role"), str) else ""
            text, images = _content(_parts(item.get("content")), where)
            message = _message(str(role), text, images)
            if role == "assistant" and pending_thinking:
                message["thinking"], pending_thinking = pending_thinking, ""
            if role == "assistant" and _merge_into_call(messages, message, items, index):
                continue
            messages.append(message)
        elif kind == "function_call":
            call = _function_call(item)
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
            if pending_thinking:
                last["thinking"], pending_thinking = pending_thinking, ""
        elif kind == "function_call_output":
            output = item.get("output")
            text, images = (output, []) if isinstance(output, str) else _content(_parts(output), where)
            tool = _message("tool", text, images)
            if isinstance(item.get("call_id"), str) and item["call_id"]:
                tool["tool_call_id"] = item["call_id"]
            messages.append(tool)
        elif kind == "web_search_call":
            continue
        elif not kind:
            raise RequestError(f"{where}: input item missing required 'type' field")
        else:
            raise RequestError(f'{where}: unknown input item type: "{kind}"')
    if pending_thinking:
        messages.append({"role": "assistant", "content": "", "thinking": pending_thinking})
    return messages


def _merge_into_call(messages: list[Obj], message: Obj, items: list[Any], index: int) -> bool:
    """An assistant message between a function call and its output joins the call's message."""
    following = items[index + 1] if index + 1 < len(items) else None
    if not (isinstance(following, dict) and following.get("type") == "function_call_output"):
        return False
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant":
        return False
    if not any(call.get("id") == following.get("call_id") for call in last.get("tool_calls", [])):
        return False
    if last["content"] and message["content"]:
        last["content"] += "\n"
    last["content"] += message["content"]
    if message.get("images"):
        last.setdefault("images", []).extend(message["images"])
    if message.get("thinking"):
        last["thinking"] = message["thinking"]
    return True


def _function_call(item: Mapping[str, Any]) -> Obj:
    arguments = item.get("arguments")
    parsed: Any = {}
    if isinstance(arguments, str) and arguments:
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"failed to parse function call arguments: {exc}") from None
    call: Obj = {"function": {"name": item.get("name") or "", "arguments": parsed}}
    if isinstance(item.get("call_id"), str) and item["call_id"]:
        call = {"id": item["call_id"], **call}
    return call


def _tools(tools: list[Any]) -> list[Obj]:
    out: list[Obj] = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise RequestError("tools must be objects")
        if tool.get("type") == "web_search":
            raise RequestError(WEB_SEARCH_UNSUPPORTED)
        if tool.get("type") == "namespace":
            prefix = f"{tool['name']}." if tool.get("name") else ""
            for member in _tools(tool.get("tools") or []):
                name = member["function"]["name"]
                if prefix and not name.startswith(prefix):
                    member["function"]["name"] = prefix + name
                out.append(member)
            continue
        function: Obj = {"name": tool.get("name") or "", "description": tool.get("description") or ""}
        if isinstance(tool.get("parameters"), dict):
            function["parameters"] = tool["parameters"]
        out.append({"type": tool.get("type") or "function", "function": function})
    return out


def chat_request(body: Mapping[str, Any]) -> Obj:
    """``/v1/responses`` → ``/api/chat``."""
    fields = Fields(body, "ResponsesRequest")
    messages: list[Obj] = []
    instructions = fields.string("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        if given:
            messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages.extend(input_messages(given))
    elif given is not None:
        raise RequestError("input must be a string or array")
    options: Obj = {}
    temperature = fields.number("temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    top_p = fields.number("top_p")
    if top_p is not None:
        options["top_p"] = top_p
    max_tokens = fields.integer("max_output_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    native: Obj = {
        "model": fields.string("model"),
        "messages": messages,
        "options": options,
        "stream": fields.boolean("stream"),
    }
    tools = _tools(fields.array("tools", "[]openai.ResponsesTool") or [])
    if tools:
        native["tools"] = tools
    text = fields.obj("text", "openai.ResponsesText") or {}
    text_format = _obj(text.get("format"))
    if text_format.get("type") == "json_schema" and text_format.get("schema") is not None:
        native["format"] = text_format["schema"]
    reasoning = fields.obj("reasoning", "openai.ResponsesReasoning") or {}
    effort = reasoning.get("effort")
    think = think_from_effort(effort if isinstance(effort, str) else "")
    if think is not None:
        native["think"] = think
    if body.get("keep_alive") is not None:
        native["keep_alive"] = body["keep_alive"]
    return native


class Request:
    """What the answer echoes from the request."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.model = body.get("model") if isinstance(body.get("model"), str) else ""
        self.body = body

    def echo(self, response_id: str, status: str, output: list[Obj], usage: Obj | None, created: int) -> Obj:
        body = self.body
        text_format = _obj(_obj(body.get("text")).get("format")) or {"type": "text"}
        reasoning = _obj(body.get("reasoning"))
        effort, summary = reasoning.get("effort"), reasoning.get("summary")
        return {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "completed_at": None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": body.get("instructions") or None,
            "output": output,
            "error": None,
            "tools": body.get("tools") or [],
            "tool_choice": "auto",
            "truncation": body.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": text_format},
            "top_p": _number(body.get("top_p"), 1.0),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": _number(body.get("temperature"), 1.0),
            "reasoning": {"effort": effort or None, "summary": summary or None}
            if effort or summary
            else None,
            "usage": usage,
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(body.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }


def _obj(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _number(value: Any, default: float) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


def usage(native: Obj) -> Obj:
    prompt = int(native.get("prompt_eval_count") or 0)
    output = int(native.get("eval_count") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _text_part(text: str) -> Obj:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> Obj:
    content = [_text_part(text)] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _reasoning_item(item_id: str, thinking: str) -> Obj:
    summary = [{"type": "summary_text", "text": thinking}]
    return {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": thinking}


def _call_item(item_id: str, call: Obj, status: str = "completed") -> Obj:
    function = call["function"]
    arguments = function["arguments"] if status == "completed" else ""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call["id"],
        "name": function["name"],
        "arguments": arguments,
    }


def response_object(request: Request, response_id: str, item_id: str, native: Obj) -> Obj:
    """A whole native answer as a ``response`` (Ollama's ``ToResponse``)."""
    message = native.get("message") or {}
    output: list[Obj] = []
    if message.get("thinking"):
        output.append(_reasoning_item(f"rs_{response_id}", message["thinking"]))
    calls = shapes.tool_calls(message.get("tool_calls"))
    for index, call in enumerate(calls):
        output.append(_call_item(f"fc_{response_id}_{index}", call))
    if not calls:
        output.append(_message_item(item_id, message.get("content", "")))
    created = shapes.unix_seconds(native.get("created_at"))
    response = request.echo(response_id, "completed", output, usage(native), created)
    response["completed_at"] = int(time.time())
    return response


class ResponsesStream:
    """Native ``/api/chat`` chunks → the Responses API's streamed events."""

    def __init__(self, request: Request, response_id: str, item_id: str) -> None:
        self.request = request
        self.response_id = response_id
        self.item_id = item_id
        self.finished = False
        self.sequence = 0
        self.output_index = 0
        self.started = False
        self.items: list[Obj] = []  # completed output items
        # The text streamed so far, in pieces joined at the end (appending to one string
        # would copy all of it for every token).
        self.thinking: list[str] = []
        self.reasoning_id = ""
        self.text: list[str] = []
        self.text_started = False
        self.calls_sent = False

    def _event(self, kind: str, data: Obj) -> bytes:
        data = {"type": kind, **data, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: str, output: list[Obj], usage: Obj | None) -> Obj:
        return self.request.echo(self.response_id, status, output, usage, int(time.time()))

    def feed(self, native: Obj) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            for kind in ("response.created", "response.in_progress"):
                out.append(self._event(kind, {"response": self._response("in_progress", [], None)}))
        if "error" in native:
            self.finished = True
            out.append(self._event("error", {"code": None, "message": str(native["error"]), "param": None}))
            return b"".join(out)
        message = native.get("message") or {}
        if message.get("thinking"):
            out.extend(self._thinking(message["thinking"]))
        calls = shapes.tool_calls(message.get("tool_calls"))
        if calls:
            out.extend(self._finish_reasoning())
            out.extend(self._calls(calls))
            self.calls_sent = True
        elif not self.calls_sent and message.get("content"):
            out.extend(self._content(message["content"]))
        if native.get("done"):
            out.extend(self._complete(native))
        return b"".join(out)

    def _thinking(self, thinking: str) -> list[bytes]:
        out = []
        if not self.reasoning_id:
            self.reasoning_id = f"rs_{random.randrange(999999)}"
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            out.append(
                self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
            )
        self.thinking.append(thinking)
        delta = {"item_id": self.reasoning_id, "output_index": self.output_index, "summary_index": 0}
        out.append(self._event("response.reasoning_summary_text.delta", {**delta, "delta": thinking}))
        return out

    def _finish_reasoning(self) -> list[bytes]:
        if not self.reasoning_id:
            return []
        thinking = "".join(self.thinking)
        item = _reasoning_item(self.reasoning_id, thinking)
        where = {"item_id": self.reasoning_id, "output_index": self.output_index, "summary_index": 0}
        out = [
            self._event("response.reasoning_summary_text.done", {**where, "text": thinking}),
            self._event("response.output_item.done", {"output_index": self.output_index, "item": item}),
        ]
        self.items.append(item)
        self.thinking, self.reasoning_id = [], ""
        self.output_index += 1
        return out

    def _calls(self, calls: list[Obj]) -> list[bytes]:
        out = []
        for index, call in enumerate(calls):
            item_id = f"fc_{random.randrange(999999)}_{index}"
            where = {"item_id": item_id, "output_index": self.output_index}
            arguments = call["function"]["arguments"]
            done = _call_item(item_id, call)
            out += [
                self._event(
                    "response.output_item.added",
                    {"output_index": self.output_index, "item": _call_item(item_id, call, "in_progress")},
                ),
                self._event("response.function_call_arguments.delta", {**where, "delta": arguments}),
                self._event("response.function_call_arguments.done", {**where, "arguments": arguments}),
                self._event("response.output_item.done", {"output_index": self.output_index, "item": done}),
            ]
            self.items.append(done)
            self.output_index += 1
        return out

    def _content(self, text: str) -> list[bytes]:
        out = self._finish_reasoning()
        where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        if not self.text_started:
            self.text_started = True
            item = _message_item(self.item_id, "", "in_progress")
            out.append(
                self._event("response.output_item.added", {"output_index": self.output_index, "item": item})
            )
            out.append(self._event("response.content_part.added", {**where, "part": _text_part("")}))
        self.text.append(text)
        out.append(self._event("response.output_text.delta", {**where, "delta": text, "logprobs": []}))
        return out

    def _complete(self, native: Obj) -> list[bytes]:
        self.finished = True
        out = self._finish_reasoning()
        output = list(self.items)
        if self.text_started:
            where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
            text = "".join(self.text)
            item = _message_item(self.item_id, text)
            output.append(item)
            if not self.calls_sent:
                out += [
                    self._event("response.output_text.done", {**where, "text": text, "logprobs": []}),
                    self._event("response.content_part.done", {**where, "part": _text_part(text)}),
                    self._event(
                        "response.output_item.done", {"output_index": self.output_index, "item": item}
                    ),
                ]
        response = self._response("completed", output, usage(native))
        response["completed_at"] = int(time.time())
        out.append(self._event("response.completed", {"response": response}))
        return out
