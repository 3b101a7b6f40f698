"""The daemon's handle on one worker process.

Commands go to the worker's stdin as JSON lines. Events come back through the event
transport, whose descriptor the event loop watches: each wake-up reads every event
published so far and hands it to its request's queue in the loop's own thread (no
reader thread, no thread hop). The end of that descriptor is the worker's exit. The
worker's process group is its own, so a Ctrl-C in the daemon's terminal reaches the
daemon only; the daemon then stops its workers itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from daemon.engine import (
    RUNNER_STOPPED,
    Embeddings,
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    LogprobsChunk,
    ModelHandle,
    TextChunk,
    ThinkingChunk,
    ToolCallsChunk,
)
from worker import protocol
from worker.protocol import Command, EmbedCommand, GenerateCommand, ModelInfo
from worker.transport import EventReader, ShmChannel, stdio_reader

log = logging.getLogger("mlxd.worker_client")

_POLL_SECONDS = 0.5  # how often the monitor checks that the worker still lives
STALL_TIMEOUT_ENV = "MLXD_WORKER_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 600.0  # generous: a long prompt on a slow machine sends nothing for a while


def stall_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a worker with requests in flight may send no event before it is killed
    (``MLXD_WORKER_STALL_TIMEOUT``; 0 turns the watchdog off; anything unreadable keeps the default)."""
    text = (os.environ if environ is None else environ).get(STALL_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_STALL_TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        log.warning("invalid %s=%r, using %gs", STALL_TIMEOUT_ENV, text, DEFAULT_STALL_TIMEOUT)
        return DEFAULT_STALL_TIMEOUT
    return value


def load_stalled_message(seconds: float) -> str:
    return f"timed out waiting for the model to load: no progress for {seconds:g}s"


def stalled_message(seconds: float) -> str:
    return (
        f"model runner made no progress for {seconds:g}s and was stopped, check the server logs for details"
    )


class WorkerProcess:
    def __init__(self, model: ModelHandle, ipc: str, stall: float | None = None, parallel: int = 4) -> None:
        self.model = model
        self.ipc = ipc
        self.parallel = parallel  # sequences the worker may batch (OLLAMA_NUM_PARALLEL)
        # The watchdog: a worker that owes events and sends none for this long is killed.
        self.stall = stall_timeout() if stall is None else stall
        self._progress = time.monotonic()  # the latest event, or the first request of a busy spell
        self._stalled = False
        self._monitor: asyncio.Task[None] | None = None
        self._reporting: asyncio.Task[None] | None = None  # logs the exit status once it is known
        self.info: ModelInfo = {}
        self.last_used = time.monotonic()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._channel: ShmChannel | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: EventReader | None = None
        self._watching = False  # the loop watches the reader's descriptor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[ModelInfo] | None = None
        self._exited = asyncio.Event()
        self._stderr_tail = ""

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._exited.is_set()

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    async def start(self, timeout: float) -> ModelInfo:
        """Spawn the worker and wait until it has loaded and warmed up the model."""
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        argv = [sys.executable, "-m", "worker", "--model", str(self.model.path), "--ipc", self.ipc]
        if self.ipc == "shm":
            self._channel = ShmChannel.create()
            argv += ["--channel", self._channel.spec]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if self.ipc == "stdio" else subprocess.DEVNULL,
                pass_fds=self._channel.pass_fds if self._channel is not None else (),
                start_new_session=True,
                # The daemon's parsed value, so that daemon and worker agree on it.
                env={**os.environ, "OLLAMA_NUM_PARALLEL": str(self.parallel)},
            )
        except OSError as exc:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            raise EngineError(f"could not start the model runner: {exc}") from exc
        if self._channel is not None:
            self._channel.handed_over()
            self._reader = self._channel.reader()
        else:
            assert self._proc.stdout is not None
            self._reader = stdio_reader(self._proc.stdout.fileno())
        self._loop.add_reader(self._reader.fileno(), self._on_readable)
        self._watching = True
        self._monitor = self._loop.create_task(self._watch(self._proc), name=f"monitor-{self.model.name}")
        try:
            self.info = await self._until_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        return self.info

    async def _until_ready(self, timeout: float) -> ModelInfo:
        """The worker's ready event; an error once it has sent nothing (neither that nor a
        finished load step) for ``timeout`` seconds. Like Ollama's load timeout, this bounds
        a stalled load, not a long one: a machine's first load on CUDA builds kernels for
        minutes, a step at a time."""
        ready = self._ready
        assert ready is not None
        self._progress = time.monotonic()
        while not ready.done():
            remaining = self._progress + timeout - time.monotonic()
            if remaining <= 0:
                raise EngineError(load_stalled_message(timeout))
            await asyncio.wait({ready}, timeout=remaining if math.isfinite(remaining) else None)
        return ready.result()

    async def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Notice a worker that exited without its event stream ending (a child of its
        own still holds the descriptor), and kill one that has owed events for ``stall``
        seconds without sending any (hung, stopped, deadlocked): its requests end with an
        error and the next one reloads."""
        interval = _POLL_SECONDS if self.stall <= 0 else min(self.stall / 4, _POLL_SECONDS)
        while not self._exited.is_set():
            await asyncio.sleep(interval)
            if proc.poll() is not None:
                self._read_rest()
                self._on_exit()
                return
            quiet = time.monotonic() - self._progress
            if self.stall > 0 and self._pending and quiet >= self.stall:
                log.error(
                    "worker for %s sent nothing for %.1fs with %d request(s) in flight; killing it",
                    self.model.name,
                    quiet,
                    len(self._pending),
                )
                self._stalled = True
                proc.kill()  # its event stream ends, and with it the requests

    def _track(self, request_id: int) -> asyncio.Queue[dict[str, Any]]:
        """A queue for one request's events; the stall clock starts with the first request."""
        if not self._pending:
            self._progress = time.monotonic()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[request_id] = queue
        return queue

    # ------------------------------------------------------------------ events

    def _on_readable(self) -> None:
        """The loop's callback for the reader's descriptor: dispatch what has come; at
        the end of the stream the worker is gone."""
        if self._watching and self._pump() is None:
            self._on_exit()

    def _read_rest(self) -> None:
        """Dispatch whatever the worker published before it exited."""
        while self._pump():
            pass

    def _pump(self) -> list[bytes] | None:
        """One read of the event stream, dispatched: the batch (``[]``: nothing new), or
        None at its end or when it fails."""
        if not self._watching or self._reader is None:
            return None
        try:
            batch = self._reader.read(0)
            if batch:
                self._dispatch(batch)
            return batch
        except Exception:
            log.exception("event stream of the worker for %s failed", self.model.name)
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()  # a worker the daemon cannot hear is of no use
            return None

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            if self._loop is not None and self._reader is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._reader.fileno())

    def _dispatch(self, batch: list[bytes]) -> None:
        self._progress = time.monotonic()
        for payload in batch:
            event: dict[str, Any] = protocol.decode_event(payload)  # type: ignore[assignment]
            tag = event["t"]
            if tag == protocol.LOADING:
                continue  # the load goes on: ``_progress`` (above) restarts its clock
            if tag == protocol.READY:
                # The worker has attached: the names can go, the mapping stays.
                if self._channel is not None:
                    self._channel.unlink()
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(event["info"])
            elif tag == protocol.ERROR and event["id"] == protocol.WORKER_ID:
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(EngineError(event["msg"], event["status"]))
                else:
                    log.error("worker %s: %s", self.model.name, event["msg"])
            else:
                queue = self._pending.get(event["id"])
                if queue is not None:
                    queue.put_nowait(event)

    def _on_exit(self) -> None:
        if self._exited.is_set():
            return
        self._exited.set()
        self._unwatch()
        proc = self._proc
        if proc is not None and proc.poll() is None and self._loop is not None and not self._loop.is_closed():
            # Its stream ends as it exits, a moment before its status can be read.
            self._reporting = self._loop.create_task(self._report_when_reaped(proc))
        else:
            self._report(proc.poll() if proc is not None else None)
        if self._monitor is not None and self._monitor is not asyncio.current_task():
            self._monitor.cancel()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(EngineError(RUNNER_STOPPED))
        message = stalled_message(self.stall) if self._stalled else RUNNER_STOPPED
        stopped = {"t": protocol.ERROR, "id": 0, "msg": message, "status": 500}
        for queue in self._pending.values():
            queue.put_nowait(stopped)
        self._release_channel()

    async def _report_when_reaped(self, proc: subprocess.Popen[bytes]) -> None:
        for _ in range(100):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        self._report(proc.poll())

    def _report(self, code: int | None) -> None:
        if code is None or code == 0:  # exited, or closed its stream and is on its way out
            log.info("worker for %s stopped", self.model.name)
        else:
            log.warning("worker for %s exited with status %d", self.model.name, code)

    # ------------------------------------------------------------------ commands

    def _send(self, command: Command) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or self._exited.is_set():
            raise EngineError(RUNNER_STOPPED)
        try:
            proc.stdin.write(protocol.encode_command(command))
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise EngineError(RUNNER_STOPPED) from None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        request_id = next(self._ids)
        queue = self._track(request_id)
        command: GenerateCommand = {
            "op": "generate",
            "id": request_id,
            "messages": request.messages,
            "prompt": request.prompt,
            "raw": request.raw,
            "context": request.context,
            "options": request.options,
            "return_context": request.return_context,
            **_extras(request),
        }
        finished = False
        try:
            self._send(command)
            while True:
                event = await queue.get()
                tag = event["t"]
                if tag == protocol.TEXT:
                    yield TextChunk(event["s"])
                elif tag == protocol.THINKING:
                    yield ThinkingChunk(event["s"])
                elif tag == protocol.TOOL_CALLS:
                    yield ToolCallsChunk(event["calls"])
                elif tag == protocol.LOGPROBS:
                    yield LogprobsChunk(event["lp"])
                elif tag == protocol.DONE:
                    finished = True
                    yield _finished(event["stats"])
                    return
                else:
                    finished = True
                    raise EngineError(event["msg"], event["status"])
        finally:
            del self._pending[request_id]
            self.last_used = time.monotonic()
            if not finished and self.alive:
                with contextlib.suppress(EngineError):
                    self._send({"op": "cancel", "id": request_id})

    async def embed(
        self,
        inputs: list[str],
        truncate: bool = True,
        dimensions: int = 0,
        *,
        normalize: bool = True,
        num_ctx: int = 0,
    ) -> Embeddings:
        """One embed command (``worker.protocol.EmbedCommand``); its vectors or its error."""
        request_id = next(self._ids)
        queue = self._track(request_id)
        command: EmbedCommand = {
            "op": "embed",
            "id": request_id,
            "inputs": inputs,
            "truncate": truncate,
            "dimensions": dimensions,
            "normalize": normalize,
            "num_ctx": num_ctx,
        }
        answered = False
        try:
            self._send(command)
            event = await queue.get()
            answered = True
        finally:
            del self._pending[request_id]
            self.last_used = time.monotonic()
            if not answered and self.alive:
                with contextlib.suppress(EngineError):
                    self._send({"op": "cancel", "id": request_id})
        if event["t"] != protocol.VECTORS:
            raise EngineError(event.get("msg", RUNNER_STOPPED), event.get("status", 500))
        return _embeddings(event)

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit, kill it after ``grace`` seconds, release everything."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._send({"op": "shutdown"})
                assert proc.stdin is not None
                proc.stdin.close()
            except (EngineError, OSError):
                pass
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                log.warning("worker for %s did not stop in %gs; killing it", self.model.name, grace)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self._read_rest()
        self._on_exit()
        for task in (self._monitor, self._reporting):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor = self._reporting = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    def _release_channel(self) -> None:
        if self._channel is not None:
            self._channel.unlink()


