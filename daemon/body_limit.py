"""A bound on the size of request bodies (``MLXD_MAX_BODY_BYTES``, 100 MiB by default).

Every route reads its whole JSON body into memory, so a client could otherwise make the
daemon hold any amount of it. Blob uploads (``POST /api/blobs/:digest``) stream to disk and
are not bounded. A body over the limit is answered ``413 {"error": ...}`` before the route
runs: at once when ``Content-Length`` says so, else once the chunks received pass it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.ndjson import error_response

log = logging.getLogger("mlxd.body_limit")

MAX_BODY_ENV = "MLXD_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 100 * 2**20
UNBOUNDED_PREFIXES = ("/api/blobs/",)  # streamed to disk, checked against their digest


def max_body_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The limit from the environment; 0 turns it off, anything unreadable keeps the default."""
    text = (os.environ if environ is None else environ).get(MAX_BODY_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BODY_BYTES
    if not text.isascii() or not text.isdigit():
        log.warning("invalid %s=%r, using %d", MAX_BODY_ENV, text, DEFAULT_MAX_BODY_BYTES)
        return DEFAULT_MAX_BODY_BYTES
    return int(text)


def too_large(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes"


class BodyLimitMiddleware:
    """Pure ASGI: nothing is buffered for bodies that declare their length; a chunked body is
    collected up to the limit and then handed to the app as one message."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limit or scope["path"].startswith(UNBOUNDED_PREFIXES):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if length.strip().isdigit() and int(length) > self.limit:
                await error_response(too_large(self.limit), 413)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await error_response(too_large(self.limit), 413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the client sends next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
