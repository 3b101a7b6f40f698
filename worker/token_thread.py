"""A thread for a lone request's per-token bookkeeping, off the thread that decodes.

On a GPU a lone decode is bound by the host: one thread builds each step's graph in
Python and launches its kernels, and the device waits for it. Whatever that thread does
between steps — ``Sequence.accept`` (detokenizing, stop strings, the thinking/tool split,
encoding the event) and the flush that wakes the daemon, 60–90 µs a token with the caches
cold from the step — adds to every token. MLX releases the GIL while it launches a step
(more than half of the step for a 7B on CUDA), so the same work handed to this thread
runs meanwhile, on another core.

The decoding thread still ends the request itself on an end-of-sequence token or its
token budget; a stop string or a cancel is found here, a step or two later, and the tokens
decoded past it are dropped (never accepted, never sent). On the CPU backend the steps
leave the GIL only briefly, but the thread still takes most of that work off the decoding
thread (measured on a 2-core machine: the worker's own loop 3.8 % below native inline,
1.7 % with the thread); only a machine with one core keeps it inline (:func:`wanted`).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING

from worker.env import switch

if TYPE_CHECKING:
    from worker.sequence import Sequence

ENV = "MLXD_TOKEN_THREAD"

_Item = tuple["Sequence", int] | threading.Event | None


def wanted() -> bool:
    """Whether lone requests hand their tokens to a :class:`TokenThread`: by default
    wherever there is a second core for it; ``MLXD_TOKEN_THREAD`` forces it on (1) or off (0)."""
    if not os.environ.get(ENV, "").strip():
        return (os.cpu_count() or 1) > 1
    return switch(ENV)


class TokenThread:
    """Accepts the tokens of one sequence at a time, in order, on a thread of its own.

    ``push`` hands a token over; ``drain`` waits until every token pushed has been
    accepted (and flushed, when its request streams: ``Sequence.flush_token``), and raises
    what failed meanwhile (``push`` raises it too, so the decoding thread stops early when
    the daemon is gone)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: tuple[Sequence, BaseException] | None = None  # what failed, for whom
        self._failed: Sequence | None = None  # the sequence whose tokens are skipped now
        self._current: Sequence | None = None  # the sequence of the last push

    def push(self, seq: Sequence, token: int) -> None:
        self._raise_for(seq)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlxd-tokens", daemon=True)
            self._thread.start()
        self._current = seq
        self._queue.put((seq, token))

    def drain(self) -> None:
        if self._thread is not None:
            done = threading.Event()
            self._queue.put(done)
            done.wait()
        if self._current is not None:
            self._raise_for(self._current)

    def abandon(self, seq: Sequence) -> None:
        """Drop the tokens of ``seq`` still waiting, and what failed for it here: its request
        failed on the decoding thread, which reports that failure."""
        self._failed = seq
        self._error = None

    def close(self) -> None:
        """Stop the thread once it has done what was pushed (idempotent)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise_for(self, seq: Sequence) -> None:
        """Raise what failed for ``seq``; a failure of an earlier sequence is stale: dropped."""
        error, self._error = self._error, None
        if error is not None and error[0] is seq:
            raise error[1]

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            seq, token = item
            if seq.done_reason is not None or seq is self._failed:
                continue  # decoded past the end (a stop string, a cancel) or past a failure
            try:
                seq.accept(token)
                seq.flush_token()
            except BaseException as exc:  # the decoding thread raises it at its next push
                self._error, self._failed = (seq, exc), seq
