"""The ring buffer fed bytes in one process: framing, wrap-around, fragments, wake-ups."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.ring import (
    FLAG_MORE,
    FRAME,
    FRAME_SIZE,
    HEADER_SIZE,
    RingError,
    RingReader,
    RingWriter,
    ThreadSignal,
    format_ring,
    ring_pair,
)

WRITE_POS, READ_POS, WRITER_WAITING = 128, 256, 140


class CountingSignal(ThreadSignal):
    def __init__(self) -> None:
        super().__init__()
        self.posts = 0

    def post(self) -> None:
        self.posts += 1
        super().post()


def make(
    capacity: int = 64, **writer_kwargs: Any
) -> tuple[bytearray, RingWriter, RingReader, CountingSignal, CountingSignal]:
    buf = bytearray(HEADER_SIZE + capacity)
    format_ring(buf)
    data, space = CountingSignal(), CountingSignal()
    return buf, RingWriter(buf, data, space, **writer_kwargs), RingReader(buf, data, space), data, space


def u64(buf: bytearray, off: int) -> int:
    value: int = struct.unpack_from("=Q", buf, off)[0]
    return value


def put_wrapped(buf: bytearray, capacity: int, pos: int, data: bytes) -> None:
    for i, byte in enumerate(data):
        buf[HEADER_SIZE + (pos + i) % capacity] = byte


class Background:
    """Runs ``fn`` in a thread and keeps its result or exception for the test to check."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 3.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def read_all(reader: RingReader, timeout: float = 3.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = reader.read(0.5)
        if batch is None:
            return out
        out.extend(batch)
    raise AssertionError("writer never closed")


# ------------------------------------------------------------------ framing


def test_frame_layout_and_publish_on_flush() -> None:
    buf, w, r, data, _ = make(64)
    w.send(b"abc")
    assert buf[HEADER_SIZE : HEADER_SIZE + 8] == FRAME.pack(3, 0) + b"abc"
    assert u64(buf, WRITE_POS) == 0 and data.posts == 0  # written, not published
    assert r.read(0) == []
    w.flush()
    assert u64(buf, WRITE_POS) == 8 and data.posts == 1
    assert r.read(0) == [b"abc"]
    assert u64(buf, READ_POS) == 8
    w.flush()  # nothing new: no wake-up
    assert data.posts == 1


def test_reader_parses_handwritten_frames_across_the_end() -> None:
    capacity = 64
    buf = bytearray(HEADER_SIZE + capacity)
    format_ring(buf)
    start = 61  # the frame header itself straddles the end
    struct.pack_into("=Q", buf, WRITE_POS, start)
    struct.pack_into("=Q", buf, READ_POS, start)
    reader = RingReader(buf, ThreadSignal(), ThreadSignal())
    frames = FRAME.pack(10, FLAG_MORE) + b"0123456789" + FRAME.pack(2, 0) + b"ab" + FRAME.pack(0, 0)
    put_wrapped(buf, capacity, start, frames)
    struct.pack_into("=Q", buf, WRITE_POS, start + len(frames))
    assert reader.read(0) == [b"0123456789ab", b""]
    assert u64(buf, READ_POS) == start + len(frames)


@pytest.mark.parametrize(
    "frame",
    [FRAME.pack(100, 0) + b"x", FRAME.pack(1, 0x80) + b"x"],
    ids=["length-beyond-published", "unknown-flag"],
)
def test_corrupt_frame_raises(frame: bytes) -> None:
    buf = bytearray(HEADER_SIZE + 64)
    format_ring(buf)
    reader = RingReader(buf, ThreadSignal(), ThreadSignal())
    buf[HEADER_SIZE : HEADER_SIZE + len(frame)] = frame
    struct.pack_into("=Q", buf, WRITE_POS, len(frame))
    with pytest.raises(RingError):
        reader.read(0)


def test_rejects_foreign_buffers_and_bad_positions() -> None:
    with pytest.raises(RingError):
        RingReader(bytearray(HEADER_SIZE + 64), ThreadSignal(), ThreadSignal())
    with pytest.raises(ValueError):
        format_ring(bytearray(HEADER_SIZE + 8))
    buf = bytearray(HEADER_SIZE + 64)
    format_ring(buf)
    reader = RingReader(buf, ThreadSignal(), ThreadSignal())
    struct.pack_into("=Q", buf, WRITE_POS, 65)  # more than a ring's worth unread
    with pytest.raises(RingError):
        reader.read(0)


def test_empty_payloads() -> None:
    _, w, r, _, _ = make(64)
    for _ in range(12):  # 12 * 5 bytes: fills the ring almost exactly
        w.send(b"")
    w.flush()
    assert r.read(0) == [b""] * 12


def test_wraparound_many_rounds() -> None:
    capacity = 64
    buf, w, r, _, _ = make(capacity)
    sent: list[bytes] = []
    got: list[bytes] = []
    straddled = set()
    for i in range(200):
        payload = bytes([i % 256]) * (i % 23)
        idx = u64(buf, WRITE_POS) % capacity
        if idx + FRAME_SIZE > capacity:
            straddled.add("header")
        elif idx + FRAME_SIZE + len(payload) > capacity:
            straddled.add("payload")
        w.send(payload)
        w.flush()
        sent.append(payload)
        got.extend(r.read(0) or [])
    assert got == sent
    assert straddled == {"header", "payload"}


def test_one_wake_per_flush_and_one_batch() -> None:
    _, w, r, data, _ = make(4096)
    messages = [b"token %d" % i for i in range(100)]
    for m in messages:
        w.send(m)
    w.flush()
    assert data.posts == 1
    assert r.read(1.0) == messages