def _extras(request: GenerationRequest) -> GenerateCommand:
    """The optional command keys, only when they differ from the worker's defaults."""
    extras: GenerateCommand = {}
    if request.template:
        extras["template"] = request.template
    if request.suffix:
        extras["suffix"] = request.suffix
    if request.format:
        extras["format"] = request.format
    if request.tools:
        extras["tools"] = request.tools
    if request.think is not None:
        extras["think"] = request.think
    if not request.truncate:
        extras["truncate"] = False
    if not request.shift:
        extras["shift"] = False
    if request.render_only:
        extras["render_only"] = True
    if not request.stream:
        extras["stream"] = False
    if request.logprobs:
        extras["logprobs"] = True
        if request.top_logprobs:
            extras["top_logprobs"] = request.top_logprobs
    return extras


def _finished(stats: dict[str, Any]) -> Finished:
    return Finished(
        done_reason=stats.get("done_reason", "stop"),
        prompt_eval_count=stats.get("prompt_eval_count", 0),
        prompt_eval_duration_ns=stats.get("prompt_eval_duration_ns", 0),
        eval_count=stats.get("eval_count", 0),
        eval_duration_ns=stats.get("eval_duration_ns", 0),
        context=stats.get("context"),
    )


def _embeddings(event: dict[str, Any]) -> Embeddings:
    import numpy as np  # only embedding requests need it in the daemon

    values = np.frombuffer(base64.b64decode(event["data"]), dtype="<f4").astype(np.float32)
    return Embeddings(values.reshape(-1, max(int(event["dim"]), 1)), int(event["n"]))
