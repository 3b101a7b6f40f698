"""``mlxd serve``: the daemon process: logging, the store, the worker pool, uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from daemon.app import create_app
from daemon.config import Settings
from daemon.pool import WorkerPool
from registry.store import Store


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    store = Store(settings.home)
    engine = WorkerPool(ipc=settings.ipc)
    app = create_app(settings, engine, store)
    config = uvicorn.Config(
        app,
        host=settings.bind_host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn exits quietly when it cannot bind; say why the process failed.
    return 0 if server.started else 1
