"""The real transports: shared memory and pipes, across processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.ring import FRAME, RingError
from worker.transport import (
    EventReader,
    EventWriter,
    ShmChannel,
    attach_shm_writer,
    stdio_reader,
    stdio_writer,
)

ROOT = Path(__file__).resolve().parent.parent
DEV_SHM = Path("/dev/shm")
needs_dev_shm = pytest.mark.skipif(not DEV_SHM.is_dir(), reason="POSIX shm is not visible as files here")

# Deterministic payloads, shared by the test and its child processes. Every 500th message
# is larger than the 4 KiB rings used below, so it travels as fragments.
PAYLOAD_SRC = """
def payload(i):
    if i % 500 == 250:
        return bytes(range(256)) * 40 + b"%d" % i
    return (b"%d:" % i) * (i % 9)
"""
namespace: dict[str, Any] = {}
exec(PAYLOAD_SRC, namespace)
payload: Callable[[int], bytes] = namespace["payload"]

SHM_CHILD = (
    PAYLOAD_SRC
    + """
import sys
from worker.transport import attach_shm_writer
spec, count = sys.argv[1], int(sys.argv[2])
writer = attach_shm_writer(spec)
writer.send(b"attached")
writer.flush()
try:
    i = 0
    while count < 0 or i < count:
        writer.send(payload(i))
        if i % 7 == 0:
            writer.flush()
        i += 1
    writer.close()
except BrokenPipeError:
    sys.exit(3)
"""
)

STDIO_CHILD = (
    PAYLOAD_SRC
    + """
import os, sys
from worker.transport import stdio_writer
count = int(sys.argv[1])
events = os.dup(1)
os.dup2(2, 1)
writer = stdio_writer(events)
print("stray output goes to stderr")
for i in range(count):
    writer.send(payload(i))
    if i % 7 == 0:
        writer.flush()
writer.close()
"""
)


_spawned: list[subprocess.Popen[bytes]] = []


def spawn(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, **kwargs)
    _spawned.append(proc)
    return proc


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """No child outlives its test, whatever the test's outcome."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def ours(channel: ShmChannel) -> list[str]:
    """Entries in /dev/shm that belong to this channel (segment and semaphore)."""
    return sorted(name for name in os.listdir(DEV_SHM) if channel.name.lstrip("/") in name)


