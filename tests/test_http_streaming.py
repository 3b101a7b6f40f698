"""Streaming mechanics: errors before and after the first byte, client disconnects, the clock."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from daemon.engine import (
    RUNNER_STOPPED,
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ModelHandle,
)
from daemon.engine import TextChunk as T
from daemon.ndjson import Clock
from daemon.routes.inference import INCOMPLETE
from daemon.testing import Delay, ScriptedEngine
from tests.http_support import error_of, json_body, ndjson

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

DONE = Finished("stop", 1, 1, 1, 1)
GENERATE = {"model": "tiny", "prompt": "x"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(("path", "payload"), [("/api/generate", GENERATE), ("/api/chat", CHAT)])
@pytest.mark.parametrize("stream", [True, False])
async def test_error_before_the_first_byte_keeps_its_status(
    client: httpx.AsyncClient, engine: ScriptedEngine, path: str, payload: dict[str, Any], stream: bool
) -> None:
    engine.script = [Delay(0.001), EngineError("model is overloaded", 503)]
    response = await client.post(path, json={**payload, "stream": stream})
    assert (response.status_code, error_of(response)) == (503, "model is overloaded")
    engine.script = [EngineError(RUNNER_STOPPED)]
    response = await client.post(path, json={**payload, "stream": stream})
    assert (response.status_code, error_of(response)) == (500, RUNNER_STOPPED)


async def test_error_after_the_first_byte_is_a_last_line(
    client: httpx.AsyncClient, engine: ScriptedEngine
) -> None:
    engine.script = [T("Hel"), T("lo"), EngineError("rate limit exceeded", 429)]
    for path, payload in (("/api/generate", GENERATE), ("/api/chat", CHAT)):
        response = await client.post(path, json=payload)
        assert response.status_code == 200
        lines = ndjson(response)
        assert len(lines) == 3 and lines[-1] == {"error": "rate limit exceeded"}
    assert all(record.failed for record in engine.generations)


async def test_not_streamed_error_after_text(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.script = [T("Hel"), EngineError("rate limit exceeded", 429)]
    response = await client.post("/api/generate", json={**GENERATE, "stream": False})
    assert (response.status_code, error_of(response)) == (429, "rate limit exceeded")


async def test_engine_that_stops_without_finishing(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.script = [T("a")]
    assert ndjson(await client.post("/api/generate", json=GENERATE))[-1] == {"error": INCOMPLETE}
    response = await client.post("/api/generate", json={**GENERATE, "stream": False})
    assert (response.status_code, error_of(response)) == (500, INCOMPLETE)
    engine.script = []
    response = await client.post("/api/chat", json=CHAT)
    assert (response.status_code, error_of(response)) == (500, INCOMPLETE)


async def test_finished_first(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    engine.script = [DONE]
    lines = ndjson(await client.post("/api/generate", json=GENERATE))
    assert len(lines) == 1 and lines[0]["done"] is True and lines[0]["response"] == ""


class BrokenEngine(ScriptedEngine):
    """Raises a plain bug (not an EngineError) after ``good`` chunks."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good
        self.closed_streams = 0

    async def generate(
        self, model: ModelHandle, request: GenerationRequest
    ) -> AsyncIterator[GenerationEvent]:
        try:
            for _ in range(self.good):
                yield T("ok")
            raise KeyError("slot 7")
        finally:
            self.closed_streams += 1


@pytest.mark.parametrize("good", [0, 1])
async def test_unexpected_exception_is_a_plain_500(
    app: Starlette, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, good: int
) -> None:
    engine = BrokenEngine(good)
    app.state.services = dataclasses.replace(app.state.services, engine=engine)
    with caplog.at_level(logging.ERROR, logger="mlxd.http"):
        response = await client.post("/api/generate", json=GENERATE)
    if good:
        assert response.status_code == 200
        assert ndjson(response)[-1] == {"error": "internal server error: 'slot 7'"}
    else:
        assert (response.status_code, error_of(response)) == (500, "internal server error: 'slot 7'")
    assert "Traceback" not in response.text
    assert any(record.exc_info for record in caplog.records)  # the traceback goes to the log
    assert engine.closed_streams == 1


async def test_unexpected_exception_in_a_handler(
    app: Starlette, client: httpx.AsyncClient, engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_load(model: ModelHandle, keep_alive: float | None = None) -> float:
        raise RuntimeError("disk on fire\nsecond line")

    engine.load = broken_load  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="mlxd.http"):
        response = await client.post("/api/chat", json=CHAT)
    assert (response.status_code, error_of(response)) == (500, "internal server error: disk on fire")
    assert any("disk on fire" in str(record.exc_info) for record in caplog.records)


# ---------------------------------------------------------------- client disconnects


