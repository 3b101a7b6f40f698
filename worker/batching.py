"""Continuous batching: concurrent requests to one model decode together.

mlx-lm's ``BatchGenerator`` runs the batch: prompts are prefilled in groups, then every
step samples one token for each running sequence, each with its own sampler, logits
processors (penalties, ``format``) and token budget. Requests join between steps, up to
``OLLAMA_NUM_PARALLEL`` at once (the rest wait in the job queue), and leave as soon as
they finish or are cancelled; their KV caches go to the prefix cache. The ring is flushed
once per step, so a step wakes the daemon once whatever the batch size.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mlx_lm.generate import BatchGenerator

from worker.protocol import EmbedCommand, GenerateCommand
from worker.transport import EventWriter

if TYPE_CHECKING:
    from worker.generation import Generator
    from worker.sequence import Sequence

DEFAULT_PARALLEL = 4

Cancelled = Callable[[int], bool]  # request id → cancelled?
Job = GenerateCommand | EmbedCommand | None  # None: shut down


def num_parallel() -> int:
    """``OLLAMA_NUM_PARALLEL``: the most sequences one model decodes at once."""
    try:
        return max(int(os.environ.get("OLLAMA_NUM_PARALLEL", DEFAULT_PARALLEL)), 1)
    except ValueError:
        return DEFAULT_PARALLEL


class JobSource(Protocol):
    def pending(self) -> bool:
        """A generation command is waiting."""
        ...

    def take(self) -> GenerateCommand | None:
        """The next waiting generation command, without blocking (None if there is none)."""
        ...


class JobQueue:
    """The worker's job queue: blocking ``get`` for the idle loop, and a non-blocking view
    of waiting generation commands for a running batch."""

    def __init__(self) -> None:
        self._items: deque[Job] = deque()
        self._ready = threading.Condition()

    def put(self, job: Job) -> None:
        with self._ready:
            self._items.append(job)
            self._ready.notify()

    def get(self) -> Job:
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def pending(self) -> bool:
        items = self._items  # a racy peek is fine: the next step looks again
        return bool(items) and items[0] is not None and items[0]["op"] == "generate"

    def take(self) -> GenerateCommand | None:
        with self._ready:
            if self._items and self._items[0] is not None and self._items[0]["op"] == "generate":
                job = self._items.popleft()
                assert job is not None and job["op"] == "generate"
                return job
            return None


@dataclass
class Moved:
    """A sequence that was running alone, handed to a batch with its KV cache."""

    seq: Sequence
    cache: list[Any]
    rest: list[int]  # tokens the cache does not hold yet


class BatchRunner:
    def __init__(self, generator: Generator, writer: EventWriter, cancelled: Cancelled) -> None:
        self.generator = generator
        self.writer = writer
        self.cancelled = cancelled
        self.max_batch = num_parallel()

    def run(self, moved: list[Moved], jobs: JobSource) -> None:
        """Decode until the batch is empty and no generation command waits."""
        gen = self.generator
        batch = BatchGenerator(
            gen.model,
            stop_tokens=[[eos] for eos in sorted(gen.eos_ids)],
            completion_batch_size=self.max_batch,
            prefill_batch_size=min(self.max_batch, 8),
        )
        active: dict[int, Sequence] = {}
        try:
            for m in moved:
                active[self._insert(batch, m)] = m.seq
            while True:
                self._admit(batch, active, jobs)
                if not active:
                    return
                for response in batch.next_generated():
                    seq = active.get(response.uid)
                    if seq is None:
                        continue
                    done = seq.accept(int(response.token), response.logprobs)
                    if done or response.finish_reason is not None:
                        del active[response.uid]
                        self._retire(batch, response.uid, seq, response.prompt_cache)
                for uid, seq in list(active.items()):
                    if seq.cancelled():  # also those still in prefill, which yield nothing
                        seq.done_reason = "cancel"
                        del active[uid]
                        self._retire(batch, uid, seq, None)
                self.writer.flush()
        finally:
            for uid, seq in active.items():  # only on an error: end them cleanly
                seq.finish("cancel")
                batch.remove([uid])
            self.writer.flush()
            batch.close()

    def _admit(self, batch: BatchGenerator, active: dict[int, Sequence], jobs: JobSource) -> None:
        """Start waiting requests while there is room in the batch."""
        gen = self.generator
        while len(active) < self.max_batch:
            command = jobs.take()
            if command is None:
                return
            seq = gen.sequence(command, self.writer, self.cancelled)
            if seq is None:
                continue
            if seq.max_tokens <= 0:
                seq.finish("length")
                continue
            if seq.rotating is not None:
                # A context that must shift needs its own rotating cache: run it alone now.
                gen.run_alone(seq, NO_JOBS)
                continue
            hit = gen.prefix_cache.fetch(seq.tokens)
            seq.evaluated = len(hit.rest)
            active[self._insert(batch, Moved(seq, hit.cache, hit.rest))] = seq

    def _insert(self, batch: BatchGenerator, moved: Moved) -> int:
        seq = moved.seq
        held = len(seq.fed) - len(moved.rest)
        (uid,) = batch.insert(
            [moved.rest],
            max_tokens=[seq.max_tokens - len(seq.generated)],
            caches=[moved.cache],
            all_tokens=[seq.fed[:held]],
            samplers=[seq.sampler],
            logits_processors=[seq.processors],
        )
        return int(uid)

    def _retire(self, batch: BatchGenerator, uid: int, seq: Sequence, cache: list[Any] | None) -> None:
        if cache is None:
            extracted = batch.remove([uid], return_prompt_caches=True)
            cache = extracted[uid][0] if uid in extracted else None
        seq.finish("length")
        if cache:
            self.generator.prefix_cache.store(seq.fed, cache)


class _NoJobs:
    def pending(self) -> bool:
        return False

    def take(self) -> GenerateCommand | None:
        return None


NO_JOBS: JobSource = _NoJobs()
