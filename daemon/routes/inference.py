"""What ``/api/generate`` and ``/api/chat`` share (reference §4.6, §4.7).

The checks both handlers run, in Ollama's order; the options merge; the load step; and running
one generation on the engine, streamed (NDJSON) or not (one JSON object).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from daemon.capabilities import capabilities
from daemon.disconnect import DisconnectWatch, until_disconnect
from daemon.durations import go_quote
from daemon.engine import (
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    LogprobsChunk,
    ModelHandle,
    TextChunk,
    ThinkingChunk,
)
from daemon.errors import ApiError
from daemon.ndjson import JSONResponse, NDJSONResponse, aclose, clock, dumps_line
from daemon.options import OptionError, Options, resolve_options
from daemon.routes import Services, find_model, model_handle, services
from daemon.schemas import InferenceBody, validate_top_logprobs
from registry.store import InstalledModel
from worker.gotemplate import Template, TemplateError, Unsupported

log = logging.getLogger("mlxd.http")

INCOMPLETE = "the model stopped without finishing the response"
CLIENT_CLOSED = 499  # nginx's "client closed request"; nobody reads it, the client is gone
NO_VISION = "this model is missing data required for image input"


@dataclass
class Call:
    """One generate or chat request, validated up to the model lookup."""

    request: Request
    services: Services
    body: InferenceBody
    model: InstalledModel
    handle: ModelHandle
    started_ns: int


async def start_call(request: Request, body: InferenceBody, started_ns: int, empty_model: ApiError) -> Call:
    """Steps 2–5 of both handlers: ``top_logprobs``, the name, the lookup."""
    validate_top_logprobs(body.top_logprobs)
    if not body.model.strip():
        raise empty_model
    svc = services(request)
    model = await find_model(svc, body.model)
    if model is None:
        raise ApiError(f"model '{body.model}' not found", 404)
    return Call(request, svc, body, model, model_handle(model), started_ns)


def check_capabilities(call: Call, verb: str) -> list[str]:
    """The think check, then ``completion`` (``verb`` is "generate" or "chat"); the model's
    capabilities, for the checks that follow."""
    body = call.body
    found = capabilities(call.model)
    if body.think and "thinking" not in found:  # True or any level
        raise ApiError(f"{go_quote(body.model)} does not support thinking")
    if "completion" not in found:
        raise ApiError(f"{go_quote(body.model)} does not support {verb}")
    return found


def think_value(call: Call, found: list[str]) -> bool | str | None:
    """What reaches the engine: ``None`` (the model's default: on for thinking models, as
    Ollama defaults it) unless the request set it; ``false`` is dropped for other models."""
    think = call.body.think
    if think is None or "thinking" not in found:
        return None
    return think


def check_template(source: str) -> None:
    """An Ollama template (request ``template`` or Modelfile ``TEMPLATE``) must parse: a syntax
    error is Ollama's 500; valid Go that this server cannot render is a 400 saying so."""
    if not source:
        return
    try:
        Template(source)
    except Unsupported as exc:
        raise ApiError(f"unsupported template: {exc}", 400) from None
    except TemplateError as exc:
        raise ApiError(str(exc), 500) from None


def check_images(images: list[str]) -> None:
    """No model here takes images: Ollama's answer for a text-only model."""
    if images:
        raise ApiError(NO_VISION, 400)


def unsupported(call: Call, feature: str) -> ApiError:
    """Ollama's answer for a model without a capability, with the fully-qualified name."""
    return ApiError(f"{call.model.name.full()} does not support {feature}")


def merged_options(call: Call) -> Options:
    try:
        return resolve_options(
            call.services.settings.context_length, call.model.config.parameters, call.body.options
        )
    except OptionError as exc:
        raise ApiError(str(exc), 500) from None


def check_format(value: Any) -> None:
    """``format``: absent, ``""``, ``"json"`` or a JSON Schema object (reference §2.6); the
    worker enforces it token by token."""
    if value is None or value in ("", "json") or isinstance(value, dict):
        return
    raw = orjson.dumps(value).decode()
    raise ApiError(f'invalid format: {go_quote(raw)}; expected "json" or a valid JSON Schema object', 500)


