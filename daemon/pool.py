"""The real :class:`~daemon.engine.Engine`: the scheduler over worker processes.

One worker process per loaded model (by manifest digest); the scheduling policy
(keep-alive, queueing, eviction, the memory guard) is ``daemon.scheduler``'s.
"""

from __future__ import annotations

from daemon.config import IpcKind, Settings
from daemon.engine import ModelHandle
from daemon.memory import physical_memory
from daemon.scheduler import Limits, Scheduler, Worker
from daemon.worker_client import WorkerProcess


class WorkerPool(Scheduler):
    def __init__(self, ipc: IpcKind | str = "shm", limits: Limits | None = None, parallel: int = 4) -> None:
        self.ipc = ipc
        self.parallel = parallel
        super().__init__(self._worker, limits)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerPool:
        """The pool the daemon runs: its limits from the environment, the memory guard set
        to the machine's physical memory."""
        return cls(ipc=settings.ipc, limits=limits_from(settings), parallel=settings.num_parallel)

    def _worker(self, model: ModelHandle) -> Worker:
        return WorkerProcess(model, self.ipc, parallel=self.parallel)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_loaded=settings.max_loaded_models,
        max_queue=settings.max_queue,
        keep_alive=settings.keep_alive,
        context_length=settings.context_length,
        memory_bytes=physical_memory(),
        load_timeout=settings.load_timeout,
    )
