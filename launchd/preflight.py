"""Before a service is installed or started: is its address free?

A service that cannot bind its port would fail at every start (and launchd would retry it
every few seconds), so ``mlxd service install|start`` refuses up front when another server
already answers at the address, or the address cannot be bound. A server that *is* the
service itself (the service manager reports it running) is fine: reinstalling is idempotent.
"""

from __future__ import annotations

import socket

import httpx

from daemon.config import Settings, join_host_port


def answering(url: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers ``HEAD /`` at ``url`` (any status)."""
    try:
        httpx.head(url.rstrip("/") + "/", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on now, or ``None`` when it can.

    Binds the way the daemon will (``SO_REUSEADDR``, as asyncio does), then lets go at once."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        return exc
    return None


def port_problem(settings: Settings) -> str | None:
    """A one-line reason the daemon could not serve at ``settings``' address, or ``None``."""
    address = join_host_port(settings.bind_host, settings.port)
    if answering(settings.client_url):
        return (
            f"another server already answers at {settings.client_url} (Ollama, or mlxd started by hand?): "
            "stop it first, or set OLLAMA_HOST to another address"
        )
    error = bind_error(settings.bind_host, settings.port)
    if error is not None:
        reason = error.strerror or str(error)
        return f"cannot listen on {address}: {reason}; set OLLAMA_HOST to another address"
    return None