class Shape:
    """The chunk and final-object shapes of one endpoint, echoing the request's model string."""

    def __init__(self, model: str, chat: bool, with_context: bool = False) -> None:
        self.model = model
        self.chat = chat
        self.with_context = with_context
        # Per-token lines are assembled from pre-encoded pieces: one orjson call per chunk.
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        if chat:
            self._middle = b'","message":{"role":"assistant","content":'
            self._tail = b'},"done":false}\n'
        else:
            self._middle = b'","response":'
            self._tail = b',"done":false}\n'

    def line(self, text: str) -> bytes:
        return b"".join((self._head, clock.now().encode(), self._middle, orjson.dumps(text), self._tail))

    def event_line(self, event: GenerationEvent, logprobs: list[dict[str, Any]] | None = None) -> bytes:
        """A content, thinking or tool-calls chunk (not the final one), with the
        log-probabilities of its tokens when they were asked for."""
        content = ""
        extra: dict[str, Any] = {}
        if isinstance(event, TextChunk):
            if not logprobs:
                return self.line(event.text)  # the per-token fast path
            content = event.text
        elif isinstance(event, ThinkingChunk):
            extra = {"thinking": event.text}
        else:
            extra = {"tool_calls": event.calls}  # type: ignore[union-attr]
        obj: dict[str, Any] = {"model": self.model, "created_at": clock.now()}
        if self.chat:
            obj["message"] = {"role": "assistant", "content": content, **extra}
        else:
            obj.update(response=content, **extra)
        obj["done"] = False
        if logprobs:
            obj["logprobs"] = logprobs
        return dumps_line(obj)

    def rendered(self, prompt: str) -> dict[str, Any]:
        """The answer to ``_debug_render_only``: Ollama's shape, the prompt in ``_debug_info``."""
        obj: dict[str, Any] = {"model": self.model, "created_at": clock.now()}
        if self.chat:
            obj["message"] = {"role": "", "content": ""}
        else:
            obj["response"] = ""
        obj.update(done=False, _debug_info={"rendered_template": prompt})
        return obj

    def final(self, text: str | Output, fields: dict[str, Any]) -> dict[str, Any]:
        out = text if isinstance(text, Output) else Output(text)
        extra: dict[str, Any] = {}
        if out.thinking:
            extra["thinking"] = out.thinking
        if out.tool_calls:
            extra["tool_calls"] = out.tool_calls
        obj: dict[str, Any] = {"model": self.model, "created_at": clock.now()}
        if self.chat:
            obj["message"] = {"role": "assistant", "content": out.content, **extra}
        else:
            obj["response"] = out.content
            obj.update(extra)
        obj["done"] = True
        obj.update(fields)
        if out.logprobs:
            obj["logprobs"] = out.logprobs
        return obj


@dataclass
class Output:
    """A whole response (``stream: false``; or the final chunk's leftovers when streaming):
    content, thoughts, tool calls and the tokens' log-probabilities."""

    content: str
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None


def final_fields(finished: Finished, total_ns: int, load_ns: int, with_context: bool) -> dict[str, Any]:
    """``done_reason``, ``context`` and the metrics of the last object; zero metrics are omitted."""
    fields: dict[str, Any] = {}
    if finished.done_reason in ("stop", "length"):  # a cancelled run has no reason, like Ollama's ""
        fields["done_reason"] = finished.done_reason
    if with_context and finished.context:
        fields["context"] = finished.context
    metrics = (
        ("total_duration", total_ns),
        ("load_duration", load_ns),
        ("prompt_eval_count", finished.prompt_eval_count),
        ("prompt_eval_duration", finished.prompt_eval_duration_ns),
        ("eval_count", finished.eval_count),
        ("eval_duration", finished.eval_duration_ns),
    )
    fields.update((key, value) for key, value in metrics if value)
    return fields


