"""A single-producer, single-consumer ring of length-prefixed frames over a plain buffer.

The ring knows nothing about processes: it works over any writable buffer (a
``bytearray`` in tests, an ``mmap`` of a POSIX shared-memory segment in production) and
wakes the other side through two :class:`Signal` objects (``threading`` semaphores here;
a pipe for *data* and a named POSIX semaphore for *space* in :mod:`worker.transport`).

Layout of the buffer (header integers in native byte order, both sides being on one
machine; frame headers little-endian)::

    0    u32 magic, u32 reserved, u64 capacity        written once by format_ring()
    128  u64 write position, u32 writer closed,       written by the writer only
         u32 writer waiting for space
    256  u64 read position, u32 reader closed         written by the reader only
    384  data: ``capacity`` bytes

Writer-owned and reader-owned fields sit on separate 128-byte lines (the cache-line size
of Apple silicon) so that neither side's stores evict the other's line. Positions are
monotonic byte counters; a position maps to ``DATA + pos % capacity``.

Frames are ``u32 length, u8 flags, payload``. A frame wraps around the end of the data
area byte-wise (header included), so there is no padding frame and a frame always takes
exactly ``5 + length`` bytes. A message longer than ``capacity - 5`` is cut into
fragments flagged ``MORE`` (the last one is not) which the reader joins again.

Wake protocol. ``send`` copies a frame into the ring without publishing it; ``flush``
stores the write position and posts the *data* signal once. The reader takes one count,
then consumes every published frame, so one wake serves a whole batch; surplus counts
only cause an empty pass that goes back to waiting. A writer that lacks space publishes
what it has (the reader can only free what it has seen), sets the *waiting* flag,
re-checks, and waits on the *space* signal in short rounds, so a lost wakeup costs one
round at most; the reader posts *space* after consuming while that flag is set.

Memory ordering. The writer stores the frame bytes before it stores the write position,
and the reader loads the write position before it loads frame bytes. Python has no fence
primitive; :class:`Fence` gets one from a lock release followed by an acquire (RCsc on
arm64, a locked instruction on x86-64). Across processes the post/wait pair (a semaphore, or
a pipe's write and read) goes through the kernel and is a full barrier as well, which
is what a sleeping reader relies on. Shared header fields are
stored as memoryview items (one aligned store each), never with ``struct.pack_into``,
which zeroes its target before writing it: the other side would see a position of 0.
"""

from __future__ import annotations

import mmap
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

MAGIC = 0x3152584D  # b"MXR1" as a little-endian u32
HEADER_SIZE = 384
MIN_CAPACITY = 64
MAX_CAPACITY = 1 << 30
FLAG_MORE = 0x01

# Header fields as indexes into u64 and u32 views of the header (byte offset / size).
_Q_CAPACITY = 8 // 8
_Q_WRITE_POS = 128 // 8
_Q_READ_POS = 256 // 8
_I_MAGIC = 0 // 4
_I_WRITER_CLOSED = 136 // 4
_I_WRITER_WAITING = 140 // 4
_I_READER_CLOSED = 264 // 4

FRAME = struct.Struct("<IB")  # payload length, flags
FRAME_SIZE = FRAME.size

Buffer = bytearray | memoryview | mmap.mmap


class RingError(RuntimeError):
    """The shared buffer does not hold a valid ring (wrong magic or a corrupt frame)."""


class Poster(Protocol):
    """The writer's half of a wake-up: ``post`` adds a count."""

    def post(self) -> None: ...


class Signal(Poster, Protocol):
    """A counting wake-up: ``post`` adds a count, ``wait`` takes one or times out."""

    def wait(self, timeout: float | None) -> bool: ...


