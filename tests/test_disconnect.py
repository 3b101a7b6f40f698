"""DisconnectWatch and until_disconnect, driven by hand-made ``receive`` callables."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest
from starlette.types import Message

from daemon.disconnect import DisconnectWatch, until_disconnect

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Client:
    """A ``receive`` that answers ``http.disconnect`` once :meth:`leave` is called."""

    def __init__(self) -> None:
        self.left = anyio.Event()
        self.calls = 0

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> Message:
        self.calls += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_disconnect_cancels_the_open_guard() -> None:
    client = Client()
    watch = DisconnectWatch(client.receive)
    reached_end = False
    with anyio.fail_after(2):
        with watch.guard():
            await settle()
            client.leave()
            await anyio.sleep(5)
            reached_end = True
    assert watch.gone and not reached_end
    watch.close()


async def test_a_disconnect_that_came_first_cancels_the_next_guard_at_once() -> None:
    client = Client()
    client.leave()
    watch = DisconnectWatch(client.receive)
    await settle()
    assert watch.gone
    with anyio.fail_after(2):
        with watch.guard() as scope:
            await anyio.sleep(5)
    assert scope.cancelled_caught
    watch.close()


async def test_between_guards_nothing_is_cancelled() -> None:
    """The disconnect lands while no guard is open: it is remembered, nothing is cancelled."""
    client = Client()
    watch = DisconnectWatch(client.receive)
    with watch.guard() as first:
        await settle()
    client.leave()
    await settle()
    assert watch.gone and not first.cancel_called
    await anyio.sleep(0.01)  # still running: nothing cancelled this task
    watch.close()


async def test_close_stops_listening() -> None:
    client = Client()
    watch = DisconnectWatch(client.receive)
    await settle()
    watch.close()
    watch.close()  # idempotent
    client.leave()
    await settle()
    assert not watch.gone
    assert watch._task.done()


async def test_a_watch_never_closed_ends_with_the_request_and_cancels_nothing() -> None:
    """The server answers ``http.disconnect`` once the response is complete: the task ends."""
    client = Client()
    watch = DisconnectWatch(client.receive)
    client.leave()
    await settle()
    assert watch._task.done() and watch.gone


async def test_late_body_parts_are_skipped() -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"x", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    watch = DisconnectWatch(receive)
    await settle()
    assert watch.gone and not messages
    watch.close()


async def test_a_failing_receive_counts_as_gone(caplog: pytest.LogCaptureFixture) -> None:
    async def receive() -> Message:
        raise OSError("connection reset")

    with caplog.at_level(logging.DEBUG, logger="mlxd.http"):
        watch = DisconnectWatch(receive)
        await settle()
    assert watch.gone
    assert any("receive failed" in record.message for record in caplog.records)
    watch.close()


async def test_until_disconnect_returns_the_result_and_closes_its_watch() -> None:
    client = Client()

    async def work() -> int:
        await settle()
        return 42

    assert await until_disconnect(client.receive, work) == 42
    assert client.calls == 1
    client.leave()
    await settle()  # a disconnect after the work ends changes nothing


async def test_until_disconnect_gives_none_when_the_client_leaves() -> None:
    client = Client()

    async def work() -> int:
        await settle()
        client.leave()
        await anyio.sleep(5)
        return 42

    with anyio.fail_after(2):
        assert await until_disconnect(client.receive, work) is None


async def test_until_disconnect_raises_the_work_s_own_exception() -> None:
    client = Client()

    async def work() -> int:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):  # not an ExceptionGroup
        await until_disconnect(client.receive, work)
