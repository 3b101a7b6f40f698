"""The command line's HTTP client of the daemon, with Ollama's error rules (reference §10.1).

Every failure becomes a :class:`CLIError` whose text is what the user sees after ``Error:``:
the server's ``error`` field, an ``{"error"}`` line in a stream, or a sentence saying that
no server answers at the configured address.
"""

from __future__ import annotations

import platform
from collections.abc import Generator, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import orjson

from daemon import __version__

NOT_RUNNING = "could not connect to mlxd at {url}, run 'mlxd serve' to start it"
LOST = "lost the connection to mlxd at {url}: {reason}"
USER_AGENT = (
    f"mlxd/{__version__} ({platform.machine()} {platform.system().lower()}) "
    f"Python/{platform.python_version()}"
)


class CLIError(Exception):
    """A failure reported as one ``Error: …`` line on stderr with exit status 1."""


class StatusError(CLIError):
    """The server answered with an HTTP error status (``api.StatusError`` in Ollama's client)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """A small synchronous client of the daemon's HTTP API (``OLLAMA_HOST``)."""

    def __init__(
        self, base_url: str, connect_timeout: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(connect_timeout, read=None),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )

    def close(self) -> None:
        self.http.close()

    # -- liveness ---------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """Whether a server answers ``HEAD /`` with a status below 400."""
        try:
            return self.http.head("/").status_code < 400
        except httpx.HTTPError:
            return False

    def require_server(self) -> None:
        """Ollama's ``checkServerHeartbeat``: a refused connection is the "not running" error."""
        try:
            response = self.http.head("/")
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise CLIError(self.not_running()) from None
        except httpx.HTTPError as exc:
            raise CLIError(self._lost(exc)) from None
        if response.status_code >= 400:
            raise StatusError(response.status_code, _status_line(response.status_code))

    def not_running(self) -> str:
        return NOT_RUNNING.format(url=self.base_url)

    # -- requests ---------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        return _json(self._call("GET", path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return _json(self._call("POST", path, body))

    def delete(self, path: str, body: dict[str, Any]) -> Any:
        return _json(self._call("DELETE", path, body))

    def has_blob(self, digest: str) -> bool:
        """``HEAD /api/blobs/<digest>``: whether the server already has the file."""
        return self._call("HEAD", f"/api/blobs/{digest}", allow=(404,)).status_code == 200

    def upload_blob(self, digest: str, path: Path) -> None:
        """``POST /api/blobs/<digest>`` with the file's bytes, streamed."""

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        self._call("POST", f"/api/blobs/{digest}", content=chunks())

    def stream(self, path: str, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """POST and yield each NDJSON object.

        An error status becomes :class:`StatusError` (``"<status>: <error>"``, as Ollama's
        client words it); an ``{"error"}`` line in a 200 stream becomes :class:`CLIError`.
        Closing the generator closes the response, which cancels the work on the server."""
        try:
            with self.http.stream("POST", path, content=orjson.dumps(body), headers=_NDJSON) as response:
                if response.status_code >= 400:
                    response.read()
                    message = _error_text(response)
                    raise StatusError(
                        response.status_code, f"{_status_line(response.status_code)}: {message}"
                    )
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        raise CLIError(line) from None
                    if isinstance(obj, dict) and obj.get("error"):
                        raise CLIError(str(obj["error"]))
                    if isinstance(obj, dict):
                        yield obj
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise CLIError(self.not_running()) from None
        except httpx.HTTPError as exc:
            raise CLIError(self._lost(exc)) from None

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        if body is not None:
            content = orjson.dumps(body)
        try:
            response = self.http.request(method, path, content=content)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise CLIError(self.not_running()) from None
        except httpx.HTTPError as exc:
            raise CLIError(self._lost(exc)) from None
        if response.status_code >= 400 and response.status_code not in allow:
            raise StatusError(response.status_code, _error_text(response))
        return response

    def _lost(self, exc: httpx.HTTPError) -> str:
        reason = str(exc) or type(exc).__name__
        return LOST.format(url=self.base_url, reason=reason)


_NDJSON = {"Accept": "application/x-ndjson"}


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise CLIError(
            f"the server answered {response.request.url.path} with something that is not JSON"
        ) from None


def _status_line(status: int) -> str:
    """``404 Not Found``: Go's ``Response.Status``."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _error_text(response: httpx.Response) -> str:
    """The ``error`` field of a JSON error body, else the body itself, else the status."""
    try:
        error = orjson.loads(response.content)["error"]
        if error:
            return str(error)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    text = response.text.strip()
    return text.splitlines()[0] if text else _status_line(response.status_code)