async def call_raw(
    app: Starlette,
    path: str,
    payload: dict[str, Any],
    disconnect_after_chunks: int,
    slow_send: float = 0.0,
    senders: list[asyncio.Task[Any] | None] | None = None,
) -> list[Message]:
    """Drive the ASGI app by hand: the client goes away after ``disconnect_after_chunks`` body
    chunks; ``slow_send`` makes each body write take that long (a slow network); ``senders``
    collects the task that sent each message."""
    sent: list[Message] = []
    chunks = 0
    gone = anyio.Event()
    if disconnect_after_chunks == 0:
        gone.set()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": orjson.dumps(payload), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal chunks
        sent.append(message)
        if senders is not None:
            senders.append(asyncio.current_task())
        if message["type"] == "http.response.body" and message.get("body"):
            chunks += 1
            if chunks >= disconnect_after_chunks:
                gone.set()
            await anyio.sleep(slow_send)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    with anyio.fail_after(5):
        await app(scope, receive, send)
    return sent


def slow_script(chunks: int = 50, delay: float = 0.02) -> list[Any]:
    return [T("first"), *[step for _ in range(chunks) for step in (Delay(delay), T("more"))], DONE]


@pytest.mark.parametrize(("path", "payload"), [("/api/generate", GENERATE), ("/api/chat", CHAT)])
async def test_disconnect_mid_stream_cancels_the_generation(
    app: Starlette, engine: ScriptedEngine, path: str, payload: dict[str, Any]
) -> None:
    engine.script = slow_script()
    started = time.perf_counter()
    sent = await call_raw(app, path, {**payload, "keep_alive": 0}, disconnect_after_chunks=1)
    assert time.perf_counter() - started < 0.5  # not the ~1 s the whole script takes
    record = engine.generations[0]
    assert record.closed_early and not record.completed
    assert record.events_sent < 5
    assert sent[0]["status"] == 200
    assert len(engine.unloads) == 1  # keep_alive 0 still unloads


async def test_disconnect_while_writing_closes_the_generation(app: Starlette, engine: ScriptedEngine) -> None:
    """The client goes away while a chunk is being written (the generator waits at a yield)."""
    engine.script = [T("a"), T("b"), T("c"), DONE]
    await call_raw(app, "/api/generate", GENERATE, disconnect_after_chunks=1, slow_send=0.2)
    record = engine.generations[0]
    assert record.closed_early and record.events_sent == 1


async def test_disconnect_before_the_first_chunk(app: Starlette, engine: ScriptedEngine) -> None:
    engine.script = [Delay(2.0), T("late"), DONE]
    started = time.perf_counter()
    await call_raw(app, "/api/generate", GENERATE, disconnect_after_chunks=0)
    assert time.perf_counter() - started < 1.0
    assert engine.generations[0].closed_early and engine.generations[0].events_sent == 0


async def test_disconnect_while_not_streamed(app: Starlette, engine: ScriptedEngine) -> None:
    engine.script = slow_script()
    started = time.perf_counter()
    await call_raw(app, "/api/chat", {**CHAT, "stream": False}, disconnect_after_chunks=0)
    assert time.perf_counter() - started < 0.5
    assert engine.generations[0].closed_early


async def test_a_finished_stream_is_not_closed_early(app: Starlette, engine: ScriptedEngine) -> None:
    sent = await call_raw(app, "/api/generate", GENERATE, disconnect_after_chunks=99)
    record = engine.generations[0]
    assert record.completed and not record.closed_early
    bodies = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert bodies.count(b"\n") == 3
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_every_line_is_sent_from_the_request_s_own_task(app: Starlette, engine: ScriptedEngine) -> None:
    """No task hop between the handler and ``send`` (a hop delays the first line by a loop
    iteration); the disconnect watch is the only other task, and it never sends."""
    engine.script = [T("a"), T("b"), DONE]
    senders: list[asyncio.Task[Any] | None] = []
    sent = await call_raw(app, "/api/generate", GENERATE, disconnect_after_chunks=99, senders=senders)
    assert len(sent) == 5  # start, three lines, end
    assert set(senders) == {asyncio.current_task()}


async def test_load_and_unload_answers_are_json(client: httpx.AsyncClient) -> None:
    assert json_body(await client.post("/api/generate", json={"model": "tiny"}))["done_reason"] == "load"


def test_clock_format(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    stamps = iter([1_700_000_000_123_456_789, 1_700_000_000_120_000_000, 1_700_000_001_000_000_000])
    monkeypatch.setattr(time, "time_ns", lambda: next(stamps))
    assert clock.now() == "2023-11-14T22:13:20.123456789Z"
    assert clock.now() == "2023-11-14T22:13:20.12Z"
    assert clock.now() == "2023-11-14T22:13:21Z"