def spawn_writer(channel: ShmChannel, code: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """A child that attaches to ``channel`` as its writer, started as the daemon starts a worker."""
    child = spawn(code, channel.spec, *args, pass_fds=channel.pass_fds, **kwargs)
    channel.handed_over()
    return child


def attach_here(channel: ShmChannel) -> EventWriter:
    """The writer in this process, holding its own copy of the doorbell as a worker would."""
    name, fd = channel.spec.split(":")
    writer = attach_shm_writer(f"{name}:{os.dup(int(fd))}")
    channel.handed_over()
    return writer


def read_until_none(reader: EventReader, timeout: float = 4.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = reader.read(0.5)
        if batch is None:
            return out
        out.extend(batch)
    raise AssertionError("the writer never closed")


@pytest.fixture
def channel() -> Iterator[ShmChannel]:
    ch = ShmChannel.create(4096)
    yield ch
    ch.close()


# ------------------------------------------------------------------ shared memory


@needs_dev_shm
def test_channel_names_modes_and_cleanup() -> None:
    ch = ShmChannel.create(4096)
    name = ch.name.lstrip("/")
    assert ch.name.startswith("/mlxd-") and len(ch.name) == 22
    (fd,) = ch.pass_fds
    assert ch.spec == f"{ch.name}:{fd}"
    assert ours(ch) == [name, f"sem.{name}-s"]
    for entry in ours(ch):
        assert (DEV_SHM / entry).stat().st_mode & 0o777 == 0o600
    ch.unlink()
    ch.unlink()  # idempotent
    assert ours(ch) == []
    ch.close()
    ch.close()
    assert ch.pass_fds == ()
    with pytest.raises(OSError):
        os.fstat(fd)  # the doorbell went with it
    with pytest.raises(ValueError):
        ch.reader()


def test_attach_rejects_foreign_specs() -> None:
    for spec in ("", "/etc/passwd", "/mlxd-../../x:3", "/mlxd-0123456789abcdeg:3", "/mlxd-0123456789abcdef"):
        with pytest.raises(ValueError):
            attach_shm_writer(spec)
    with pytest.raises(ValueError):
        ShmChannel.create(8)


@needs_dev_shm
def test_shm_in_one_process_and_writer_unlinks_on_attach() -> None:
    channel = ShmChannel.create(1 << 20)  # holds everything sent below: no reader thread needed
    writer = attach_here(channel)
    assert ours(channel) == []  # names gone, mapping still shared
    reader = channel.reader()
    assert channel.reader() is reader
    for i in range(1000):
        writer.send(payload(i))
    writer.flush()
    got = reader.read(1.0)
    assert got is not None and len(got) > 0
    writer.close()
    got += read_until_none(reader)
    assert got == [payload(i) for i in range(1000)]
    channel.close()


@needs_dev_shm
def test_shm_across_processes(channel: ShmChannel) -> None:
    count = 20_000
    child = spawn_writer(channel, SHM_CHILD, str(count))
    got = read_until_none(channel.reader())
    assert child.wait(5) == 0
    assert got[0] == b"attached"
    assert got[1:] == [payload(i) for i in range(count)]
    channel.close()
    assert ours(channel) == []


WATCHER = """
import mmap, sys, posix_ipc
memory = posix_ipc.SharedMemory(sys.argv[1])
mapping = mmap.mmap(memory.fd, memory.size)
header = memoryview(mapping)[:384]
positions, flags = header.cast("Q"), header.cast("I")
print("ready", flush=True)
last = samples = 0
while not flags[34]:  # until the writer has closed
    pos = positions[16]  # the write position
    if pos < last:
        print("went back from", last, "to", pos, flush=True)
        sys.exit(1)
    last = pos
    samples += 1
print("samples", samples, "last", last, flush=True)
"""


@needs_dev_shm
def test_shm_positions_never_go_back_as_seen_from_another_process(channel: ShmChannel) -> None:
    """A third process samples the write position while the writer publishes after every
    message: it must only ever grow (a store must not pass through another value)."""
    watcher = spawn(WATCHER, channel.name, stdout=subprocess.PIPE)
    assert watcher.stdout is not None
    assert watcher.stdout.readline() == b"ready\n"
    writer = spawn_writer(channel, SHM_CHILD.replace("i % 7 == 0", "True"), "100000")
    got = read_until_none(channel.reader())
    assert writer.wait(5) == 0
    out, _ = watcher.communicate(timeout=5)
    assert watcher.returncode == 0, out
    assert len(got) == 100_001
    assert out.startswith(b"samples") and not out.endswith(b" 0\n")


@needs_dev_shm
def test_shm_child_killed_mid_write_leaves_nothing(channel: ShmChannel) -> None:
    child = spawn_writer(channel, SHM_CHILD, "-1")  # writes until killed
    reader = channel.reader()
    got: list[bytes] = []
    while len(got) < 3000:
        batch = reader.read(2.0)
        assert batch, "the child did not write"
        got.extend(batch)
    child.send_signal(signal.SIGKILL)
    child.wait(5)
    # What was published before the kill, then the end: the doorbell's pipe closed with
    # the process, although the writer never closed the ring.
    got += read_until_none(reader)
    assert got[0] == b"attached"
    assert got[1:] == [payload(i) for i in range(len(got) - 1)]
    assert reader.read(0) is None
    channel.close()
    assert ours(channel) == []


@needs_dev_shm
def test_shm_child_killed_before_attaching_leaves_nothing(channel: ShmChannel) -> None:
    child = spawn_writer(channel, "import time; time.sleep(30)")
    assert len(ours(channel)) == 2
    child.kill()
    child.wait(5)
    assert channel.reader().read(1.0) is None  # its exit ends the stream
    channel.close()
    assert ours(channel) == []


def test_shm_reader_close_breaks_a_blocked_child(channel: ShmChannel) -> None:
    child = spawn_writer(channel, SHM_CHILD, "-1")
    reader = channel.reader()
    assert reader.read(2.0)
    time.sleep(0.05)  # let the child fill the ring and wait for space
    reader.close()  # also closes the channel
    assert child.wait(2) == 3
    assert reader.read(0) is None


def test_shm_close_wakes_a_blocked_read(channel: ShmChannel) -> None:
    reader = channel.reader()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(reader.read(None)))
    thread.start()
    time.sleep(0.05)
    channel.close()
    thread.join(1.0)
    assert not thread.is_alive() and result == [None]


# ------------------------------------------------------------------ stdio


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    fds = [r, w]
    yield r, w
    for fd in fds:
        with contextlib.suppress(OSError):  # closed by the test or by the writer
            os.close(fd)


def test_stdio_across_processes(pipe: tuple[int, int]) -> None:
    r, w = pipe
    count = 20_000
    child = spawn(STDIO_CHILD, str(count), stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    reader = stdio_reader(r)
    got = read_until_none(reader)
    _, err = child.communicate(timeout=5)
    assert child.returncode == 0
    assert b"stray output" in err
    assert got == [payload(i) for i in range(count)]
    reader.close()


def test_stdio_partial_writes(pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = pipe
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    writer = stdio_writer(w)
    reader = stdio_reader(r)
    messages = [payload(i) for i in range(300)]
    result: list[list[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(read_until_none(reader)))
    thread.start()
    for m in messages:
        writer.send(m)
    writer.close()
    thread.join(4)
    assert result == [messages]


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="Linux pipes only")
def test_stdio_non_blocking_full_pipe(pipe: tuple[int, int]) -> None:
    r, w = pipe
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    writer = stdio_writer(w)
    reader = stdio_reader(r)
    messages = [b"a" * 10, bytes(range(256)) * 2000, b"b"]
    result: list[list[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(read_until_none(reader)))
    thread.start()
    for m in messages:
        writer.send(m)
    writer.close()
    thread.join(4)
    assert result == [messages]


def test_stdio_partial_reads(pipe: tuple[int, int]) -> None:
    r, w = pipe
    messages = [b"hello", b"", b"x" * 300, b"end"]
    stream = b"".join(FRAME.pack(len(m), 0) + m for m in messages)
    reader = stdio_reader(r)

    def trickle() -> None:
        for i in range(len(stream)):
            os.write(w, stream[i : i + 1])
            if i % 50 == 0:
                time.sleep(0.001)
        os.close(w)

    thread = threading.Thread(target=trickle)
    thread.start()
    got = read_until_none(reader)
    thread.join(2)
    assert got == messages


def test_stdio_timeout_batch_and_eof(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = stdio_reader(r)
    started = time.monotonic()
    assert reader.read(0.1) == []
    assert time.monotonic() - started >= 0.09
    writer = stdio_writer(w)
    for i in range(50):
        writer.send(b"%d" % i)
    assert reader.read(0) == []  # nothing until the flush
    writer.flush()
    assert reader.read(1.0) == [b"%d" % i for i in range(50)]
    writer.send(b"last")
    writer.close()  # closes w
    assert reader.read(1.0) == [b"last"]
    assert reader.read(1.0) is None
    with pytest.raises(ValueError):
        writer.send(b"late")


def test_stdio_truncated_frame_at_eof(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, FRAME.pack(3, 0) + b"abc" + FRAME.pack(10, 0) + b"abc")
    os.close(w)
    reader = stdio_reader(r)
    assert reader.read(1.0) == [b"abc"]
    assert reader.read(1.0) is None


def test_stdio_rejects_foreign_bytes(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"Traceback (most recent call last):\n")
    with pytest.raises(RingError):
        stdio_reader(r).read(1.0)


def test_stdio_reader_gone_gives_broken_pipe(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = stdio_writer(w)
    os.close(r)
    writer.send(b"x")
    with pytest.raises(BrokenPipeError):
        writer.flush()
    writer.close()  # never raises


def test_stdio_large_send_goes_out_without_flush(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = stdio_writer(w)
    reader = stdio_reader(r)
    got: list[bytes] = []

    def collect() -> None:
        while len(got) < 2 and (batch := reader.read(2.0)):
            got.extend(batch)

    thread = threading.Thread(target=collect)
    thread.start()
    writer.send(b"q" * 40_000)
    writer.send(b"r" * 40_000)  # past the buffer bound: written without a flush
    thread.join(3.0)
    assert got == [b"q" * 40_000, b"r" * 40_000]
    writer.close()


def test_stdio_close_wakes_a_blocked_read(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    reader = stdio_reader(r)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(reader.read(None)))
    thread.start()
    time.sleep(0.05)
    reader.close()
    thread.join(1.0)
    assert not thread.is_alive() and result == [None]
    assert reader.read(0) is None
    reader.close()


# ------------------------------------------------------------------ watched by an event loop

BURSTS_SRC = """
import os, sys, time
def bursts(writer):
    # Three bursts of 200 messages, a flush every 10, 0.2 s of silence between them;
    # the process then exits without closing the writer.
    for burst in range(3):
        for i in range(200):
            writer.send(b"%d:%d" % (burst, i))
            if i % 10 == 9:
                writer.flush()
        time.sleep(0.2)
    os._exit(0)
"""
SHM_BURSTS = BURSTS_SRC + "from worker.transport import attach_shm_writer as w\nbursts(w(sys.argv[1]))\n"
STDIO_BURSTS = BURSTS_SRC + "from worker.transport import stdio_writer as w\nbursts(w(os.dup(1)))\n"


async def collect_in_loop(reader: EventReader) -> tuple[list[bytes], int]:
    """Read as the daemon does: the loop watches ``fileno()``, each wake-up reads with
    ``read(0)``. Returns the messages and the number of wake-ups that found nothing."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    got: list[bytes] = []
    idle = 0

    def on_readable() -> None:
        nonlocal idle
        batch = reader.read(0)
        if batch is None:
            loop.remove_reader(reader.fileno())
            done.set_result(None)
        elif batch:
            got.extend(batch)
        else:
            idle += 1

    loop.add_reader(reader.fileno(), on_readable)
    await asyncio.wait_for(done, 10)
    return got, idle


@pytest.mark.parametrize("ipc", ["shm", "stdio"])
def test_an_event_loop_reads_without_a_thread_and_sees_the_exit(ipc: str) -> None:
    """Every message arrives in order, the writer's exit ends the stream without a close,
    and a quiet writer does not keep the loop busy (the descriptor is level-triggered)."""
    if ipc == "shm":
        channel = ShmChannel.create(4096)
        child = spawn_writer(channel, SHM_BURSTS)
        reader = channel.reader()
    else:
        r, w = os.pipe()
        child = spawn(STDIO_BURSTS, stdout=w)
        os.close(w)
        reader = stdio_reader(r)
    got, idle = asyncio.run(collect_in_loop(reader))
    assert child.wait(5) == 0
    assert got == [b"%d:%d" % (burst, i) for burst in range(3) for i in range(200)]
    # 60 flushes; at most one empty pass per flush (a byte rung after the pass that
    # already took its messages). A busy loop would spin thousands of times in 0.4 s.
    assert idle <= 60
    reader.close()
    if ipc == "shm":
        channel.close()
    else:
        os.close(r)


def test_read_zero_never_blocks_and_takes_the_doorbell() -> None:
    channel = ShmChannel.create(4096)
    writer = attach_here(channel)
    reader = channel.reader()
    started = time.monotonic()
    assert reader.read(0) == []
    assert time.monotonic() - started < 0.05
    writer.send(b"a")
    writer.flush()
    writer.flush()  # nothing new: no second ring
    assert select.select([reader.fileno()], [], [], 0)[0]
    assert reader.read(0) == [b"a"]
    assert not select.select([reader.fileno()], [], [], 0)[0]  # nothing left to wake the loop
    writer.close()
    assert reader.read(0) is None
    channel.close()
