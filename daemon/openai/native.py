"""Calling a native route in-process, the way Ollama's middleware calls its next handler.

:func:`native_call` runs the app's router on a new scope (the native path, method and
JSON body) in a task beside the caller, and hands back the native answer as it is written:
its status, its headers, then its body chunk by chunk. Nothing goes through a socket; the
native handler sees the original request otherwise (its app, state and exception
handlers), and its disconnect checks read the client's own ``receive``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Scope

log = logging.getLogger("mlxd.http")

_DROPPED_HEADERS = {b"content-length", b"content-type", b"content-encoding", b"transfer-encoding"}
_BUFFERED_CHUNKS = 8
_GIN_TEXTS = {404: "404 page not found", 405: "405 method not allowed"}


class NativeReply:
    """The native answer: ``status`` and ``headers``, then the body through :meth:`chunks`."""

    def __init__(self, status: int, headers: Headers, messages: MemoryObjectReceiveStream[Message]) -> None:
        self.status = status
        self.headers = headers
        self.complete = False  # the whole body was received
        self._messages = messages

    async def chunks(self) -> AsyncIterator[bytes]:
        async for message in self._messages:
            body: bytes = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                self.complete = True
                return

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def objects(self) -> AsyncIterator[Any]:
        """The body's JSON values: one per NDJSON line (a plain JSON body is one value)."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield orjson.loads(line)
        if pending.strip():
            yield orjson.loads(pending)


def _scope(request: Request, method: str, path: str, payload: bytes) -> Scope:
    outer = request.scope
    headers = [(k, v) for k, v in outer.get("headers", []) if k.lower() not in _DROPPED_HEADERS]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    scope = {key: value for key, value in outer.items() if key not in ("path_params", "endpoint", "route")}
    full_path = outer.get("root_path", "") + path
    scope.update(
        method=method, path=full_path, raw_path=full_path.encode(), query_string=b"", headers=headers
    )
    return scope


def _synthetic(status: int, body: bytes, content_type: bytes) -> list[Message]:
    return [
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


@asynccontextmanager
async def native_call(
    request: Request, method: str, path: str, body: Mapping[str, Any] | None = None
) -> AsyncIterator[NativeReply]:
    """Run ``method path`` with ``body`` (JSON) on the app that serves ``request``.

    Leaving the block before the body was read to its end cancels the native handler.
    """
    payload = b"" if body is None else orjson.dumps(body)
    scope = _scope(request, method, path, payload)
    outer_receive = request.receive
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        return await outer_receive()

    sender: MemoryObjectSendStream[Message]
    receiver: MemoryObjectReceiveStream[Message]
    sender, receiver = anyio.create_memory_object_stream[Message](_BUFFERED_CHUNKS)
    started = False

    async def send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        if message["type"] in ("http.response.start", "http.response.body"):
            await sender.send(message)

    async def run() -> None:
        async with sender:
            fallback = (500, orjson.dumps({"error": "no response"}), b"application/json")
            try:
                await request.app.router(scope, receive, send)
            except HTTPException as exc:
                text = _GIN_TEXTS.get(exc.status_code, str(exc.detail))
                fallback = (exc.status_code, text.encode(), b"text/plain")
            except Exception as exc:
                log.exception("native handler failed for %s %s", method, path)
                fallback = (
                    500,
                    orjson.dumps({"error": f"internal server error: {exc}"}),
                    b"application/json",
                )
            if not started:
                for message in _synthetic(*fallback):
                    await sender.send(message)

    failure: Exception | None = None
    async with anyio.create_task_group() as group, receiver:
        group.start_soon(run)
        start = await receiver.receive()
        reply = NativeReply(start["status"], Headers(raw=start.get("headers", [])), receiver)
        try:
            yield reply
        except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
            failure = exc
        if not reply.complete:
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
