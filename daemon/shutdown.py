"""Graceful shutdown: refuse new work, give in-flight requests a bounded time, then end them cleanly.

On SIGTERM (or Ctrl-C) uvicorn stops listening and waits for open connections; the daemon
then stops its workers. Left alone, a long generation would keep its connection open until
uvicorn's own timeout cancels it mid-chunk: the client sees a truncated body and the log a
traceback. :class:`Drain` makes that bounded and clean:

* once draining, a new request that would start work (anything but ``GET``/``HEAD``/``OPTIONS``)
  is answered ``503 {"error": "server is shutting down"}``;
* requests already running may finish within ``timeout`` seconds (``MLXD_SHUTDOWN_TIMEOUT``,
  default 10);
* after that they are cancelled: their generation stops (closing the stream cancels it in the
  worker), and the client gets a proper end: a final ``{"error": ...}`` line on an NDJSON stream,
  an ``error`` event on a server-sent-event stream, or a 503 when nothing was sent yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("mlxd.shutdown")

SHUTTING_DOWN = "server is shutting down"
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FINAL_SEND_SECONDS = 1.0  # how long the last error chunk may wait for a slow client


def shutdown_timeout(environ: Mapping[str, str]) -> float:
    """``MLXD_SHUTDOWN_TIMEOUT`` in seconds (a number ≥ 0); the default when unset or invalid."""
    text = environ.get("MLXD_SHUTDOWN_TIMEOUT", "").strip().strip("\"'")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_SHUTDOWN_TIMEOUT
    if value != value or value < 0 or value == float("inf"):  # NaN, negative, infinite
        return DEFAULT_SHUTDOWN_TIMEOUT
    return value


class Drain:
    """The shutdown state of one app: whether it drains, and the requests still running."""

    def __init__(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        self.timeout = timeout
        self.draining = False
        self._running: set[anyio.CancelScope] = set()
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def begin(self) -> None:
        """Start draining (idempotent); requests still running after ``timeout`` are cancelled.

        Runs on the event loop, e.g. from the server's shutdown."""
        if self.draining:
            return
        self.draining = True
        if self._running:
            log.info(
                "shutting down: waiting up to %gs for %d request(s) in flight", self.timeout, self.in_flight
            )
        self._deadline = asyncio.get_running_loop().call_later(self.timeout, self.cancel_in_flight)

    def cancel_in_flight(self) -> None:
        if self._running:
            log.warning("shutting down: cancelling %d request(s) still in flight", self.in_flight)
        for scope in list(self._running):
            scope.cancel()

    def track(self, scope: anyio.CancelScope) -> None:
        self._running.add(scope)

    def untrack(self, scope: anyio.CancelScope) -> None:
        self._running.discard(scope)
        if self.draining and not self._running and self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _Progress:
    """Wraps ``send`` to know how far the response got."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.complete = False
        self.content_type = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            for key, value in message.get("headers", ()):
                if key.lower() == b"content-type":
                    self.content_type = bytes(value).split(b";")[0].strip().lower()
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)


def _error_body(path: str) -> bytes:
    """The error object in the shape of the API the request used (Ollama's, or OpenAI's on /v1)."""
    if path.startswith("/v1/"):
        error = {"message": SHUTTING_DOWN, "type": "api_error", "param": None, "code": None}
        return orjson.dumps({"error": error})
    return orjson.dumps({"error": SHUTTING_DOWN})


async def _refuse(scope: Scope, send: Send) -> None:
    path = scope.get("path", "")
    body = _error_body(path)
    content_type = b"application/json" if path.startswith("/v1/") else b"application/json; charset=utf-8"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _finish(scope: Scope, progress: _Progress) -> None:
    """End a cancelled response: a 503 if nothing was sent, else a last error chunk."""
    if progress.complete:
        return
    with anyio.move_on_after(_FINAL_SEND_SECONDS):
        if not progress.started:
            await _refuse(scope, progress.send)
            return
        if progress.content_type == b"application/x-ndjson":
            last = _error_body(scope.get("path", "")) + b"\n"
        elif progress.content_type == b"text/event-stream":
            last = b"data: " + _error_body(scope.get("path", "")) + b"\n\n"
        else:
            last = b""
        await progress.send({"type": "http.response.body", "body": last, "more_body": False})


class ShutdownMiddleware:
    """ASGI middleware that applies a :class:`Drain` to every HTTP request."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope.get("method", "GET") not in _SAFE_METHODS:
            await _refuse(scope, send)
            return
        progress = _Progress(send)
        with anyio.CancelScope() as cancel:
            self.drain.track(cancel)
            try:
                await self.app(scope, receive, progress.send)
            finally:
                self.drain.untrack(cancel)
        if cancel.cancelled_caught:
            await _finish(scope, progress)
