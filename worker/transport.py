"""Event transports between a worker (writer) and the daemon (reader).

Two builds of one interface:

* **Shared memory** (the default): the daemon creates a :class:`ShmChannel` (a POSIX
  shared-memory segment holding a :mod:`worker.ring`, a named POSIX semaphore *space*,
  and a pipe, the *doorbell*), starts the worker with ``channel.spec`` on its command
  line and ``channel.pass_fds`` open, and the worker calls :func:`attach_shm_writer`. A
  token costs the worker a memcpy per ``send``, and a ``flush`` one byte on the doorbell.
* **stdio**: the same frames (``u32 length, u8 flags=0, payload``) on a pipe, normally
  the worker's original stdout. ``flush`` is one ``write`` of everything sent since the
  previous flush.

Contract shared by both builds: ``EventWriter.send`` queues without waking the reader;
``flush`` publishes and wakes it once; ``EventReader.read`` returns every complete
message available (a batch), ``[]`` on timeout and ``None`` at the end. The end is the
writer's ``close`` or its process's exit, whichever comes first. ``EventReader.fileno``
is a pipe that turns readable when a ``read(0)`` has something to return, so the
daemon's event loop watches it and reads in its own thread: no reader thread, no
thread hop per batch. ``close`` on a reader may be called from another thread: a
``read`` blocked in it returns ``None``.

Names in the system: a channel's segment is ``/mlxd-<16 hex>`` and its semaphore adds
``-s`` (``/dev/shm/sem.mlxd-...-s`` on Linux), both mode 0600 and created exclusively.
The worker unlinks them as soon as it has opened them, and the daemon unlinks them again
(idempotently) when the worker has spoken and when it exits, so a crash of either
process leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import secrets
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

import posix_ipc

from worker.ring import (
    FRAME,
    FRAME_SIZE,
    HEADER_SIZE,
    MAX_CAPACITY,
    MIN_CAPACITY,
    CloseGuard,
    RingError,
    RingReader,
    RingWriter,
    format_ring,
)

__all__ = [
    "EventReader",
    "EventWriter",
    "ShmChannel",
    "attach_shm_writer",
    "stdio_reader",
    "stdio_writer",
]


class EventWriter(Protocol):
    """Worker side; called from the generation thread (thread-safe nonetheless)."""

    def send(self, payload: bytes) -> None:
        """Queue one message. Blocks only while the transport is full; BrokenPipeError if
        the reader went away meanwhile."""
        ...

    def flush(self) -> None:
        """Publish everything sent since the last flush and wake the reader once."""
        ...

    def close(self) -> None:
        """Flush, tell the reader that no more messages come, release local resources."""
        ...


class EventReader(Protocol):
    """Daemon side; ``read`` is called from one thread at a time."""

    def fileno(self) -> int:
        """A file descriptor that is readable while ``read(0)`` may return more than ``[]``."""
        ...

    def read(self, timeout: float | None = None) -> list[bytes] | None:
        """Wait up to ``timeout`` for a message; return all complete messages available,
        ``[]`` on timeout, ``None`` once the writer is gone and everything was read.
        ``read(0)`` never blocks."""
        ...

    def close(self) -> None:
        """Mark the reader gone (a writer waiting for space gets BrokenPipeError)."""
        ...


# ------------------------------------------------------------------ shared memory

_NAME_PREFIX = "/mlxd-"
_SPEC_RE = re.compile(r"(/mlxd-[0-9a-f]{16}):([0-9]{1,9})")
_SPACE_SUFFIX = "-s"
_MODE = 0o600
_DRAIN = 4096  # doorbell bytes taken per read


class _PosixSignal:
    """:class:`worker.ring.Signal` over a named POSIX semaphore."""

    def __init__(self, sem: posix_ipc.Semaphore) -> None:
        self._sem = sem

    def post(self) -> None:
        self._sem.release()

    def wait(self, timeout: float | None) -> bool:
        try:
            if timeout is None:
                self._sem.acquire()
            elif timeout <= 0:
                self._sem.acquire(0)
            elif posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED:
                self._sem.acquire(timeout)
            else:
                return self._poll(timeout)
            return True
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            # posix_ipc runs the Python handlers and then replaces whatever they raised
            # (KeyboardInterrupt included) with SignalError. Handlers run only in the
            # main thread: there the error must surface; elsewhere it is a plain EINTR,
            # a wake-up without a count that the callers re-check.
            if threading.current_thread() is threading.main_thread():
                raise
            return False

    def _poll(self, timeout: float) -> bool:
        # macOS has no sem_timedwait: poll, backing off to 1 ms between tries. Only a
        # writer that found the ring full waits here.
        deadline = time.monotonic() + timeout
        pause = 2e-5
        while True:
            try:
                self._sem.acquire(0)
                return True
            except posix_ipc.BusyError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 1e-3)


class _Poller:
    """Waits until a descriptor is readable or another thread calls :meth:`wake` (through
    a private pipe): poll where there is one (descriptors past FD_SETSIZE are fine),
    select elsewhere."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        self._poll: select.poll | None = None
        if hasattr(select, "poll"):
            self._poll = select.poll()
            for watched in (fd, self._wake_r):
                self._poll.register(watched, select.POLLIN)

    def wait(self, timeout: float | None) -> tuple[bool, bool]:
        """(woken, readable), waiting up to ``timeout`` for either (None: no limit)."""
        if self._poll is not None:
            ms = None if timeout is None else math.ceil(timeout * 1000)
            ready = {fd for fd, _ in self._poll.poll(ms)}
        else:
            readable, _, _ = select.select([self._fd, self._wake_r], [], [], timeout)
            ready = set(readable)
        return self._wake_r in ready, self._fd in ready

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        """Close the wake pipe (not the watched descriptor). Idempotent."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


class _Bell:
    """The writer's end of the doorbell: a flush writes one byte.

    Non-blocking: a full pipe already wakes the reader, so the byte is not needed. A
    reader that has gone is not an error here; the ring's closed flag reports it.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)  # a child of the worker must not keep it open
        self.fd = fd

    def post(self) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.fd, b"\0")


