"""The real :class:`~daemon.engine.Engine`: one worker process per loaded model.

Loads of the same model are shared: a request for a model that is being loaded waits for
that load instead of starting another. Scheduling policy (keep-alive expiry, eviction,
queue limits) builds on this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

from daemon.engine import (
    EngineError,
    GenerationEvent,
    GenerationRequest,
    LoadedModel,
    ModelHandle,
)
from daemon.worker_client import WorkerProcess

log = logging.getLogger("mlxd.pool")


class WorkerPool:
    def __init__(self, ipc: str = "shm", load_timeout: float = 300.0) -> None:
        self.ipc = ipc
        self.load_timeout = load_timeout
        self._workers: dict[str, WorkerProcess] = {}
        self._loading: dict[str, asyncio.Task[WorkerProcess]] = {}

    async def load(self, model: ModelHandle) -> float:
        started = time.perf_counter()
        worker = self._workers.get(model.digest)
        if worker is not None and worker.alive:
            return 0.0
        await self._worker(model)
        return time.perf_counter() - started

    async def _worker(self, model: ModelHandle) -> WorkerProcess:
        worker = self._workers.get(model.digest)
        if worker is not None and worker.alive:
            return worker
        if worker is not None:  # it died: release what it held, then start afresh
            del self._workers[model.digest]
            await worker.stop()
        task = self._loading.get(model.digest)
        if task is None:
            task = asyncio.create_task(self._start(model))
            self._loading[model.digest] = task
            task.add_done_callback(lambda _: self._loading.pop(model.digest, None))
        # shield: a client that goes away must not cancel a load other requests wait for.
        return await asyncio.shield(task)

    async def _start(self, model: ModelHandle) -> WorkerProcess:
        log.info("loading %s from %s (ipc=%s)", model.name, model.path, self.ipc)
        worker = WorkerProcess(model, self.ipc)
        info = await worker.start(self.load_timeout)
        log.info(
            "loaded %s in %.2fs (%.1f MiB of weights, %s)",
            model.name,
            info.get("load_seconds", 0.0),
            info.get("memory_bytes", 0) / 2**20,
            info.get("device", "?"),
        )
        self._workers[model.digest] = worker
        return worker

    async def generate(
        self, model: ModelHandle, request: GenerationRequest
    ) -> AsyncIterator[GenerationEvent]:
        worker = await self._worker(model)
        stream: AsyncGenerator[GenerationEvent, None] = worker.generate(request)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def unload(self, model: ModelHandle) -> None:
        task = self._loading.get(model.digest)
        if task is not None:
            with contextlib.suppress(EngineError):
                await asyncio.shield(task)
        worker = self._workers.pop(model.digest, None)
        if worker is not None:
            log.info("unloading %s", model.name)
            await worker.stop()

    def loaded(self) -> list[LoadedModel]:
        return [
            LoadedModel(
                name=w.model.name,
                digest=w.model.digest,
                memory_bytes=int(w.info.get("memory_bytes", 0)),
                context_length=int(w.info.get("context_length", 0)),
            )
            for w in self._workers.values()
            if w.alive
        ]

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