async def unload_answer(call: Call, shape: Shape) -> Response:
    """The unload idiom: empty prompt/messages with ``keep_alive: 0``."""
    await call.services.engine.unload(call.handle)
    return JSONResponse(shape.final("", {"done_reason": "unload"}))


async def load(call: Call) -> int:
    """Load the model; ``load_duration`` in nanoseconds.

    That is what the engine reports it spent loading, but never less than the time from the
    start of the request until the model was ready (Ollama's own measure), so a warm model
    still reports a small non-zero value as Ollama does (its integration tests expect one).
    """
    seconds = await call.services.engine.load(call.handle, call.body.keep_alive)
    return max(int(seconds * 1_000_000_000), time.perf_counter_ns() - call.started_ns)


def load_answer(shape: Shape) -> Response:
    """The load idiom: empty prompt/messages."""
    return JSONResponse(shape.final("", {"done_reason": "load"}))


async def run(call: Call, shape: Shape, request: GenerationRequest, load_ns: int) -> Response:
    """Run one generation and answer with an NDJSON stream or, with ``stream: false``, one object.

    The first event is awaited before the response starts, so an engine error at that point
    is a plain JSON error with its status. The engine applies ``keep_alive`` when it ends.
    """
    request.keep_alive = call.body.keep_alive
    # A render-only answer is one object whether or not the request said ``stream``.
    request.stream = call.body.stream and not request.render_only
    events = call.services.engine.generate(call.handle, request)

    async def release() -> None:
        await aclose(events)

    def final(text: str | Output, finished: Finished) -> dict[str, Any]:
        total_ns = time.perf_counter_ns() - call.started_ns
        return shape.final(text, final_fields(finished, total_ns, load_ns, shape.with_context))

    receive = call.request.receive
    if not request.stream:
        try:
            collected = await until_disconnect(receive, lambda: _collect(events))
        finally:
            await release()
        if collected is None:
            return Response(status_code=CLIENT_CLOSED)
        if request.render_only:  # one object, streamed request or not
            return JSONResponse(shape.rendered(collected[0].content))
        return JSONResponse(final(*collected))

    # One disconnect watch for the wait and the whole stream; the stream closes it.
    watch = DisconnectWatch(receive)
    first: GenerationEvent | None = None
    ended = False
    try:
        with watch.guard():
            try:
                first = await anext(events)
            except StopAsyncIteration:
                ended = True
    finally:
        if first is None:  # no stream follows: the events ended or failed, or the client left
            watch.close()
            await release()
    if ended:
        raise EngineError(INCOMPLETE)
    if first is None:
        return Response(status_code=CLIENT_CLOSED)
    return NDJSONResponse(_lines(first, events, shape, final, release), watch=watch)


async def _collect(events: AsyncIterator[GenerationEvent]) -> tuple[Output, Finished]:
    parts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    async for event in events:
        if isinstance(event, Finished):
            return Output("".join(parts), "".join(thoughts), calls or None, logprobs or None), event
        if isinstance(event, TextChunk):
            parts.append(event.text)
        elif isinstance(event, ThinkingChunk):
            thoughts.append(event.text)
        elif isinstance(event, LogprobsChunk):
            logprobs.extend(event.entries)
        else:
            calls.extend(event.calls)
    raise EngineError(INCOMPLETE)


async def _lines(
    first: GenerationEvent,
    events: AsyncIterator[GenerationEvent],
    shape: Shape,
    final: Callable[[str | Output, Finished], dict[str, Any]],
    release: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    pending: list[dict[str, Any]] = []  # log-probabilities waiting for their chunk
    try:
        event = first
        while True:
            if isinstance(event, Finished):
                yield dumps_line(final(Output("", logprobs=pending or None), event))
                return
            if isinstance(event, LogprobsChunk):
                pending.extend(event.entries)
            else:
                yield shape.event_line(event, pending)
                pending = []
            try:
                event = await anext(events)
            except StopAsyncIteration:
                raise EngineError(INCOMPLETE) from None
    finally:
        await release()