class ThreadSignal:
    """A :class:`Signal` for two threads of one process."""

    def __init__(self) -> None:
        self._sem = threading.Semaphore(0)

    def post(self) -> None:
        self._sem.release()

    def wait(self, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            return self._sem.acquire(blocking=False)
        return self._sem.acquire(timeout=timeout)


class Fence:
    """A full memory barrier for the one thread that calls it at a time.

    The lock is held between calls; a call releases it and takes it again. A release
    followed by an acquire keeps earlier accesses before later ones on arm64 (acquire
    and release are sequentially consistent with each other) and is a locked
    read-modify-write on x86-64.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def __call__(self) -> None:
        self._lock.release()
        self._lock.acquire()


class CloseGuard:
    """Lets ``close()`` run on any thread while another thread may be inside ``read()``.

    ``close`` marks the reader closed, wakes it, and waits until it has left ``read``,
    so resources are released only when nothing uses them any more.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self.closed = False

    def enter(self) -> bool:
        """Start a read; False once closed."""
        with self._cond:
            if self.closed:
                return False
            if self._busy:
                raise RuntimeError("read() called from two threads at once")
            self._busy = True
            return True

    def leave(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def close(self, wake: Callable[[], None]) -> bool:
        """Mark closed, call ``wake`` and wait for a read in progress; False if already closed."""
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            if self._busy:
                wake()
                while self._busy:
                    self._cond.wait()
            return True


def format_ring(buf: Buffer) -> int:
    """Initialise an empty ring over the whole of ``buf``; returns its data capacity."""
    view = memoryview(buf)
    try:
        capacity = len(view) - HEADER_SIZE
        if not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
            raise ValueError(f"ring capacity must be {MIN_CAPACITY}..{MAX_CAPACITY} bytes, not {capacity}")
        view[:HEADER_SIZE] = bytes(HEADER_SIZE)
        q, i = _header_views(view)
        q[_Q_CAPACITY] = capacity
        i[_I_MAGIC] = MAGIC
        q.release()
        i.release()
        return capacity
    finally:
        view.release()


def _header_views(view: memoryview) -> tuple[memoryview, memoryview]:
    """u64 and u32 views of the header, in native byte order.

    Shared fields are read and stored through these, never through ``struct``:
    ``pack_into`` zeroes its target before writing it, so the other process could see a
    position of 0 in passing. An item store of a memoryview is one aligned memcpy of the
    item's size, a single store on x86-64 and arm64, so no reader sees half of it.
    """
    header = view[:HEADER_SIZE]
    return header.cast("Q"), header.cast("I")


def ring_capacity(view: memoryview) -> int:
    """The capacity recorded in a formatted ring, checked against the buffer's size."""
    if len(view) < HEADER_SIZE:
        raise RingError("buffer does not hold an event ring")
    q, i = _header_views(view)
    try:
        if i[_I_MAGIC] != MAGIC:
            raise RingError("buffer does not hold an event ring")
        capacity: int = q[_Q_CAPACITY]
    finally:
        q.release()
        i.release()
    if not MIN_CAPACITY <= capacity <= len(view) - HEADER_SIZE:
        raise RingError(f"ring capacity {capacity} does not fit a buffer of {len(view)} bytes")
    return capacity


class RingWriter:
    """The producer side. Thread-safe; ``close`` may come from another thread.

    ``peer_alive`` is asked once per waiting round while the ring is full; False means
    the reader's process is gone without closing, and ``send`` raises BrokenPipeError.
    ``on_close`` releases whatever backs the buffer, after the writer has let go of it.
    """

    def __init__(
        self,
        buf: Buffer,
        data: Poster,
        space: Signal,
        *,
        wait_interval: float = 0.05,
        peer_alive: Callable[[], bool] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        view = memoryview(buf)
        self._cap = ring_capacity(view)
        self._view: memoryview | None = view
        self._data = data
        self._space = space
        self._wait_interval = wait_interval
        self._peer_alive = peer_alive
        self._on_close = on_close
        self._q, self._i = _header_views(view)
        self._tail: int = self._q[_Q_WRITE_POS]
        self._published = self._tail
        self._read_cache: int = self._q[_Q_READ_POS]
        # Fragments smaller than this are not worth a wake-up: wait for more space.
        self._min_fragment = max(self._cap // 4, FRAME_SIZE + 1)
        self._lock = threading.Lock()
        self._fence = Fence()
        self._closing = False

    @property
    def capacity(self) -> int:
        return self._cap

    def send(self, payload: bytes) -> None:
        """Queue one message; it becomes visible at the next ``flush``."""
        size = FRAME_SIZE + len(payload)
        with self._lock:
            view = self._checked_view()
            if size > self._cap:
                self._send_fragments(view, payload)
                return
            if self._cap - (self._tail - self._read_cache) < size:
                self._read_cache = self._q[_Q_READ_POS]
                if self._cap - (self._tail - self._read_cache) < size:
                    self._wait_space(view, size)
            self._put(view, payload, 0)

    def flush(self) -> None:
        """Publish everything sent since the last flush and wake the reader once."""
        with self._lock:
            view = self._checked_view()
            self._publish(view)
            if self._i[_I_READER_CLOSED]:
                raise BrokenPipeError("the event reader is closed")

    def close(self) -> None:
        """Flush, mark the ring closed for the reader, and let go of the buffer."""
        self._closing = True  # a send waiting for space in another thread gives up
        with self._lock:
            view = self._view
            if view is None:
                return
            self._publish(view)
            self._fence()  # the final position before the closed flag
            self._i[_I_WRITER_CLOSED] = 1
            self._data.post()
            self._view = None
            for v in (self._q, self._i, view):
                v.release()
        if self._on_close is not None:
            self._on_close()

    # -------------------------------------------------------------- internals

    def _checked_view(self) -> memoryview:
        if self._view is None:
            raise ValueError("send or flush on a closed event writer")
        return self._view

    def _put(self, view: memoryview, data: bytes | memoryview, flags: int) -> None:
        """Copy one frame at the tail (space was checked by the caller)."""
        cap = self._cap
        n = len(data)
        idx = self._tail % cap
        end = idx + FRAME_SIZE + n
        if end <= cap:
            FRAME.pack_into(view, HEADER_SIZE + idx, n, flags)
            view[HEADER_SIZE + idx + FRAME_SIZE : HEADER_SIZE + end] = data
        else:
            self._copy_in(view, idx, FRAME.pack(n, flags))
            self._copy_in(view, (idx + FRAME_SIZE) % cap, data)
        self._tail += FRAME_SIZE + n

    def _copy_in(self, view: memoryview, idx: int, data: bytes | memoryview) -> None:
        first = min(len(data), self._cap - idx)
        view[HEADER_SIZE + idx : HEADER_SIZE + idx + first] = data[:first]
        if first < len(data):
            view[HEADER_SIZE : HEADER_SIZE + len(data) - first] = data[first:]

    def _send_fragments(self, view: memoryview, payload: bytes) -> None:
        """A message larger than the ring: fill whatever space there is, frame by frame."""
        data = memoryview(payload)
        off = 0
        while True:
            self._read_cache = self._q[_Q_READ_POS]
            free = self._cap - (self._tail - self._read_cache)
            rest = len(data) - off
            if FRAME_SIZE + rest <= free:
                self._put(view, data[off:], 0)
                return
            if free < self._min_fragment:
                self._wait_space(view, self._min_fragment)
                continue
            chunk = free - FRAME_SIZE
            self._put(view, data[off : off + chunk], FLAG_MORE)
            off += chunk

    def _publish(self, view: memoryview) -> None:
        if self._tail != self._published:
            self._fence()  # frame bytes before the position that makes them visible
            self._q[_Q_WRITE_POS] = self._tail
            self._published = self._tail
            self._data.post()

    def _wait_space(self, view: memoryview, need: int) -> None:
        """Block until ``need`` bytes are free; BrokenPipeError if the reader is gone."""
        self._publish(view)
        waiting = False
        try:
            while True:
                self._read_cache = self._q[_Q_READ_POS]
                if self._cap - (self._tail - self._read_cache) >= need:
                    return
                if not waiting:
                    self._i[_I_WRITER_WAITING] = 1
                    waiting = True
                    self._fence()  # flag before the re-check (pairs with the reader's fence)
                    continue
                if (
                    self._i[_I_READER_CLOSED]
                    or self._closing
                    or (self._peer_alive is not None and not self._peer_alive())
                ):
                    raise BrokenPipeError("the event reader is gone")
                self._space.wait(self._wait_interval)
        finally:
            if waiting:
                self._i[_I_WRITER_WAITING] = 0


class RingReader:
    """The consumer side: one thread calls ``read``; ``close`` may come from any thread.

    ``writer_gone`` says whether the writer has ended without closing (its process is
    gone); once it is true, ``read`` returns what was published and then ``None``.
    ``read(0)`` never blocks and takes the data signal's pending counts before it
    returns ``[]``, so an event loop that watches the signal (level-triggered) is woken
    again only by a later flush.
    """

    def __init__(
        self,
        buf: Buffer,
        data: Signal,
        space: Signal,
        *,
        writer_gone: Callable[[], bool] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        view = memoryview(buf)
        self._cap = ring_capacity(view)
        self._view: memoryview | None = view
        self._data = data
        self._space = space
        self._on_close = on_close
        self._writer_gone = writer_gone
        self._q, self._i = _header_views(view)
        self._head: int = self._q[_Q_READ_POS]
        self._partial: list[bytes] = []
        self._guard = CloseGuard()
        self._fence = Fence()

    def read(self, timeout: float | None = None) -> list[bytes] | None:
        """Every complete message available, waiting up to ``timeout`` for the first one.

        ``[]`` means the timeout expired; ``None`` means the writer closed and all was
        read, or this reader was closed.
        """
        if not self._guard.enter():
            return None
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                view = self._view
                if view is None or self._guard.closed:
                    return None
                writer_closed = self._i[_I_WRITER_CLOSED] or (
                    self._writer_gone is not None and self._writer_gone()
                )
                self._fence()  # the closed flag before the final write position
                messages = self._drain(view)
                if messages:
                    # Swallow the counts of batches already consumed, then pick up what
                    # the flushes behind those counts published.
                    while self._data.wait(0):
                        pass
                    messages += self._drain(view)
                    return messages
                if writer_closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if self._data.wait(0):
                        continue  # a count came after the drain: what it published, or the end
                    return []
                self._data.wait(remaining)
        finally:
            self._guard.leave()

    def close(self) -> None:
        """Mark the reader gone (a writer waiting for space gets BrokenPipeError)."""
        if not self._guard.close(self._data.post):
            return
        view = self._view
        if view is not None:
            self._i[_I_READER_CLOSED] = 1
            self._space.post()
            self._view = None
            for v in (self._q, self._i, view):
                v.release()
        if self._on_close is not None:
            self._on_close()

    def _drain(self, view: memoryview) -> list[bytes]:
        """Consume every published frame; return the messages completed by them."""
        cap = self._cap
        head = self._head
        tail: int = self._q[_Q_WRITE_POS]
        if tail == head:
            return []
        if not 0 < tail - head <= cap:
            raise RingError(f"write position {tail} is not within {cap} bytes after {head}")
        self._fence()  # the write position before the frame bytes it covers
        out: list[bytes] = []
        while head < tail:
            idx = head % cap
            if idx + FRAME_SIZE <= cap:
                n, flags = FRAME.unpack_from(view, HEADER_SIZE + idx)
            else:
                n, flags = FRAME.unpack(self._copy_out(view, idx, FRAME_SIZE))
            if FRAME_SIZE + n > tail - head or flags & ~FLAG_MORE:
                raise RingError(f"corrupt frame at position {head}: length {n}, flags {flags:#x}")
            start = (idx + FRAME_SIZE) % cap
            if start + n <= cap:
                payload = view[HEADER_SIZE + start : HEADER_SIZE + start + n].tobytes()
            else:
                payload = self._copy_out(view, start, n)
            head += FRAME_SIZE + n
            if flags & FLAG_MORE:
                self._partial.append(payload)
            elif self._partial:
                self._partial.append(payload)
                out.append(b"".join(self._partial))
                self._partial = []
            else:
                out.append(payload)
        self._head = head
        self._fence()  # done copying out before the writer may overwrite
        self._q[_Q_READ_POS] = head
        self._fence()  # the new read position before the waiting flag (pairs with the writer)
        if self._i[_I_WRITER_WAITING]:
            self._space.post()
        return out

    def _copy_out(self, view: memoryview, idx: int, n: int) -> bytes:
        first = min(n, self._cap - idx)
        return (
            view[HEADER_SIZE + idx : HEADER_SIZE + idx + first].tobytes()
            + view[HEADER_SIZE : HEADER_SIZE + n - first].tobytes()
        )


def ring_pair(capacity: int = 1 << 16, *, wait_interval: float = 0.05) -> tuple[RingWriter, RingReader]:
    """A writer and a reader over one in-process buffer (for tests and in-process fakes)."""
    buf = bytearray(HEADER_SIZE + capacity)
    format_ring(buf)
    data, space = ThreadSignal(), ThreadSignal()
    return RingWriter(buf, data, space, wait_interval=wait_interval), RingReader(buf, data, space)
