"""``POST /api/pull`` (reference §4.10) and ``POST /api/push`` (§4.11).

A pull runs on its own thread (``registry.pull``); this handler subscribes to it and streams
its progress objects as NDJSON, or with ``stream: false`` answers the last one. An invalid
name is a 400 before anything is sent; every other failure comes after ``pulling manifest``:
as an ``{"error"}`` line (status 200) when streaming, or as the error with its status
(500, as Ollama) otherwise. A client that goes away leaves the pull; a pull nobody listens
to any more is cancelled, and its downloaded bytes are kept for the next one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from daemon.disconnect import until_disconnect
from daemon.errors import ApiError
from daemon.ndjson import (
    JSONResponse,
    NDJSONResponse,
    dumps_line,
    error_line,
    error_response,
)
from daemon.routes import INVALID_MODEL_NAME
from daemon.schemas import read_json
from registry.create import CreateError
from registry.names import InvalidName, ModelName, parse_name
from registry.pull import Puller, PullError, Subscription

POLL_SECONDS = 0.5  # how long one wait for the next progress object may block a thread
CLIENT_CLOSED = 499
NO_PUSH = (
    "push is not supported: mlxd has no registry to push to "
    "(models come from Hugging Face with pull, or from local files with create)"
)


def puller(request: Request) -> Puller:
    found: Puller = request.app.state.puller
    return found


async def pull(request: Request) -> Response:
    fields = await read_json(request, "PullRequest")
    name = fields.model_name()
    stream = fields.boolean("stream", default=True)
    fields.boolean("insecure")  # accepted (type-checked) and ignored: there is no plain-http registry
    try:
        subscription = await run_in_threadpool(puller(request).pull, name.strip())
    except PullError as exc:
        return error_response(exc.message, exc.status)
    if not stream:
        return await _last(request, subscription)
    return NDJSONResponse(_lines(subscription))


async def _next(subscription: Subscription) -> dict[str, Any] | None:
    """The next progress object; None when none came for a while (so cancellation can act)."""
    return await anyio.to_thread.run_sync(subscription.get, POLL_SECONDS)


async def _lines(subscription: Subscription) -> AsyncIterator[bytes]:
    try:
        while not subscription.ended:
            try:
                event = await _next(subscription)
            except PullError as exc:
                yield error_line(exc.message)
                return
            if event is not None:
                yield dumps_line(event)
    finally:
        subscription.close()


async def _last(request: Request, subscription: Subscription) -> Response:
    async def drain() -> dict[str, Any]:
        last: dict[str, Any] = {}
        while not subscription.ended:
            event = await _next(subscription)
            if event is not None:
                last = event
        return last

    try:
        last = await until_disconnect(request.receive, drain)
    except PullError as exc:
        return error_response(exc.message, exc.status)
    finally:
        subscription.close()
    if last is None:
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse(last, media_type="application/json")


def create_pull_hook(pull_service: Puller) -> Callable[[ModelName], Iterator[dict[str, Any]]]:
    """The ``pull`` function ``registry.create`` calls for a ``from`` that is not installed.

    Its progress is passed on without the final ``success`` (the create has its own), and a
    failure becomes a :class:`~registry.create.CreateError`."""

    def pull_for_create(name: ModelName) -> Iterator[dict[str, Any]]:
        try:
            subscription = pull_service.pull(name)
        except PullError as exc:
            raise CreateError(exc.message, exc.status) from None
        try:
            for event in subscription:
                if event.get("status") != "success":
                    yield event
        except PullError as exc:
            raise CreateError(exc.message, exc.status) from None
        finally:
            subscription.close()

    return pull_for_create


async def push(request: Request) -> Response:
    fields = await read_json(request, "PushRequest")
    name = fields.model_name().strip()
    if not name:
        raise ApiError("model is required")
    try:
        parse_name(name)
    except InvalidName:
        raise ApiError(INVALID_MODEL_NAME) from None
    raise ApiError(NO_PUSH, 501)