def test_surplus_wakeups_are_harmless() -> None:
    _, w, r, data, _ = make(256)
    for _ in range(3):
        data.post()
    started = time.monotonic()
    assert r.read(0.2) == []  # spurious counts never end a read early
    assert time.monotonic() - started >= 0.19
    for i in range(5):  # five flushes, five counts; one read takes all
        w.send(b"%d" % i)
        w.flush()
    assert r.read(1.0) == [b"0", b"1", b"2", b"3", b"4"]
    started = time.monotonic()
    assert r.read(0.1) == []
    assert time.monotonic() - started >= 0.09


# ------------------------------------------------------------------ blocking and closing


def test_full_ring_writer_waits_for_the_reader() -> None:
    _, w, r, _, space = make(64)
    messages = [bytes([i]) * 20 for i in range(30)]  # 25 bytes per frame: two fit

    def produce() -> None:
        for m in messages:
            w.send(m)
        w.close()

    producer = Background(produce)
    time.sleep(0.1)
    assert producer.thread.is_alive()  # blocked: the ring is full
    got = read_all(r)
    producer.join()
    assert got == messages
    assert space.posts > 0  # the reader woke the waiting writer


def test_message_larger_than_the_ring() -> None:
    _, w, r, _, _ = make(64)
    messages = [b"small", bytes(range(256)) * 4, b"", b"x" * 59, b"y" * 60, bytes(5000), b"end"]

    def produce() -> None:
        for m in messages:
            w.send(m)
        w.close()

    producer = Background(produce)
    got = read_all(r)
    producer.join()
    assert got == messages


def test_reader_close_gives_a_blocked_writer_broken_pipe() -> None:
    _, w, r, _, _ = make(64)

    def produce() -> None:
        for _ in range(10):
            w.send(b"z" * 30)

    producer = Background(produce)
    time.sleep(0.05)
    started = time.monotonic()
    r.close()
    with pytest.raises(BrokenPipeError):
        producer.join()
    assert time.monotonic() - started < 0.5
    with pytest.raises(BrokenPipeError):
        w.flush()
    w.close()  # never raises
    assert r.read(0) is None


def test_lost_peer_gives_a_blocked_writer_broken_pipe() -> None:
    alive = True
    _, w, _, _, _ = make(64, peer_alive=lambda: alive, wait_interval=0.01)
    w.send(b"a" * 50)
    producer = Background(lambda: w.send(b"b" * 50))
    time.sleep(0.05)
    assert producer.thread.is_alive()
    alive = False
    with pytest.raises(BrokenPipeError):
        producer.join(1.0)


def test_writer_close_delivers_the_rest_then_none() -> None:
    _, w, r, _, _ = make(256)
    for i in range(5):
        w.send(b"m%d" % i)
    w.close()  # flushes
    assert r.read(0) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert r.read(0) is None
    assert r.read(1.0) is None
    with pytest.raises(ValueError):
        w.send(b"late")
    w.close()  # idempotent


def test_writer_close_from_another_thread_unblocks_send() -> None:
    _, w, r, _, _ = make(64)
    w.send(b"a" * 50)
    producer = Background(lambda: w.send(b"b" * 50))
    time.sleep(0.05)
    w.close()
    with pytest.raises(BrokenPipeError):
        producer.join()
    assert r.read(0) == [b"a" * 50]
    assert r.read(0) is None


def test_reader_close_wakes_a_blocked_read() -> None:
    _, _, r, _, _ = make(64)
    blocked = Background(lambda: r.read(None))
    time.sleep(0.05)
    r.close()
    assert blocked.join(1.0) is None
    r.close()


# ------------------------------------------------------------------ properties

step = st.tuples(st.binary(max_size=120), st.booleans(), st.booleans())  # payload, flush, read


@settings(max_examples=200, deadline=None, database=None)
@given(capacity=st.sampled_from([128, 131, 200]), steps=st.lists(step, max_size=80))
def test_property_single_thread(capacity: int, steps: list[tuple[bytes, bool, bool]]) -> None:
    """A read returns exactly what was flushed since the previous read, in order."""
    _, w, r, _, _ = make(capacity)
    used = 0  # bytes sent since the ring was last emptied
    unflushed: list[bytes] = []
    flushed: list[bytes] = []
    for payload, flush, read in steps:
        if used + FRAME_SIZE + len(payload) > capacity:
            w.flush()
            assert r.read(0) == flushed + unflushed
            flushed, unflushed, used = [], [], 0
        w.send(payload)
        unflushed.append(payload)
        used += FRAME_SIZE + len(payload)
        if flush:
            w.flush()
            flushed += unflushed
            unflushed = []
        if read:
            assert r.read(0) == flushed
            flushed = []
            if not unflushed:
                used = 0
    w.close()
    if flushed or unflushed:
        assert r.read(0) == flushed + unflushed
    assert r.read(0) is None


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.sampled_from([64, 97, 256]),
    steps=st.lists(st.tuples(st.integers(0, 800), st.booleans()), max_size=40),
)
def test_property_concurrent_reader(capacity: int, steps: list[tuple[int, bool]]) -> None:
    """Any payloads, larger than the ring included, with any flush points, arrive intact."""
    _, w, r, _, _ = make(capacity)
    messages = [bytes([i % 251]) * size for i, (size, _) in enumerate(steps)]
    consumer = Background(lambda: read_all(r))
    for message, (_, flush) in zip(messages, steps, strict=True):
        w.send(message)
        if flush:
            w.flush()
    w.close()
    assert consumer.join() == messages


def test_ring_pair_round_trip() -> None:
    w, r = ring_pair(1024)
    w.send(b"hello")
    w.flush()
    assert r.read(1.0) == [b"hello"]
    assert w.capacity == 1024
