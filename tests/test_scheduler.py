"""The scheduler over fake workers: keep-alive, eviction, the queue limit, the memory guard.

No processes and no MLX: a fake worker "loads" instantly (or after a delay) and generates
what its request asks for; a generation can be held open with a gate. Durations are short
real ones (tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

import daemon.scheduler
from daemon.engine import EngineError, Finished, GenerationEvent, GenerationRequest, ModelHandle, TextChunk
from daemon.memory import human_bytes, too_big_message
from daemon.scheduler import SERVER_BUSY, Limits, Scheduler
from worker.protocol import ModelInfo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def short_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.scheduler, "HOLD_SECONDS", 0.05)


class FakeWorker:
    def __init__(self, model: ModelHandle, factory: Factory) -> None:
        self.model = model
        self.info: ModelInfo = {}
        self.factory = factory
        self._alive = False

    @property
    def alive(self) -> bool:
        return self._alive

    def die(self) -> None:
        self._alive = False

    async def start(self, timeout: float) -> ModelInfo:
        self.factory.events.append(("start", self.model.name))
        await asyncio.sleep(self.factory.load_delay)
        if self.model.name in self.factory.broken:
            self.factory.events.append(("failed", self.model.name))
            raise EngineError(f"cannot load {self.model.name}")
        self._alive = True
        self.info = {"memory_bytes": self.factory.sizes.get(self.model.name, 0), "context_length": 32}
        return self.info

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        yield TextChunk(f"{self.model.name}:")
        gate = self.factory.gates.get(request.prompt)
        if gate is not None:
            await gate.wait()
        yield TextChunk(request.prompt)
        yield Finished("stop", 1, 1, 1, 1)

    async def stop(self) -> None:
        await asyncio.sleep(self.factory.stop_delay)
        self._alive = False
        self.factory.events.append(("stop", self.model.name))


class Factory:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.broken: set[str] = set()
        self.sizes: dict[str, int] = {}
        self.load_delay = 0.0
        self.stop_delay = 0.0
        self.workers: list[FakeWorker] = []

    def __call__(self, model: ModelHandle) -> FakeWorker:
        worker = FakeWorker(model, self)
        self.workers.append(worker)
        return worker

    def gate(self, prompt: str) -> asyncio.Event:
        self.gates[prompt] = asyncio.Event()
        return self.gates[prompt]

    def started(self) -> list[str]:
        return [name for kind, name in self.events if kind == "start"]

    def stopped(self) -> list[str]:
        return [name for kind, name in self.events if kind == "stop"]


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def models(tmp_path: Path) -> dict[str, ModelHandle]:
    """Models a, b, c, d with 1000 bytes of weights each, and huge (1 MB)."""
    out = {}
    for name, size in (("a", 1000), ("b", 1000), ("c", 1000), ("d", 1000), ("huge", 1_000_000)):
        path = tmp_path / name
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"\0" * size)
        (path / "config.json").write_text("{}")
        out[name] = ModelHandle(name=name, digest=name * 8, path=path)
    return out


def make(factory: Factory, **limits: float) -> Scheduler:
    return Scheduler(factory, Limits(**limits))  # type: ignore[arg-type]


async def run(scheduler: Scheduler, model: ModelHandle, prompt: str = "hi", **kw: float | None) -> str:
    request = GenerationRequest(prompt=prompt, raw=True, keep_alive=kw.get("keep_alive"))
    parts = []
    async for event in scheduler.generate(model, request):
        if isinstance(event, TextChunk):
            parts.append(event.text)
    return "".join(parts)


def loaded_names(scheduler: Scheduler) -> list[str]:
    return sorted(m.name for m in scheduler.loaded())


async def until(condition: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------------- keep-alive


async def test_load_reports_the_default_keep_alive(factory: Factory, models: dict[str, ModelHandle]) -> None:
    scheduler = make(factory, keep_alive=300)
    assert await scheduler.load(models["a"]) >= 0
    [info] = scheduler.loaded()
    assert (info.name, info.digest, info.memory_bytes) == ("a", models["a"].digest, 1000)
    assert info.context_length == 4096  # the default num_ctx until a request says otherwise
    assert 299 < info.expires_at - time.time() <= 300
    assert await scheduler.load(models["a"]) == 0.0  # already loaded
    assert factory.started() == ["a"]
    await scheduler.close()
    assert factory.stopped() == ["a"]


async def test_expiry_after_the_last_request(factory: Factory, models: dict[str, ModelHandle]) -> None:
    scheduler = make(factory)
    assert await run(scheduler, models["a"], keep_alive=0.15) == "a:hi"
    assert loaded_names(scheduler) == ["a"]
    await asyncio.sleep(0.05)
    assert loaded_names(scheduler) == ["a"]
    await until(lambda: factory.stopped() == ["a"])
    assert loaded_names(scheduler) == []
    await scheduler.close()


async def test_keep_alive_zero_unloads_when_the_request_ends(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory)
    await scheduler.load(models["a"], keep_alive=0)
    assert await run(scheduler, models["a"], keep_alive=0) == "a:hi"
    assert loaded_names(scheduler) == []  # gone at once: no new request can attach
    await until(lambda: factory.stopped() == ["a"])
    assert factory.started() == ["a"]  # the load's hold kept it for its generation
    await scheduler.close()


async def test_a_busy_model_never_expires(factory: Factory, models: dict[str, ModelHandle]) -> None:
    scheduler = make(factory)
    gate = factory.gate("slow")
    task = asyncio.create_task(run(scheduler, models["a"], "slow", keep_alive=0.05))
    await until(lambda: loaded_names(scheduler) == ["a"])
    await asyncio.sleep(0.2)
    assert loaded_names(scheduler) == ["a"] and factory.stopped() == []
    [info] = scheduler.loaded()
    assert info.expires_at - time.time() <= 0.05  # busy: now + keep_alive
    gate.set()
    assert await task == "a:slow"
    await until(lambda: factory.stopped() == ["a"])
    await scheduler.close()


async def test_a_request_without_keep_alive_keeps_the_current_one(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory, keep_alive=300)
    await scheduler.load(models["a"], keep_alive=0.1)
    await run(scheduler, models["a"])  # no keep_alive: 0.1 stays
    await until(lambda: factory.stopped() == ["a"], timeout=1.0)
    await run(scheduler, models["a"], keep_alive=math.inf)
    [info] = scheduler.loaded()
    assert info.expires_at == math.inf
    await run(scheduler, models["a"], keep_alive=200)  # a later request replaces it
    [info] = scheduler.loaded()
    assert 199 < info.expires_at - time.time() <= 200
    await scheduler.close()


async def test_load_idiom_holds_then_expires(factory: Factory, models: dict[str, ModelHandle]) -> None:
    scheduler = make(factory)
    await scheduler.load(models["a"], keep_alive=0)  # no generation follows
    assert loaded_names(scheduler) == ["a"]  # held for a moment
    await until(lambda: factory.stopped() == ["a"], timeout=1.0)
    await scheduler.close()


async def test_num_ctx_of_the_latest_request_is_reported(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory, context_length=2048)
    await scheduler.load(models["a"])
    assert scheduler.loaded()[0].context_length == 2048
    request = GenerationRequest(prompt="x", raw=True, options={"num_ctx": 8192})
    async for _ in scheduler.generate(models["a"], request):
        pass
    assert scheduler.loaded()[0].context_length == 8192
    await scheduler.close()


# ---------------------------------------------------------------------------- unload


async def test_unload_now_or_after_the_running_requests(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory)
    await scheduler.unload(models["a"])  # not loaded: nothing happens
    await scheduler.load(models["a"])
    await scheduler.unload(models["a"])
    assert factory.stopped() == ["a"] and loaded_names(scheduler) == []

    gate = factory.gate("slow")
    task = asyncio.create_task(run(scheduler, models["b"], "slow", keep_alive=math.inf))
    await until(lambda: loaded_names(scheduler) == ["b"])
    await scheduler.unload(models["b"])
    assert factory.stopped() == ["a"]  # still running
    gate.set()
    assert await task == "b:slow"
    await until(lambda: factory.stopped() == ["a", "b"])
    await scheduler.close()


async def test_unload_waits_for_a_load_in_progress(factory: Factory, models: dict[str, ModelHandle]) -> None:
    factory.load_delay = 0.05
    scheduler = make(factory)
    loading = asyncio.create_task(scheduler.load(models["a"]))
    await asyncio.sleep(0.01)
    await scheduler.unload(models["a"])
    assert factory.stopped() == ["a"]
    assert await loading > 0  # the load itself succeeded
    await scheduler.close()


# ---------------------------------------------------------------------------- loading


async def test_concurrent_requests_share_one_load(factory: Factory, models: dict[str, ModelHandle]) -> None:
    factory.load_delay = 0.05
    scheduler = make(factory)
    results = await asyncio.gather(*(run(scheduler, models["a"], str(i)) for i in range(5)))
    assert results == [f"a:{i}" for i in range(5)]
    assert factory.started() == ["a"]
    await scheduler.close()


async def test_a_client_that_leaves_does_not_cancel_a_shared_load(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    factory.load_delay = 0.05
    scheduler = make(factory)
    first = asyncio.create_task(scheduler.load(models["a"]))
    second = asyncio.create_task(scheduler.load(models["a"]))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second > 0
    assert factory.started() == ["a"] and loaded_names(scheduler) == ["a"]
    await scheduler.close()


async def test_a_failed_load_fails_its_waiters_and_is_retried(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    factory.broken.add("a")
    scheduler = make(factory)
    results = await asyncio.gather(
        scheduler.load(models["a"]), run(scheduler, models["a"]), return_exceptions=True
    )
    assert [str(r) for r in results] == ["cannot load a", "cannot load a"]
    assert loaded_names(scheduler) == []
    factory.broken.clear()
    assert await run(scheduler, models["a"]) == "a:hi"
    assert factory.started() == ["a", "a"]
    await scheduler.close()


async def test_a_dead_worker_is_replaced(factory: Factory, models: dict[str, ModelHandle]) -> None:
    scheduler = make(factory)
    await scheduler.load(models["a"])
    factory.workers[0].die()
    assert loaded_names(scheduler) == []  # not reported, and released
    await until(lambda: factory.stopped() == ["a"])
    assert await run(scheduler, models["a"]) == "a:hi"
    assert factory.started() == ["a", "a"]
    await scheduler.close()


# ---------------------------------------------------------------------------- eviction


async def test_least_recently_used_idle_model_is_evicted(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory, max_loaded=2)
    await run(scheduler, models["a"])
    await run(scheduler, models["b"])
    await run(scheduler, models["c"])
    assert loaded_names(scheduler) == ["b", "c"] and factory.stopped() == ["a"]
    await run(scheduler, models["b"])  # b is now the most recently used
    await run(scheduler, models["a"])
    assert loaded_names(scheduler) == ["a", "b"] and factory.stopped() == ["a", "c"]
    await scheduler.close()


async def test_an_idle_model_goes_before_a_busy_one(factory: Factory, models: dict[str, ModelHandle]) -> None:
    scheduler = make(factory, max_loaded=2)
    await run(scheduler, models["a"])
    await run(scheduler, models["b"])
    gate = factory.gate("slow")
    busy = asyncio.create_task(run(scheduler, models["a"], "slow"))  # a: least recent, but busy
    await asyncio.sleep(0.01)
    await run(scheduler, models["c"])
    assert factory.stopped() == ["b"]
    gate.set()
    assert await busy == "a:slow"
    await scheduler.close()


async def test_a_load_waits_until_a_busy_model_is_idle(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory, max_loaded=1)
    gate = factory.gate("slow")
    busy = asyncio.create_task(run(scheduler, models["a"], "slow"))
    await until(lambda: loaded_names(scheduler) == ["a"])
    waiting = asyncio.create_task(run(scheduler, models["b"]))
    await asyncio.sleep(0.1)
    assert not waiting.done() and factory.started() == ["a"]
    assert await run(scheduler, models["a"], "again") == "a:again"  # a loaded model is served at once
    gate.set()
    assert await busy == "a:slow"
    assert await waiting == "b:hi"
    assert factory.events == [("start", "a"), ("stop", "a"), ("start", "b")]
    await scheduler.close()


async def test_a_full_queue_answers_503_and_disturbs_nothing(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory, max_loaded=1, max_queue=1)
    gate = factory.gate("slow")
    busy = asyncio.create_task(run(scheduler, models["a"], "slow"))
    await until(lambda: loaded_names(scheduler) == ["a"])
    queued = asyncio.create_task(run(scheduler, models["b"]))
    await asyncio.sleep(0.02)
    for refused in (scheduler.load(models["c"]), run(scheduler, models["b"])):
        with pytest.raises(EngineError) as info:
            await refused
        assert (info.value.status, info.value.message) == (503, SERVER_BUSY)
    assert await run(scheduler, models["a"], "fast") == "a:fast"  # skips the queue
    gate.set()
    assert await busy == "a:slow"
    assert await queued == "b:hi"
    assert factory.started() == ["a", "b"]
    await scheduler.close()


async def test_a_held_model_is_not_evicted_before_its_generation(
    factory: Factory, models: dict[str, ModelHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon.scheduler, "HOLD_SECONDS", 5.0)
    scheduler = make(factory, max_loaded=1)
    await scheduler.load(models["a"])
    other = asyncio.create_task(scheduler.load(models["b"]))
    await asyncio.sleep(0.05)
    assert not other.done()
    assert await run(scheduler, models["a"]) == "a:hi"  # consumes the hold
    await other
    assert factory.events == [("start", "a"), ("stop", "a"), ("start", "b")]
    await scheduler.close()


async def test_a_load_waits_for_expired_workers_to_exit(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    factory.stop_delay = 0.1
    scheduler = make(factory)
    await run(scheduler, models["a"], keep_alive=0)  # its worker now exits in the background
    await scheduler.load(models["b"])
    assert factory.events == [("start", "a"), ("stop", "a"), ("start", "b")]
    await scheduler.close()


# ---------------------------------------------------------------------------- memory guard


async def test_a_model_too_big_for_memory_is_refused(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory, memory_bytes=500_000)
    await scheduler.load(models["a"])
    with pytest.raises(EngineError) as info:
        await run(scheduler, models["huge"])
    assert info.value.status == 500
    assert info.value.message == "model requires more system memory (976.6 KiB) than is available (488.3 KiB)"
    assert factory.started() == ["a"] and loaded_names(scheduler) == ["a"]  # nothing else touched
    await scheduler.close()


async def test_idle_models_are_evicted_to_free_memory(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    factory.sizes = {"a": 1000, "b": 1000, "c": 1000}
    scheduler = make(factory, memory_bytes=2500, max_loaded=3)
    await run(scheduler, models["a"])
    await run(scheduler, models["b"])
    await run(scheduler, models["c"])  # 3000 > 2500: a goes although 3 may be loaded
    assert loaded_names(scheduler) == ["b", "c"] and factory.stopped() == ["a"]
    await scheduler.close()


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 2**20 + 1, 12 * 2**30 + 2**29)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 MiB",
        "12.5 GiB",
    ]
    assert too_big_message(2**31, 2**30) == (
        "model requires more system memory (2.0 GiB) than is available (1.0 GiB)"
    )


# ---------------------------------------------------------------------------- shutdown


async def test_close_stops_everything_and_refuses_new_work(
    factory: Factory, models: dict[str, ModelHandle]
) -> None:
    scheduler = make(factory)
    await run(scheduler, models["a"])
    await run(scheduler, models["b"])
    await scheduler.close()
    assert sorted(factory.stopped()) == ["a", "b"]
    with pytest.raises(EngineError):
        await scheduler.load(models["a"])
