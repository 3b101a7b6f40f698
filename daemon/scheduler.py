"""Which models are loaded, for how long, and who waits for a load (reference §6).

The :class:`Scheduler` is the real :class:`~daemon.engine.Engine` over any worker factory
(``daemon.pool`` gives it real worker processes; tests give it fakes). Its rules, Ollama's:

* **Keep-alive.** Each loaded model has a ``keep_alive``: the first request's, else the
  server default; a later request that gives one replaces it. The idle timer starts when
  the model's last running request ends; a model with running requests never expires.
  ``keep_alive`` 0 unloads as soon as the model is idle; ``math.inf`` never does.
* **Queue.** A request for a loaded model starts at once. Any other request waits for a
  load, and loads run one at a time, in order; requests for a model that is being loaded
  wait for that one load. At most ``max_queue`` requests wait: the next one is refused with
  Ollama's 503 at once.
* **Eviction.** Before a load, while ``max_loaded`` models are loaded or the new model would
  not fit in memory, the least recently used *idle* model is unloaded; if every model is
  busy, the load waits until one becomes idle.
* **Memory guard.** A model whose weights alone exceed the memory budget is refused with a
  500 (nothing is started, nothing crashes).

``load()`` and the ``generate()`` that follows it are two calls: between them the model is
*held* for a short while (``HOLD_SECONDS``), so that neither expiry (even with keep-alive 0)
nor eviction takes it away from the request that just loaded it. The unload idiom drops
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.durations import DEFAULT_KEEP_ALIVE, DEFAULT_LOAD_TIMEOUT
from daemon.engine import (
    Embeddings,
    EngineError,
    GenerationEvent,
    GenerationRequest,
    LoadedModel,
    ModelHandle,
)
from daemon.memory import too_big_message, weights_size
from worker.protocol import ModelInfo

log = logging.getLogger("mlxd.scheduler")

# Ollama's ErrMaxQueue text (two spaces) and status.
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
HOLD_SECONDS = 1.0  # how long a load keeps the model for the generation that follows it
_POLL_SECONDS = 1.0  # a load waiting for an idle model re-checks at least this often


class Worker(Protocol):
    """One loaded model (``daemon.worker_client.WorkerProcess`` is the real one)."""

    model: ModelHandle
    info: ModelInfo

    @property
    def alive(self) -> bool: ...

    async def start(self, timeout: float) -> ModelInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]: ...

    async def embed(
        self,
        inputs: list[str],
        truncate: bool = True,
        dimensions: int = 0,
        *,
        normalize: bool = True,
        num_ctx: int = 0,
    ) -> Embeddings: ...

    async def stop(self) -> None: ...


WorkerFactory = Callable[[ModelHandle], Worker]


@dataclass(frozen=True)
class Limits:
    max_loaded: int = 3  # OLLAMA_MAX_LOADED_MODELS
    max_queue: int = 512  # OLLAMA_MAX_QUEUE: requests that may wait for a load
    keep_alive: float = DEFAULT_KEEP_ALIVE  # OLLAMA_KEEP_ALIVE, seconds
    context_length: int = 4096  # the default num_ctx, reported by /api/ps
    memory_bytes: int = 0  # what all loaded models together may take; 0 = no guard
    load_timeout: float = DEFAULT_LOAD_TIMEOUT  # OLLAMA_LOAD_TIMEOUT: seconds without progress; inf = none


class _Slot:
    """A model that is loaded or being loaded, and who uses it."""

    def __init__(self, handle: ModelHandle, keep_alive: float) -> None:
        self.handle = handle
        self.keep_alive = keep_alive
        self.worker: Worker | None = None  # set once loaded
        self.loading: asyncio.Task[None] | None = None
        self.active = 0  # running generations
        self.waiters = 0  # requests waiting for this slot's load
        self.holds: list[float] = []  # deadlines of loads not yet followed by their generation
        self.expires = math.inf  # monotonic deadline once idle
        self.timer: asyncio.TimerHandle | None = None
        self.last_used = time.monotonic()
        self.weights = 0  # estimated from the files before loading
        self.num_ctx = 0  # of the latest request

    @property
    def ready(self) -> bool:
        return self.worker is not None and self.worker.alive

    @property
    def resident(self) -> int:
        reported = int(self.worker.info.get("memory_bytes", 0)) if self.worker is not None else 0
        return reported or self.weights

    def held(self, now: float) -> bool:
        self.holds = [deadline for deadline in self.holds if deadline > now]
        return bool(self.holds)

    def busy(self, now: float) -> bool:
        return self.active > 0 or self.waiters > 0 or self.held(now)


class Scheduler:
    def __init__(self, factory: WorkerFactory, limits: Limits | None = None) -> None:
        self.factory = factory
        self.limits = limits or Limits()
        self._slots: dict[str, _Slot] = {}  # by model digest
        self._load_lock = asyncio.Lock()  # loads run one at a time, first come first served
        self._pending = 0  # requests waiting for a load
        self._changed = asyncio.Event()  # set when a model becomes idle or goes away
        self._tasks: set[asyncio.Task[Any]] = set()  # unloads running in the background
        self._closed = False

    # ------------------------------------------------------------------ Engine

    async def load(self, model: ModelHandle, keep_alive: float | None = None) -> float:
        started = time.perf_counter()
        slot, waited = await self._acquire(model, keep_alive)
        slot.holds.append(time.monotonic() + HOLD_SECONDS)
        if slot.active == 0:
            self._idle(slot)  # (re)starts the expiry timer; the hold defers it
        return time.perf_counter() - started if waited else 0.0

    async def generate(
        self, model: ModelHandle, request: GenerationRequest
    ) -> AsyncIterator[GenerationEvent]:
        slot, _ = await self._acquire(model, request.keep_alive)
        worker = slot.worker
        assert worker is not None
        slot.active += 1
        if slot.holds:
            slot.holds.pop(0)
        self._cancel_timer(slot)
        slot.num_ctx = int(request.options.get("num_ctx", 0)) or slot.num_ctx
        try:
            stream = worker.generate(request)
            try:
                async for event in stream:
                    yield event
            finally:
                await stream.aclose()
        finally:
            slot.active -= 1
            slot.last_used = time.monotonic()
            if slot.active == 0:
                self._idle(slot)

    async def embed(
        self,
        model: ModelHandle,
        inputs: list[str],
        truncate: bool = True,
        dimensions: int = 0,
        keep_alive: float | None = None,
        *,
        normalize: bool = True,
        num_ctx: int = 0,
    ) -> Embeddings:
        slot, _ = await self._acquire(model, keep_alive)
        worker = slot.worker
        assert worker is not None
        slot.active += 1  # a running request, exactly as a generation
        if slot.holds:
            slot.holds.pop(0)
        self._cancel_timer(slot)
        if worker.info.get("kind") == "encoder":  # its context is the model's own limit
            slot.num_ctx = int(worker.info.get("context_length", 0)) or slot.num_ctx
        try:
            return await worker.embed(inputs, truncate, dimensions, normalize=normalize, num_ctx=num_ctx)
        finally:
            slot.active -= 1
            slot.last_used = time.monotonic()
            if slot.active == 0:
                self._idle(slot)

    async def unload(self, model: ModelHandle) -> None:
        slot = self._slots.get(model.digest)
        if slot is not None and slot.loading is not None:
            with contextlib.suppress(EngineError):
                await asyncio.shield(slot.loading)
            slot = self._slots.get(model.digest)
        if slot is None:
            return
        slot.keep_alive = 0.0
        slot.holds.clear()
        if slot.active == 0 and slot.waiters == 0:
            await self._unload(slot, "requested")
        # otherwise it goes when its last running request ends (keep-alive 0)

    def loaded(self) -> list[LoadedModel]:
        now, wall = time.monotonic(), time.time()
        out = []
        for slot in list(self._slots.values()):
            if slot.worker is None:
                continue  # still loading
            if not slot.ready:
                self._discard(slot, "its runner stopped")
                continue
            expires = now + slot.keep_alive if slot.active or slot.waiters else slot.expires
            out.append(
                LoadedModel(
                    name=slot.handle.name,
                    digest=slot.handle.digest,
                    memory_bytes=slot.resident,
                    context_length=slot.num_ctx or self.limits.context_length,
                    expires_at=wall + (expires - now) if math.isfinite(expires) else math.inf,
                    on_gpu="cpu" not in str(slot.worker.info.get("device", "gpu")).lower(),
                )
            )
        return out

    async def close(self) -> None:
        self._closed = True
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            self._cancel_timer(slot)
            if slot.loading is not None:
                slot.loading.cancel()
        loads = [slot.loading for slot in slots if slot.loading is not None]
        await asyncio.gather(*loads, return_exceptions=True)
        workers = [slot.worker for slot in slots if slot.worker is not None]
        await asyncio.gather(*(w.stop() for w in workers), *list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ loading

    async def _acquire(self, model: ModelHandle, keep_alive: float | None) -> tuple[_Slot, bool]:
        """The model's slot, loaded; whether this call had to wait for a load.

        Returns with no await between the slot being ready and the caller taking it (as a
        hold or a running request), so nothing can evict or expire it in between."""
        waited = False
        while True:
            if self._closed:
                raise EngineError("server is shutting down", 503)
            slot = self._slots.get(model.digest)
            if slot is not None and slot.worker is not None:
                if slot.ready:
                    if keep_alive is not None:
                        slot.keep_alive = keep_alive
                    return slot, waited
                self._discard(slot, "its runner stopped")  # died: release it, load afresh
                slot = None
            if self._pending >= self.limits.max_queue:
                raise EngineError(SERVER_BUSY, 503)
            if slot is None:
                slot = _Slot(model, self.limits.keep_alive if keep_alive is None else keep_alive)
                self._slots[model.digest] = slot
                slot.loading = self._start_load(slot)
            elif keep_alive is not None:
                slot.keep_alive = keep_alive
            assert slot.loading is not None
            waited = True
            self._pending += 1
            slot.waiters += 1
            try:
                # shield: a client that goes away must not cancel a load others wait for.
                await asyncio.shield(slot.loading)
            except BaseException:
                self._pending -= 1
                slot.waiters -= 1
                if slot.waiters == 0 and slot.active == 0 and slot.ready:
                    self._idle(slot)  # the last one waiting went away: start its keep-alive
                raise
            self._pending -= 1
            slot.waiters -= 1
            # loop: the loaded slot is taken above, without another await

    def _start_load(self, slot: _Slot) -> asyncio.Task[None]:
        task = asyncio.create_task(self._load(slot), name=f"load-{slot.handle.name}")
        # Mark the outcome as seen: every waiter may have gone away.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _load(self, slot: _Slot) -> None:
        model = slot.handle
        try:
            async with self._load_lock:
                slot.weights = await asyncio.to_thread(weights_size, model.path)
                await self._make_room(slot)
                log.info("loading %s from %s", model.name, model.path)
                worker = self.factory(model)
                info = await worker.start(self.limits.load_timeout)
                log.info(
                    "loaded %s in %.2fs (%.1f MiB of weights, %s)",
                    model.name,
                    info.get("load_seconds", 0.0),
                    info.get("memory_bytes", 0) / 2**20,
                    info.get("device", "?"),
                )
                slot.worker = worker
                slot.last_used = time.monotonic()
        except BaseException:
            if self._slots.get(model.digest) is slot:
                del self._slots[model.digest]
            raise
        finally:
            slot.loading = None
        if slot.waiters == 0:  # everyone who asked for it went away
            self._idle(slot)

    async def _make_room(self, slot: _Slot) -> None:
        """Unload idle models until ``slot`` may load: fewer than ``max_loaded`` models are
        loaded and its weights fit in the memory budget."""
        budget = self.limits.memory_bytes
        if budget and slot.weights > budget:
            raise EngineError(too_big_message(slot.weights, budget))
        # Workers that expired or died are still exiting: their memory is not free yet.
        if self._tasks:
            await asyncio.wait(set(self._tasks))  # (unlike gather, never cancels them)
        while True:
            now = time.monotonic()
            loaded = [s for s in self._slots.values() if s.worker is not None and s is not slot]
            for dead in [s for s in loaded if not s.ready]:
                self._discard(dead, "its runner stopped")
                loaded.remove(dead)
            over_count = len(loaded) >= self.limits.max_loaded
            over_memory = budget > 0 and sum(s.resident for s in loaded) + slot.weights > budget
            if not over_count and not over_memory:
                return
            idle = [s for s in loaded if not s.busy(now)]
            if idle:
                victim = min(idle, key=lambda s: s.last_used)
                reason = "to make room" if over_count else "to free memory"
                await self._unload(victim, f"{reason} for {slot.handle.name}")
                continue
            await self._wait_for_change(loaded, now)

    async def _wait_for_change(self, loaded: list[_Slot], now: float) -> None:
        """Until a model becomes idle or goes away, a hold lapses, or the poll interval ends."""
        holds = [min(s.holds) for s in loaded if s.holds and s.active == 0 and s.waiters == 0]
        timeout = min([_POLL_SECONDS, *(deadline - now for deadline in holds)])
        self._changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(timeout, 0.0))

    # ------------------------------------------------------------------ expiry and unloading

    def _idle(self, slot: _Slot) -> None:
        """The slot has no running request: its keep-alive starts now."""
        slot.expires = time.monotonic() + slot.keep_alive
        self._changed.set()
        self._schedule(slot)

    def _schedule(self, slot: _Slot) -> None:
        """Unload the slot now if it is due, else set its timer (also the timer's callback)."""
        self._cancel_timer(slot)
        if self._slots.get(slot.handle.digest) is not slot:
            return
        if not slot.ready:
            self._discard(slot, "its runner stopped")
            return
        if slot.active or slot.waiters:
            return  # re-scheduled when it becomes idle
        now = time.monotonic()
        due = max([slot.expires, *slot.holds])
        if due <= now:
            self._detach(slot)
            self._spawn(self._stop(slot, "keep-alive expired" if slot.keep_alive else "keep_alive 0"))
        elif math.isfinite(due):
            slot.timer = asyncio.get_running_loop().call_later(due - now, self._schedule, slot)

    def _cancel_timer(self, slot: _Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _detach(self, slot: _Slot) -> None:
        """Forget the slot: new requests load the model afresh."""
        self._cancel_timer(slot)
        if self._slots.get(slot.handle.digest) is slot:
            del self._slots[slot.handle.digest]
        self._changed.set()

    async def _unload(self, slot: _Slot, reason: str) -> None:
        self._detach(slot)
        await self._stop(slot, reason)

    def _discard(self, slot: _Slot, reason: str) -> None:
        self._detach(slot)
        self._spawn(self._stop(slot, reason))

    async def _stop(self, slot: _Slot, reason: str) -> None:
        worker, slot.worker = slot.worker, None
        if worker is None:
            return
        log.info("unloading %s (%s)", slot.handle.name, reason)
        try:
            await worker.stop()
        except Exception:
            log.exception("stopping the worker of %s failed", slot.handle.name)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
