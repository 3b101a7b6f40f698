"""Worker → daemon event delivery, without a model: how long an event takes from the
worker's flush to the daemon's event loop, and what it costs the daemon.

    python -m bench.delivery --events 2000 --interval-ms 2 --rounds 3 [--payload-bytes N] [--table]

A child process writes one token event per flush every ``--interval-ms`` through the
real transport (``shm`` and ``stdio``), stamped with the monotonic clock, which the
processes of one machine share, as the worker does for a lone stream. This process
reads the events two ways, alternately, round by round (``--payload-bytes`` pads each
event's text, e.g. to the size of an embedding batch):

* ``loop``: the event loop watches the transport's descriptor and reads in its own
  thread (what the daemon does);
* ``thread``: a reader thread blocks in ``read`` and hands each batch to the loop with
  ``call_soon_threadsafe`` (what the daemon did before: one thread hop per batch).

Either way an event counts as delivered when the loop's callback has decoded it.
Prints one JSON object: latency percentiles in µs and this process's CPU time per event
for each transport and way, medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

from bench.harness import ROOT, emit, median
from worker import protocol
from worker.transport import EventReader, ShmChannel, stdio_reader

WRITER = """
import os, sys, time
from worker import protocol
from worker.transport import attach_shm_writer, stdio_writer
ipc, events, interval, pad = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), " " * int(sys.argv[4])
writer = attach_shm_writer(sys.argv[5]) if ipc == "shm" else stdio_writer(os.dup(1))
next_at = time.monotonic() + 0.2  # the reader is watching by then
for i in range(events):
    while (pause := next_at - time.monotonic()) > 0:
        time.sleep(pause)
    writer.send(protocol.text(1, "%d token%s" % (time.monotonic_ns(), pad)))
    writer.flush()
    next_at += interval
writer.close()
"""

WAYS = ("loop", "thread")


Spawned = tuple[subprocess.Popen[bytes], EventReader, Any]


def _spawn(ipc: str, events: int, interval: float, pad: int) -> Spawned:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONPATH": path}
    args = [sys.executable, "-c", WRITER, ipc, str(events), str(interval), str(pad)]
    if ipc == "shm":
        channel = ShmChannel.create()
        proc = subprocess.Popen([*args, channel.spec], cwd=ROOT, env=env, pass_fds=channel.pass_fds)
        channel.handed_over()
        return proc, channel.reader(), channel
    r, w = os.pipe()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=w)
    os.close(w)
    return proc, stdio_reader(r), r


def _release(reader: EventReader, owner: Any) -> None:
    reader.close()
    if isinstance(owner, ShmChannel):
        owner.close()
    else:
        os.close(owner)


async def _receive(reader: EventReader, way: str) -> list[int]:
    """Latencies in ns of every event, delivered ``way``, until the writer has closed."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    latencies: list[int] = []

    def dispatch(batch: list[bytes] | None) -> None:
        if batch is None:
            if not done.done():
                done.set_result(None)
            return
        now = time.monotonic_ns()
        for payload in batch:
            event: dict[str, Any] = protocol.decode_event(payload)  # type: ignore[assignment]
            latencies.append(now - int(event["s"].split(" ", 1)[0]))

    if way == "loop":

        def on_readable() -> None:
            batch = reader.read(0)
            if batch is None:
                loop.remove_reader(reader.fileno())
            if batch != []:
                dispatch(batch)

        loop.add_reader(reader.fileno(), on_readable)
        await done
    else:

        def read_loop() -> None:
            while True:
                batch = reader.read(0.5)
                if batch:
                    loop.call_soon_threadsafe(dispatch, batch)
                elif batch is None:
                    loop.call_soon_threadsafe(dispatch, None)
                    return

        thread = threading.Thread(target=read_loop, daemon=True)
        thread.start()
        await done
        thread.join()
    return latencies


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(ipc: str, way: str, events: int, interval: float, pad: int = 0) -> dict[str, float]:
    proc, reader, owner = _spawn(ipc, events, interval, pad)
    try:
        cpu = _cpu_seconds()
        latencies = sorted(asyncio.run(_receive(reader, way)))
        cpu = _cpu_seconds() - cpu
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _release(reader, owner)
    if len(latencies) != events:
        raise RuntimeError(f"{ipc}/{way}: {len(latencies)} of {events} events arrived")

    def pct(q: float) -> float:
        return latencies[min(int(q * len(latencies)), len(latencies) - 1)] / 1000

    cpu_per_event = cpu / events * 1e6
    return {"p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99), "cpu_us_per_event": cpu_per_event}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per round")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="time between the writer's flushes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per transport and way, interleaved")
    parser.add_argument("--ipc", choices=["shm", "stdio", "both"], default="both")
    parser.add_argument("--payload-bytes", type=int, default=0, help="padding added to each event's text")
    parser.add_argument("--table", action="store_true", help="also print a readable table (stderr)")
    args = parser.parse_args(argv)
    ipcs = ["shm", "stdio"] if args.ipc == "both" else [args.ipc]
    runs: dict[str, list[dict[str, float]]] = {f"{ipc}_{way}": [] for ipc in ipcs for way in WAYS}
    for r in range(args.rounds):
        ways = WAYS if r % 2 == 0 else WAYS[::-1]
        for ipc in ipcs:
            for way in ways:
                interval = args.interval_ms / 1000
                runs[f"{ipc}_{way}"].append(one_round(ipc, way, args.events, interval, args.payload_bytes))
    result: dict[str, Any] = {
        "events": args.events,
        "interval_ms": args.interval_ms,
        "rounds": args.rounds,
        "payload_bytes": args.payload_bytes,
    }
    for key, rounds in runs.items():
        for field in rounds[0]:
            result[f"{key}_{field}"] = round(median([r[field] for r in rounds]), 1)
    emit(result, args.table)


if __name__ == "__main__":
    main()
