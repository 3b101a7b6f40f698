"""Graceful shutdown: new work refused, running requests bounded and ended cleanly (in-process)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from daemon.app import create_app
from daemon.config import Settings
from daemon.engine import Finished
from daemon.engine import TextChunk as T
from daemon.shutdown import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    SHUTTING_DOWN,
    Drain,
    ShutdownMiddleware,
    shutdown_timeout,
)
from daemon.testing import Delay, ScriptedEngine
from registry.store import Store
from tests.http_support import error_of, ndjson

pytest_plugins = ["tests.http_support"]

DONE = Finished("stop", 1, 1, 1, 1)
GENERATE = {"model": "tiny", "prompt": "x"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, DEFAULT_SHUTDOWN_TIMEOUT),
        ("", DEFAULT_SHUTDOWN_TIMEOUT),
        ("3", 3.0),
        (" '2.5' ", 2.5),
        ("0", 0.0),
        ("-1", DEFAULT_SHUTDOWN_TIMEOUT),
        ("inf", DEFAULT_SHUTDOWN_TIMEOUT),
        ("nan", DEFAULT_SHUTDOWN_TIMEOUT),
        ("soon", DEFAULT_SHUTDOWN_TIMEOUT),
    ],
)
def test_shutdown_timeout_from_env(value: str | None, expected: float) -> None:
    env = {} if value is None else {"MLXD_SHUTDOWN_TIMEOUT": value}
    assert shutdown_timeout(env) == expected


def draining_app(settings: Settings, engine: ScriptedEngine, store: Store, timeout: float) -> Starlette:
    return create_app(settings, engine, store, Drain(timeout))


async def post_then_drain(
    app: Starlette, engine: ScriptedEngine, path: str, body: dict[str, object], after_events: int
) -> tuple[httpx.Response, float]:
    """POST ``body``; once the engine has sent ``after_events`` events, start draining.

    Returns the response and the seconds from the start of the drain to the response's end."""
    drain: Drain = app.state.drain
    began = 0.0

    async def begin_when_running() -> None:
        nonlocal began
        while not engine.generations or engine.generations[-1].events_sent < after_events:
            await anyio.sleep(0.005)
        began = time.monotonic()
        drain.begin()

    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(begin_when_running)
        with anyio.fail_after(10):
            response = await client.post(path, json=body)
    return response, time.monotonic() - began


@pytest.mark.anyio
async def test_new_work_is_refused_while_draining(app: Starlette, client: httpx.AsyncClient) -> None:
    app.state.drain.begin()
    for path, body in (("/api/generate", GENERATE), ("/api/chat", CHAT), ("/api/show", {"model": "tiny"})):
        response = await client.post(path, json=body)
        assert response.status_code == 503
        assert error_of(response) == SHUTTING_DOWN
    # The OpenAI-compatible routes answer in OpenAI's error shape.
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(response.content) == {
        "error": {"message": SHUTTING_DOWN, "type": "api_error", "param": None, "code": None}
    }
    # Reading is still fine.
    assert (await client.get("/api/tags")).status_code == 200
    assert (await client.head("/")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body"), [("/api/generate", GENERATE), ("/api/chat", CHAT)])
async def test_stream_running_past_the_deadline_ends_with_an_error_line(
    settings: Settings, store: Store, path: str, body: dict[str, object]
) -> None:
    engine = ScriptedEngine([T("a"), T("b"), Delay(60), DONE])
    app = draining_app(settings, engine, store, timeout=0.2)
    response, elapsed = await post_then_drain(app, engine, path, body, after_events=2)
    assert response.status_code == 200
    lines = ndjson(response)
    assert [line["done"] for line in lines[:-1]] == [False, False]
    assert lines[-1] == {"error": SHUTTING_DOWN}
    assert 0.2 <= elapsed < 2.0
    assert engine.generations[0].closed_early  # the generation itself was stopped
    assert app.state.drain.in_flight == 0


@pytest.mark.anyio
async def test_stream_that_ends_within_the_deadline_finishes(settings: Settings, store: Store) -> None:
    engine = ScriptedEngine([T("a"), Delay(0.2), T("b"), DONE])
    app = draining_app(settings, engine, store, timeout=5.0)
    response, elapsed = await post_then_drain(app, engine, "/api/generate", GENERATE, after_events=1)
    lines = ndjson(response)
    assert [line["response"] for line in lines] == ["a", "b", ""]
    assert lines[-1]["done"] is True
    assert elapsed < 2.0
    assert engine.generations[0].completed and not engine.generations[0].closed_early


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [True, False])
async def test_request_without_an_answer_yet_gets_503_at_the_deadline(
    settings: Settings, store: Store, stream: bool
) -> None:
    engine = ScriptedEngine([Delay(60), T("a"), DONE])
    app = draining_app(settings, engine, store, timeout=0.1)
    body = {**GENERATE, "stream": stream}
    response, elapsed = await post_then_drain(app, engine, "/api/generate", body, after_events=0)
    assert response.status_code == 503
    assert error_of(response) == SHUTTING_DOWN
    assert elapsed < 2.0


def stream_app(media_type: bytes) -> ShutdownMiddleware:
    """A bare ASGI app that sends one chunk of ``media_type`` and then hangs, behind a drain."""

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", media_type)]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await anyio.sleep(60)

    return ShutdownMiddleware(endless, Drain(0.05))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("media_type", "path", "last"),
    [
        (
            b"text/event-stream",
            "/v1/chat/completions",
            b'data: {"error":{"message":"server is shutting down","type":"api_error",'
            b'"param":null,"code":null}}\n\n',
        ),
        (b"application/x-ndjson", "/api/pull", b'{"error":"server is shutting down"}\n'),
        (b"application/octet-stream", "/api/blobs", b""),
    ],
)
async def test_cancelled_stream_ends_in_its_own_format(media_type: bytes, path: str, last: bytes) -> None:
    app = stream_app(media_type)

    async def begin_soon() -> None:
        await anyio.sleep(0.05)
        app.drain.begin()

    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(begin_soon)
        with anyio.fail_after(5):
            response = await client.post(path)
    assert response.content == b"data: {}\n\n" + last


@pytest.mark.anyio
async def test_drain_without_requests_cancels_nothing(tmp_path: Path) -> None:
    drain = Drain(0.01)
    drain.begin()
    drain.begin()  # idempotent
    await anyio.sleep(0.05)
    assert drain.draining and drain.in_flight == 0
