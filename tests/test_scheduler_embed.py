"""``Scheduler.embed`` over a fake encoder worker: loading, keep-alive, what ``loaded()`` says."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import daemon.scheduler
from daemon.engine import Embeddings, EngineError, ModelHandle
from daemon.scheduler import Limits, Scheduler
from worker.protocol import ModelInfo

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def short_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.scheduler, "HOLD_SECONDS", 0.05)


class FakeEncoder:
    def __init__(self, model: ModelHandle) -> None:
        self.model = model
        self.info: ModelInfo = {}
        self.alive = False
        self.calls: list[tuple[list[str], bool, int, bool, int]] = []
        self.gate: asyncio.Event | None = None

    async def start(self, timeout: float) -> ModelInfo:
        self.alive = True
        self.info = {"kind": "encoder", "context_length": 256, "memory_bytes": 10, "embedding_length": 3}
        return self.info

    async def embed(
        self,
        inputs: list[str],
        truncate: bool = True,
        dimensions: int = 0,
        *,
        normalize: bool = True,
        num_ctx: int = 0,
    ) -> Embeddings:
        self.calls.append((inputs, truncate, dimensions, normalize, num_ctx))
        if self.gate is not None:
            await self.gate.wait()
        if inputs == ["fail"]:
            raise EngineError("the input length exceeds the context length", 400)
        return Embeddings(np.ones((len(inputs), 3), dtype=np.float32), 2 * len(inputs))

    async def stop(self) -> None:
        self.alive = False


@pytest.fixture
def model(tmp_path: Path) -> ModelHandle:
    path = tmp_path / "m"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * 100)
    return ModelHandle("minilm:latest", "d" * 64, path)


async def test_embed_loads_and_reports_the_encoder(model: ModelHandle) -> None:
    workers: list[FakeEncoder] = []

    def factory(handle: ModelHandle) -> FakeEncoder:
        workers.append(FakeEncoder(handle))
        return workers[-1]

    scheduler = Scheduler(factory, Limits(context_length=4096))
    result = await scheduler.embed(model, ["a", "b"], False, 2, num_ctx=64)
    assert result.vectors.shape == (2, 3) and result.prompt_eval_count == 4
    (worker,) = workers
    assert worker.calls == [(["a", "b"], False, 2, True, 64)]
    (loaded,) = scheduler.loaded()
    assert loaded.context_length == 256  # the encoder's own limit, not the server's num_ctx

    with pytest.raises(EngineError) as info:
        await scheduler.embed(model, ["fail"])
    assert info.value.status == 400
    assert scheduler.loaded()  # an error does not unload the model
    await scheduler.close()


async def test_embed_holds_the_model_then_keep_alive_zero_unloads(model: ModelHandle) -> None:
    workers: list[FakeEncoder] = []

    def factory(handle: ModelHandle) -> FakeEncoder:
        workers.append(FakeEncoder(handle))
        return workers[-1]

    scheduler = Scheduler(factory)
    await scheduler.load(model, keep_alive=0.0)
    gate = asyncio.Event()
    workers[0].gate = gate
    task = asyncio.create_task(scheduler.embed(model, ["x"], keep_alive=0.0))
    await asyncio.sleep(0.15)  # past the load's hold: only the running request keeps it
    assert scheduler.loaded() and workers[0].alive
    gate.set()
    await task
    for _ in range(50):
        if not scheduler.loaded():
            break
        await asyncio.sleep(0.01)
    assert scheduler.loaded() == [] and not workers[0].alive
    await scheduler.close()
