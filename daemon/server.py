"""``mlxd serve``: the daemon process: logging, the store, the worker pool, uvicorn."""

from __future__ import annotations

import logging
import os
import socket
import sys
from types import FrameType

import uvicorn

from daemon.app import create_app
from daemon.body_limit import BodyLimitMiddleware, max_body_bytes
from daemon.config import Settings
from daemon.pool import WorkerPool
from daemon.shutdown import Drain, shutdown_timeout
from registry.store import Store


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Refuse new work and bound the requests still running before uvicorn waits for them.
        self.drain.begin()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutting down, so the process would die of
        # it; a SIGTERM or Ctrl-C is the normal way to stop a service: exit 0 instead.
        self._captured_signals.clear()


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    store = Store(settings.home)
    engine = WorkerPool.from_settings(settings)
    drain = Drain(shutdown_timeout(os.environ))
    app = create_app(settings, engine, store, drain)
    config = uvicorn.Config(
        BodyLimitMiddleware(app, max_body_bytes()),
        host=settings.bind_host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # A backstop only: the drain ends every request at its own deadline.
        timeout_graceful_shutdown=int(drain.timeout) + 5,
    )
    server = _Server(config, drain)
    server.run()
    # uvicorn exits quietly when it cannot bind; say why the process failed.
    return 0 if server.started else 1
