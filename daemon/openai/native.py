"""Calling a native route in-process, the way Ollama's middleware calls its next handler.

:func:`call_native` runs the app's router on a new scope (the native path, method and JSON
body) in the caller's own task, and hands every message the native handler sends to the
caller's ``send``: a writer in the middle, as Ollama wraps gin's ``ResponseWriter``. Nothing
goes through a socket and no chunk changes task. The native handler sees the original
request otherwise (its app, state and exception handlers), and its disconnect checks read
the client's own ``receive``. :func:`read_native` collects a whole answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Scope, Send

log = logging.getLogger("mlxd.http")

_DROPPED_HEADERS = {b"content-length", b"content-type", b"content-encoding", b"transfer-encoding"}
_GIN_TEXTS = {404: "404 page not found", 405: "405 method not allowed"}


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


async def _send_answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _dumps(body: Mapping[str, Any]) -> bytes:
    """The body as JSON; integers past 64 bits (which orjson refuses) go through ``json``, so
    the native route answers them as it answers any client."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


async def call_native(
    request: Request, method: str, path: str, body: Mapping[str, Any] | None, send: Send
) -> None:
    """Run ``method path`` with ``body`` (JSON) on the app that serves ``request``; every
    response message goes to ``send``. A failure before the answer started becomes one (the
    app's 404/405 texts, or a 500 ``{"error"}``); after it, the body just ends."""
    payload = b"" if body is None else _dumps(body)
    scope = _scope(request, method, path, payload)
    outer_receive = request.receive
    delivered = False
    started = finished = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        return await outer_receive()

    async def tracking_send(message: Message) -> None:
        nonlocal started, finished
        if message["type"] == "http.response.start":
            started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            finished = True
        await send(message)

    try:
        await request.app.router(scope, receive, tracking_send)
    except HTTPException as exc:
        if started:
            raise
        text = _GIN_TEXTS.get(exc.status_code, str(exc.detail))
        await _send_answer(send, exc.status_code, text.encode(), b"text/plain")
    except Exception as exc:
        log.exception("native handler failed for %s %s", method, path)
        if not started:
            error = orjson.dumps({"error": f"internal server error: {exc}"})
            await _send_answer(send, 500, error, b"application/json")
        elif not finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        if not started:  # a handler that answered nothing (the client went away)
            await _send_answer(send, 499, b"", b"text/plain")
        elif not finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def read_native(
    request: Request, method: str, path: str, body: Mapping[str, Any] | None = None
) -> tuple[int, bytes]:
    """The status and whole body of a native answer."""
    status = 500
    chunks: list[bytes] = []

    async def collect(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await call_native(request, method, path, body, collect)
    return status, b"".join(chunks)
