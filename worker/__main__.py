"""``python -m worker --model DIR --ipc shm --channel SPEC``: one model, one process.

The main thread reads commands (JSON lines) from stdin; one dedicated thread owns MLX:
it loads and warms up the model, then runs the generations one after another and writes
their events to the transport. EOF on stdin means the daemon is gone: the worker exits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from worker import protocol
from worker.batching import JobQueue
from worker.model_files import DamagedModel, check_model_files
from worker.protocol import Command
from worker.transport import EventWriter, attach_shm_writer, stdio_writer

if TYPE_CHECKING:
    from worker.generation import Generator

log = logging.getLogger("mlxd.worker")


class Worker:
    def __init__(self, model_dir: Path, writer: EventWriter) -> None:
        self.model_dir = model_dir
        self.writer = writer
        self.jobs = JobQueue()
        self.cancelled: set[int] = set()
        self.stopping = False

    def mlx_thread(self) -> None:
        try:
            from worker import embedding

            check_model_files(self.model_dir)
            generator: Generator | embedding.Encoder
            if embedding.is_encoder(self.model_dir):
                generator = embedding.Encoder(self.model_dir)
            else:
                from worker.generation import Generator

                generator = Generator(self.model_dir, lambda: self._emit(protocol.loading()))
        except BaseException as exc:  # any load failure is reported, then the worker exits
            if isinstance(exc, (DamagedModel, ValueError)):  # the message says it all
                log.error("loading %s failed: %s", self.model_dir, exc)
            else:
                log.exception("loading %s failed", self.model_dir)
            self._emit(protocol.error(protocol.WORKER_ID, f"failed to load model: {exc}", 500))
            self.writer.close()
            os._exit(1)  # the main thread is blocked reading stdin
        self._emit(protocol.ready(generator.info()))
        while (job := self.jobs.get()) is not None and not self.stopping:
            request_id = job["id"]
            if request_id in self.cancelled:
                self.cancelled.discard(request_id)
                continue
            try:
                if isinstance(generator, embedding.Encoder) or job["op"] == "embed":
                    embedding.serve(generator, job, self.writer)
                else:
                    generator.serve(job, self.jobs, self.writer, self.is_cancelled)
            except BrokenPipeError:
                return
            except Exception as exc:
                log.exception("generation %d failed", request_id)
                self._emit(protocol.error(request_id, str(exc) or type(exc).__name__, 500))
            finally:
                self.cancelled.discard(request_id)

    def is_cancelled(self, request_id: int) -> bool:
        return self.stopping or request_id in self.cancelled

    def _emit(self, payload: bytes) -> None:
        self.writer.send(payload)
        self.writer.flush()

    def handle(self, command: Command) -> bool:
        """Act on one command; False means stop reading."""
        if command["op"] == "generate" or command["op"] == "embed":
            self.jobs.put(command)
        elif command["op"] == "cancel":
            self.cancelled.add(command["id"])
        else:
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--model", required=True, type=Path, help="MLX model directory")
    parser.add_argument("--ipc", choices=["shm", "stdio"], default="shm")
    parser.add_argument("--channel", default="", help="shared-memory channel spec (shm)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")

    if args.ipc == "shm":
        writer = attach_shm_writer(args.channel)
    else:
        # Frames go to the original stdout; anything printed lands on stderr instead.
        events_fd = os.dup(1)
        os.dup2(2, 1)
        writer = stdio_writer(events_fd)

    worker = Worker(args.model, writer)
    thread = threading.Thread(target=worker.mlx_thread, name="mlx", daemon=True)
    thread.start()
    try:
        for line in sys.stdin.buffer:
            if not line.strip():
                continue
            try:
                command = protocol.decode_command(line)
            except ValueError as exc:
                log.error("bad command: %s", exc)
                continue
            if not worker.handle(command):
                break
    except OSError:
        pass
    worker.stopping = True  # cancels the generation in flight, if any
    worker.jobs.put(None)
    thread.join(timeout=10)
    with contextlib.suppress(OSError):  # the reader is gone already
        writer.close()
    return 0


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    # Skip interpreter teardown: MLX's C++ runtime aborts ("terminate called without an
    # active exception") when its thread-local streams are destroyed at exit.
    os._exit(status)
