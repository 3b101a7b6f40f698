"""The daemon's wait for a loading worker, fed the worker's events as bytes: the load timeout
bounds the time without progress (like Ollama's), not the length of the load."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from daemon.engine import EngineError, ModelHandle
from daemon.worker_client import WorkerProcess, load_stalled_message
from worker import protocol
from worker.protocol import ModelInfo

INFO: ModelInfo = {"load_seconds": 1.5, "context_length": 4096}


def worker() -> WorkerProcess:
    return WorkerProcess(ModelHandle("m:latest", "0" * 64, Path("/nowhere")), "shm", stall=0)


async def wait_with(events: list[tuple[float, bytes]], timeout: float) -> tuple[ModelInfo, float]:
    """Deliver each event after its delay (as the transport's reader would); wait for ready."""
    process = worker()
    ready: asyncio.Future[ModelInfo] = asyncio.get_running_loop().create_future()
    process._ready = ready

    async def deliver() -> None:
        for delay, payload in events:
            await asyncio.sleep(delay)
            process._dispatch([payload])

    feeder = asyncio.create_task(deliver())
    started = time.monotonic()
    try:
        return await process._until_ready(timeout), time.monotonic() - started
    finally:
        feeder.cancel()


def test_a_long_load_that_keeps_reporting_steps_is_not_cut_short() -> None:
    steps = [(0.05, protocol.loading())] * 8 + [(0.05, protocol.ready(INFO))]
    info, took = asyncio.run(wait_with(steps, timeout=0.2))
    assert info == INFO
    assert took > 0.4  # twice the timeout, in steps shorter than it


def test_a_load_that_stops_reporting_times_out_after_the_bound() -> None:
    steps = [(0.05, protocol.loading()), (0.05, protocol.loading()), (5.0, protocol.ready(INFO))]
    with pytest.raises(EngineError) as caught:
        asyncio.run(wait_with(steps, timeout=0.2))
    assert (
        caught.value.message
        == load_stalled_message(0.2)
        == "timed out waiting for the model to load: no progress for 0.2s"
    )
    assert caught.value.status == 500


def test_without_a_bound_the_wait_lasts_until_ready() -> None:
    info, _ = asyncio.run(wait_with([(0.1, protocol.ready(INFO))], timeout=math.inf))
    assert info == INFO


def test_a_failed_load_ends_the_wait_with_the_worker_s_reason() -> None:
    failure = protocol.error(protocol.WORKER_ID, "failed to load model: bad config", 500)
    with pytest.raises(EngineError, match="failed to load model: bad config"):
        asyncio.run(wait_with([(0.05, protocol.loading()), (0.05, failure)], timeout=1.0))