class _Doorbell:
    """The reader's end of the doorbell, a :class:`worker.ring.Signal`.

    ``wait`` takes every byte rung so far as one count. The end of the pipe means that
    every process holding the writer's end has exited: ``hung_up`` turns true, and the
    ``wait`` that saw it first counts it as a wake-up. ``post`` (used by ``close`` to
    wake a blocked ``wait``) rings a private pipe, as the reader never writes its own.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.hung_up = False
        self._emptied = False
        self._poller = _Poller(fd)

    def post(self) -> None:
        self._poller.wake()

    def wait(self, timeout: float | None) -> bool:
        if self.hung_up:
            return False
        if timeout is None or timeout > 0:
            self._emptied = False
            woken, _ = self._poller.wait(timeout)
            if woken:
                return True
        elif self._emptied:
            # The read before this one left the pipe empty: the ring reader's "anything
            # more?" needs no second read (a byte rung since stays for the next wake-up).
            self._emptied = False
            return False
        rang = False
        while True:
            try:
                chunk = os.read(self.fd, _DRAIN)
            except BlockingIOError:
                return rang
            if not chunk:
                self.hung_up = True
                return True
            rang = True
            if len(chunk) < _DRAIN:
                self._emptied = True
                return rang

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._poller.close()


def _unlink_names(name: str) -> None:
    for unlink, path in (
        (posix_ipc.unlink_shared_memory, name),
        (posix_ipc.unlink_semaphore, name + _SPACE_SUFFIX),
    ):
        with contextlib.suppress(posix_ipc.ExistentialError):
            unlink(path)


class _ShmReader(RingReader):
    """A :class:`worker.ring.RingReader` whose data signal is the doorbell."""

    def __init__(
        self, mapping: mmap.mmap, doorbell: _Doorbell, space: _PosixSignal, on_close: Callable[[], None]
    ) -> None:
        super().__init__(mapping, doorbell, space, writer_gone=lambda: doorbell.hung_up, on_close=on_close)
        self._doorbell = doorbell

    def fileno(self) -> int:
        return self._doorbell.fd


class ShmChannel:
    """The daemon's end of one shared-memory channel; build it with :meth:`create`.

    Start the worker with ``spec`` on its command line and ``pass_fds`` open, then call
    :meth:`handed_over`, so that the doorbell ends when the worker's process does.
    """

    def __init__(
        self, name: str, mapping: mmap.mmap, space: posix_ipc.Semaphore, bell_r: int, bell_w: int
    ) -> None:
        self._name = name
        self._mapping = mapping
        self._space = space
        self._doorbell = _Doorbell(bell_r)
        self._bell_w = bell_w
        self._reader: _ShmReader | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._released = False

    @classmethod
    def create(cls, capacity: int = 1 << 20) -> ShmChannel:
        """A new segment and semaphore under an unguessable name, mode 0600, and a doorbell."""
        if not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be {MIN_CAPACITY}..{MAX_CAPACITY} bytes, not {capacity}")
        name = _NAME_PREFIX + secrets.token_hex(8)
        size = HEADER_SIZE + capacity
        space: posix_ipc.Semaphore | None = None
        mapping: mmap.mmap | None = None
        try:
            memory = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=_MODE, size=size)
            try:
                mapping = mmap.mmap(memory.fd, size)
            finally:
                memory.close_fd()
            space = posix_ipc.Semaphore(name + _SPACE_SUFFIX, posix_ipc.O_CREX, mode=_MODE, initial_value=0)
            format_ring(mapping)
            bell_r, bell_w = os.pipe()
        except BaseException:
            _unlink_names(name)
            if space is not None:
                space.close()
            if mapping is not None:
                mapping.close()
            raise
        return cls(name, mapping, space, bell_r, bell_w)

    @property
    def name(self) -> str:
        """The segment's name in the system (the semaphore's adds ``-s``)."""
        return self._name

    @property
    def spec(self) -> str:
        """What the worker passes to :func:`attach_shm_writer`: the name and the doorbell's fd."""
        return f"{self._name}:{self._bell_w}"

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The descriptors the worker's process must inherit (``subprocess``'s ``pass_fds``)."""
        return () if self._bell_w < 0 else (self._bell_w,)

    def handed_over(self) -> None:
        """Close the daemon's copy of the doorbell's writing end, once the worker holds it.
        Idempotent."""
        with self._lock:
            fd, self._bell_w = self._bell_w, -1
        if fd >= 0:
            os.close(fd)

    def reader(self) -> EventReader:
        """The channel's one reader (the same object on every call)."""
        with self._lock:
            if self._closed:
                raise ValueError("the channel is closed")
            if self._reader is None:
                space = _PosixSignal(self._space)
                self._reader = _ShmReader(self._mapping, self._doorbell, space, self.close)
            return self._reader

    def unlink(self) -> None:
        """Remove the names from the system; the mapping stays usable. Idempotent."""
        _unlink_names(self._name)

    def close(self) -> None:
        """Close the reader, unlink the names, unmap, close the semaphore and the pipe.
        Idempotent.

        Closing the reader also closes its channel, so either call releases everything.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reader = self._reader
        if reader is not None:
            reader.close()  # wakes and waits out a read in progress, then calls us back
        self.unlink()
        self.handed_over()
        with self._lock:
            if self._released:
                return
            self._released = True
        self._mapping.close()
        self._space.close()
        self._doorbell.close()


def attach_shm_writer(spec: str) -> EventWriter:
    """Open the channel named by ``spec`` as its writer, then unlink its names.

    The writer owns the doorbell's descriptor named in ``spec`` from here on. While the
    ring is full the writer also gives up (BrokenPipeError) once its parent process, the
    daemon, has changed: a daemon that died never closes its reader.
    """
    match = _SPEC_RE.fullmatch(spec)
    if match is None:
        raise ValueError(f"not a shared-memory channel spec: {spec!r}")
    name, bell_fd = match[1], int(match[2])
    memory = posix_ipc.SharedMemory(name)
    try:
        mapping = mmap.mmap(memory.fd, memory.size)
    finally:
        memory.close_fd()
    try:
        space = posix_ipc.Semaphore(name + _SPACE_SUFFIX)
        try:
            bell = _Bell(bell_fd)
        except BaseException:
            space.close()
            raise
    except BaseException:
        mapping.close()
        raise
    _unlink_names(name)
    parent = os.getppid()

    def release() -> None:
        mapping.close()
        space.close()
        with contextlib.suppress(OSError):
            os.close(bell.fd)

    try:
        return RingWriter(
            mapping,
            bell,
            _PosixSignal(space),
            peer_alive=lambda: os.getppid() == parent,
            on_close=release,
        )
    except BaseException:
        release()
        raise


# ------------------------------------------------------------------ stdio

_AUTO_FLUSH = 1 << 16  # bytes buffered by send() before it writes them without a flush
_READ_CHUNK = 1 << 16
_MAX_FRAME = 1 << 30  # a longer length means the stream is not ours (stray output)


class _StdioWriter:
    """Frames to a pipe. Owns ``fd``: ``close`` closes it, which the reader sees as EOF."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._buf = bytearray()
        self._lock = threading.Lock()

    def send(self, payload: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("send on a closed event writer")
            self._buf += FRAME.pack(len(payload), 0)
            self._buf += payload
            # Bound the buffer like the ring bounds itself: a full buffer goes out now.
            if len(self._buf) >= _AUTO_FLUSH:
                self._write_out(self._fd)

    def flush(self) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("flush on a closed event writer")
            self._write_out(self._fd)

    def close(self) -> None:
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            self._fd = None
            try:
                self._write_out(fd)
            except OSError:
                pass  # the reader is gone: nothing left to tell it
            finally:
                self._buf.clear()
                os.close(fd)

    def _write_out(self, fd: int) -> None:
        """One write of the buffer, more only if the pipe takes it in parts."""
        if not self._buf:
            return
        with memoryview(self._buf) as view:
            done = 0
            while done < len(view):
                try:
                    done += os.write(fd, view[done:])
                except BlockingIOError:  # a non-blocking fd: wait until it drains
                    select.select([], [fd], [])
        self._buf.clear()


class _StdioReader:
    """Frames from a pipe. Does not own ``fd``: the caller closes it after ``close()``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._off = 0
        self._eof = False
        self._guard = CloseGuard()
        self._poller = _Poller(fd)

    def read(self, timeout: float | None = None) -> list[bytes] | None:
        if not self._guard.enter():
            return None
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                messages = self._parse()
                if messages:
                    return messages
                if self._eof or self._guard.closed:
                    return None  # a truncated last frame (writer killed mid-write) is dropped
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                woken, readable = self._poller.wait(remaining)
                if woken:
                    return None
                if readable:
                    self._fill()
                elif remaining == 0.0:
                    return []
        finally:
            self._guard.leave()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self._guard.close(self._poller.wake)
        self._poller.close()

    def _fill(self) -> None:
        """Read what the pipe holds now, in 64 KiB reads while they come back full."""
        while True:
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                self._eof = True
                return
            self._buf += chunk
            if len(chunk) < _READ_CHUNK or not self._poller.wait(0)[1]:
                return

    def _parse(self) -> list[bytes]:
        buf, off = self._buf, self._off
        out: list[bytes] = []
        with memoryview(buf) as view:
            while len(view) - off >= FRAME_SIZE:
                n, flags = FRAME.unpack_from(view, off)
                if flags or n > _MAX_FRAME:
                    raise RingError(f"corrupt frame on the event stream: length {n}, flags {flags:#x}")
                end = off + FRAME_SIZE + n
                if end > len(view):
                    break
                out.append(view[off + FRAME_SIZE : end].tobytes())
                off = end
        if off == len(buf):
            buf.clear()
            off = 0
        elif off >= _READ_CHUNK:
            del buf[:off]
            off = 0
        self._off = off
        return out


def stdio_writer(fd: int) -> EventWriter:
    """Frames to ``fd`` (the worker's original stdout); ``close`` closes ``fd``."""
    return _StdioWriter(fd)


def stdio_reader(fd: int) -> EventReader:
    """Frames from ``fd`` (the worker's stdout pipe); the caller keeps ownership of ``fd``."""
    return _StdioReader(fd)
