"""JSON and NDJSON responses the way Ollama writes them (reference §1.4).

* A JSON answer is ``application/json; charset=utf-8`` without a trailing newline.
* A stream is ``application/x-ndjson``: one object and ``\\n`` per chunk, never a blank line.
  An error after the first line becomes a last ``{"error": ...}`` line (status stays 200).
* Streams are async generators (no thread hop per chunk), and the body iterator is always
  closed when the response ends, so a client that goes away stops the work behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from daemon.disconnect import DisconnectWatch
from daemon.engine import EngineError

log = logging.getLogger("mlxd.http")

JSON_MEDIA_TYPE = "application/json; charset=utf-8"
NDJSON_MEDIA_TYPE = "application/x-ndjson"


class JSONResponse(Response):
    """``orjson``-encoded, ``application/json; charset=utf-8``, no trailing newline."""

    media_type = JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def describe(exc: BaseException) -> str:
    """A plain one-line message for an unexpected exception (never a traceback)."""
    lines = str(exc).strip().splitlines()
    return f"internal server error: {lines[0]}" if lines else f"internal server error: {type(exc).__name__}"


def error_response(message: str, status: int = 500) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def error_line(message: str) -> bytes:
    return orjson.dumps({"error": message}) + b"\n"


def dumps_line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


async def aclose(iterator: object) -> None:
    """Close an async iterator even while the surrounding task is being cancelled."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await close()


class NDJSONResponse(StreamingResponse):
    """Streams ``lines`` (already ``\\n``-terminated bytes).

    An exception raised by ``lines`` after the response started becomes a final
    ``{"error"}`` line. The iterator is closed in every case, a client disconnect included.
    Every line is sent from the handler's own task; ``watch`` (the handler's, when it waited
    for the first line under one) notices a disconnect, else one is started here.
    """

    def __init__(
        self, lines: AsyncIterator[bytes], status_code: int = 200, watch: DisconnectWatch | None = None
    ) -> None:
        self._lines = lines
        self._watch = watch
        super().__init__(self._guarded(), status_code, media_type=NDJSON_MEDIA_TYPE)

    async def _guarded(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._lines:
                yield line
        except EngineError as exc:
            yield error_line(exc.message)
        except Exception as exc:
            log.exception("error while streaming a response")
            yield error_line(describe(exc))
        finally:
            await aclose(self._lines)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self._watch or DisconnectWatch(receive)
        try:
            with watch.guard():
                await self.stream_response(send)
        finally:
            watch.close()
            await aclose(self.body_iterator)


class Clock:
    """``created_at`` timestamps: UTC, RFC 3339 with nanoseconds and ``Z``, cheap per call.

    The date-time part is formatted once per second; each call only formats the fraction.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        ns = time.time_ns()
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if not fraction:
            return self._prefix + "Z"
        return f"{self._prefix}.{fraction:09d}".rstrip("0") + "Z"


clock = Clock()
