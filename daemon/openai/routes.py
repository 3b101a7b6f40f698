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
from starlette.types import Receive, Scope, Send

from daemon.openai import anthropic, convert, responses, shapes
from daemon.openai.native import native_call
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
        async with native_call(self.request, self.method, self.path, self.native_body) as reply:
            if reply.status != 200:
                message = shapes.native_error(await reply.read())
                await error_response(reply.status, message, self.error_shape)(scope, receive, send)
            elif self.stream is None:
                await self._send_whole(await reply.read(), scope, receive, send)
            else:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
                stream = self.stream
                async for native in reply.objects():
                    if not stream.finished:
                        frames = stream.feed(native if isinstance(native, dict) else {})
                        await send({"type": "http.response.body", "body": frames, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_whole(self, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            native = orjson.loads(body)
        except orjson.JSONDecodeError:
            native = None
        if not isinstance(native, dict):
            response = error_response(500, "invalid response from the native handler", self.error_shape)
        else:
            response = json_response(self.whole(native))
        await response(scope, receive, send)


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
