"""How failures become HTTP answers (reference §1.1, §1.4, §11).

* :class:`ApiError` (and the engine's :class:`~daemon.engine.EngineError`) raised by a handler
  → ``{"error": message}`` with its status.
* Starlette's 404/405 → Ollama's (gin's) plain-text bodies.
* Anything else → logged with its traceback, answered ``500 {"error": ...}``: a client never
  sees a traceback and the server never drops the connection without an answer.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.engine import EngineError
from daemon.ndjson import describe, error_response

log = logging.getLogger("mlxd.http")


class ApiError(Exception):
    """A request failure with the status and message Ollama answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError | EngineError)
    return error_response(exc.message, exc.status)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found", 404)
    if exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", 405, headers=exc.headers)
    return PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)


class CatchAllMiddleware:
    """Answer ``500 {"error"}`` for any exception that escapes the handlers, and log it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(describe(exc), 500)(scope, receive, send)
