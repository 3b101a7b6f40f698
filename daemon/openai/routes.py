"""The ``/v1`` routes: each translates the request, runs the native route in-process, and
writes the native answer in OpenAI's (or, on ``/v1/messages``, Anthropic's) shapes
(reference §5, §10.4).

A request that cannot be translated, and every native error, is answered with the API's
error object, ``Content-Type: application/json``, and the native status. JSON answers end
with a newline, as Go's encoder writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from daemon.openai import anthropic, convert, responses, shapes
from daemon.openai.native import call_native
from daemon.openai.stream import SSE_MEDIA_TYPE, ChatStream, CompletionStream, EventWriter

Obj = dict[str, Any]
ErrorShape = Callable[[int, str], Obj]
JSON_MEDIA_TYPE = "application/json"


def json_response(obj: Obj, status: int = 200) -> Response:
    return Response(orjson.dumps(obj) + b"\n", status, media_type=JSON_MEDIA_TYPE)


def error_response(status: int, message: str, shape: ErrorShape = shapes.error_object) -> Response:
    return json_response(shape(status, message), status)


class Translated(Response):
    """The native answer to ``method path`` with ``body``, written for an OpenAI client:
    ``whole`` turns a JSON answer into the response object; with ``stream``, the native
    chunks become server-sent events."""

    def __init__(
        self,
        request: Request,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        whole: Callable[[Obj], Obj],
        stream: EventWriter | None = None,
        error_shape: ErrorShape = shapes.error_object,
    ) -> None:
        super().__init__()
        self.request = request
        self.method = method
        self.path = path
        self.native_body = body
        self.whole = whole
        self.stream = stream
        self.error_shape = error_shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = _Writer(self, scope, receive, send)
        await call_native(self.request, self.method, self.path, self.native_body, writer.send)

    async def answer(self, status: int, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        """A whole native answer: the translated object, or the translated error."""
        if status != 200:
            response = error_response(status, shapes.native_error(body), self.error_shape)
        else:
            try:
                native = orjson.loads(body)
            except orjson.JSONDecodeError:
                native = None
            if isinstance(native, dict) and "_debug_info" in native:
                response = json_response(native)  # ``_debug_render_only``: Ollama's object as is
            elif isinstance(native, dict):
                response = json_response(self.whole(native))
            else:
                response = error_response(500, "invalid response from the native handler", self.error_shape)
        await response(scope, receive, send)


class _Writer:
    """Between the native handler and the client: a 200 answer to a streamed request goes out
    as events, line by line as it comes; anything else is collected and answered whole."""

    def __init__(self, response: Translated, scope: Scope, receive: Receive, send: Send) -> None:
        self.response = response
        self.scope, self.receive, self.outer = scope, receive, send
        self.status = 500
        self.streaming = False
        self.pending = b""
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            # ``_debug_render_only`` answers Ollama's JSON object, streamed request or not.
            debug = bool((self.response.native_body or {}).get("_debug_render_only"))
            self.streaming = self.status == 200 and self.response.stream is not None and not debug
            if self.streaming:
                await self.outer({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            return
        if message["type"] != "http.response.body":
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not self.streaming:
            self.chunks.append(body)
            if not more:
                data = b"".join(self.chunks)
                await self.response.answer(self.status, data, self.scope, self.receive, self.outer)
            return
        lines = (self.pending + body).split(b"\n")
        self.pending = lines.pop() if more else b""  # an unfinished line waits for the rest
        frames = self._frames(lines)
        if frames or not more:
            await self.outer({"type": "http.response.body", "body": frames, "more_body": more})

    def _frames(self, lines: list[bytes]) -> bytes:
        stream = self.response.stream
        assert stream is not None
        out = []
        for line in lines:
            if line.strip() and not stream.finished:
                native = orjson.loads(line)
                out.append(stream.feed(native if isinstance(native, dict) else {}))
        return b"".join(out)


_SSE_HEADERS = [(b"content-type", SSE_MEDIA_TYPE.encode()), (b"cache-control", b"no-cache")]


async def _read(request: Request) -> Mapping[str, Any]:
    return convert.decode_body(await request.body())


async def chat_completions(request: Request) -> Response:
    try:
        body = await _read(request)
        native = convert.chat_request(body)
    except convert.RequestError as exc:
        return error_response(exc.status, exc.message)
    ident = shapes.chat_id()
    stream = ChatStream(ident, convert.include_usage(body)) if native["stream"] else None
    return Translated(
        request, "POST", "/api/chat", native, lambda obj: shapes.chat_completion(ident, obj), stream
    )


async def completions(request: Request) -> Response:
    try:
        body = await _read(request)
        native = convert.completion_request(body)
    except convert.RequestError as exc:
        return error_response(exc.status, exc.message)
    ident = shapes.completion_id()
    stream = CompletionStream(ident, convert.include_usage(body)) if native["stream"] else None
    return Translated(
        request, "POST", "/api/generate", native, lambda obj: shapes.completion(ident, obj), stream
    )


async def embeddings(request: Request) -> Response:
    try:
        body = await _read(request)
        native = convert.embed_request(body)
    except convert.RequestError as exc:
        return error_response(exc.status, exc.message)
    model, encoding = native["model"], convert.encoding_format(body)
    return Translated(
        request, "POST", "/api/embed", native, lambda obj: shapes.embedding_list(model, obj, encoding)
    )


async def create_response(request: Request) -> Response:
    try:
        body = await _read(request)
        native = responses.chat_request(body)
    except convert.RequestError as exc:
        return error_response(exc.status, exc.message)
    echo = responses.Request(body)
    response_id, item_id = responses.response_ids()
    stream = responses.ResponsesStream(echo, response_id, item_id) if native["stream"] else None
    return Translated(
        request,
        "POST",
        "/api/chat",
        native,
        lambda obj: responses.response_object(echo, response_id, item_id, obj),
        stream,
    )


async def create_message(request: Request) -> Response:
    try:
        body = await _read(request)
        native = anthropic.chat_request(body)
    except convert.RequestError as exc:
        return error_response(exc.status, exc.message, anthropic.error_object)
    await anthropic.relax_thinking(request, native)
    message_id = anthropic.new_id("msg")
    stream = None
    if native["stream"]:
        estimate = anthropic.estimate_input_tokens(body)
        stream = anthropic.MessagesStream(message_id, native["model"], estimate)
    return Translated(
        request,
        "POST",
        "/api/chat",
        native,
        lambda obj: anthropic.message_object(message_id, obj),
        stream,
        anthropic.error_object,
    )


async def list_models(request: Request) -> Response:
    return Translated(request, "GET", "/api/tags", None, shapes.model_list)


async def retrieve_model(request: Request) -> Response:
    name: str = request.path_params["model"]
    return Translated(
        request, "POST", "/api/show", {"model": name}, lambda obj: shapes.model_object(name, obj)
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    ]
