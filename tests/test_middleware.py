"""CORS, the Host check, trailing-slash redirects (reference §1.1, §7), by feeding ASGI requests.

Requests are driven by hand so that the scope says where they arrived: the Host check applies
to connections on a loopback address of a loopback-bound server.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.types import Message

from daemon.app import create_app
from daemon.config import Settings, parse_origins
from daemon.middleware import (
    ALLOW_HEADERS,
    DEFAULT_ORIGINS,
    OriginPolicy,
    allowed_host_name,
    is_loopback_bind,
)
from daemon.testing import ScriptedEngine
from registry.store import Store

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

Response = tuple[int, dict[str, list[str]], bytes]


async def call(
    app: Starlette,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    host: str = "127.0.0.1:11434",
    server: tuple[str, int] = ("127.0.0.1", 11434),
    query: bytes = b"",
    body: bytes = b"",
) -> Response:
    raw = [(b"host", host.encode())] if host else []
    raw += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": server,
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    out: dict[str, list[str]] = {}
    for key, value in start["headers"]:
        out.setdefault(key.decode().lower(), []).append(value.decode())
    return start["status"], out, b"".join(m.get("body", b"") for m in sent[1:])


def make_app(tmp_path: Path, store: Store, **settings: object) -> Starlette:
    return create_app(Settings(home=tmp_path / "home", **settings), ScriptedEngine(), store)  # type: ignore[arg-type]


@pytest.fixture
def local_app(tmp_path: Path, store: Store) -> Starlette:
    return make_app(tmp_path, store)


# ---------------------------------------------------------------------------- CORS


def test_default_origins() -> None:
    assert DEFAULT_ORIGINS == (
        "http://localhost",
        "https://localhost",
        "http://localhost:*",
        "https://localhost:*",
        "http://127.0.0.1",
        "https://127.0.0.1",
        "http://127.0.0.1:*",
        "https://127.0.0.1:*",
        "http://0.0.0.0",
        "https://0.0.0.0",
        "http://0.0.0.0:*",
        "https://0.0.0.0:*",
        "app://*",
        "file://*",
        "tauri://*",
        "vscode-webview://*",
        "vscode-file://*",
    )
    policy = OriginPolicy(DEFAULT_ORIGINS)
    for allowed in ("http://localhost", "https://127.0.0.1:3000", "app://obsidian.md", "tauri://localhost"):
        assert policy.allows(allowed), allowed
    for refused in ("http://example.com", "http://localhost.evil.com", "null", "chrome-extension://abc"):
        assert not policy.allows(refused), refused


def test_wildcards() -> None:
    policy = OriginPolicy(["https://*.example.com", "chrome-extension://*", "*.internal"])
    assert policy.allows("https://app.example.com")
    assert not policy.allows("http://app.example.com")
    assert policy.allows("chrome-extension://abcdef")
    assert policy.allows("http://box.internal")
    assert OriginPolicy(["*"]).allows("http://anything.example")


async def test_requests_without_origin_pass(local_app: Starlette) -> None:
    status, headers, _ = await call(local_app, "GET", "/api/version")
    assert status == 200 and "access-control-allow-origin" not in headers


async def test_same_origin_is_not_cross_origin(local_app: Starlette) -> None:
    status, headers, _ = await call(local_app, "GET", "/", {"Origin": "http://127.0.0.1:11434"})
    assert status == 200 and "access-control-allow-origin" not in headers


async def test_allowed_origin(local_app: Starlette) -> None:
    status, headers, body = await call(local_app, "GET", "/", {"Origin": "http://localhost:3000"})
    assert (status, body) == (200, b"Ollama is running")
    assert headers["access-control-allow-origin"] == ["http://localhost:3000"]
    assert headers["vary"] == ["Origin"]


async def test_disallowed_origin_is_403_with_an_empty_body(local_app: Starlette) -> None:
    for method in ("GET", "POST", "OPTIONS"):
        status, headers, body = await call(local_app, method, "/api/tags", {"Origin": "https://evil.example"})
        assert (status, body) == (403, b""), method
        assert "access-control-allow-origin" not in headers


async def test_preflight(local_app: Starlette) -> None:
    request = {
        "Origin": "http://localhost:5173",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    status, headers, body = await call(local_app, "OPTIONS", "/api/chat", request)
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == ["http://localhost:5173"]
    assert headers["access-control-allow-methods"] == ["GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"]
    assert headers["access-control-allow-headers"] == [ALLOW_HEADERS]
    assert ALLOW_HEADERS.startswith(
        "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,"
    )
    assert "X-Stainless-Retry-Count" in ALLOW_HEADERS.split(",")
    assert headers["access-control-max-age"] == ["43200"]
    assert headers["vary"] == ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]


async def test_ollama_origins(tmp_path: Path, store: Store) -> None:
    app = make_app(tmp_path, store, origins=parse_origins("https://my.app, https://*.corp.example"))
    for origin in ("https://my.app", "https://wiki.corp.example", "http://localhost"):
        status, headers, _ = await call(app, "GET", "/api/version", {"Origin": origin})
        assert status == 200 and headers["access-control-allow-origin"] == [origin]
    assert (await call(app, "GET", "/api/version", {"Origin": "https://other.app"}))[0] == 403


async def test_ollama_origins_star_allows_all(tmp_path: Path, store: Store) -> None:
    app = make_app(tmp_path, store, origins=("*",))
    status, headers, _ = await call(app, "GET", "/api/version", {"Origin": "https://anyone.example"})
    assert status == 200 and headers["access-control-allow-origin"] == ["*"] and "vary" not in headers
    status, headers, _ = await call(app, "OPTIONS", "/api/chat", {"Origin": "https://anyone.example"})
    assert status == 204 and headers["access-control-allow-origin"] == ["*"] and "vary" not in headers


def test_parse_origins() -> None:
    assert parse_origins("") == ()
    assert parse_origins(" http://a.b ,,moz-extension://x,*") == ("http://a.b", "moz-extension://x", "*")
    with pytest.raises(ValueError, match="bad origin"):
        parse_origins("example.com")
    with pytest.raises(ValueError, match=r"only one \*"):
        parse_origins("http://*.*.example")
    assert Settings.from_env({"OLLAMA_ORIGINS": "'http://x.y'"}).origins == ("http://x.y",)


# ---------------------------------------------------------------------------- Host


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:11434",
        "localhost:11434",
        "localhost",
        "LOCALHOST",
        "",
        "[::1]:11434",
        "10.1.2.3:11434",
        "192.168.1.20",
        "0.0.0.0:11434",
        "myapp.localhost:11434",
        "printer.local",
        "db.internal:80",
        socket.gethostname(),
    ],
)
async def test_allowed_hosts(local_app: Starlette, host: str) -> None:
    assert (await call(local_app, "GET", "/api/version", host=host))[0] == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:11434", "8.8.8.8", "localhost.evil.com", "[::1]"]
)
async def test_refused_hosts(local_app: Starlette, host: str) -> None:
    assert (await call(local_app, "GET", "/api/version", host=host))[:3:2] == (403, b"")


async def test_options_for_an_allowed_host_name(local_app: Starlette) -> None:
    assert (await call(local_app, "OPTIONS", "/api/chat", host="localhost:11434"))[0] == 204
    assert (await call(local_app, "OPTIONS", "/api/chat", host="127.0.0.1:11434"))[0] == 405  # as Ollama


async def test_the_check_is_off_when_not_bound_to_loopback(tmp_path: Path, store: Store) -> None:
    app = make_app(tmp_path, store, host="0.0.0.0")
    assert (await call(app, "GET", "/api/version", host="evil.example"))[0] == 200
    app = make_app(tmp_path, store, host="")
    assert (await call(app, "GET", "/api/version", host="evil.example"))[0] == 200


async def test_authorization_is_ignored(local_app: Starlette) -> None:
    headers = {"Authorization": "Bearer sk-whatever", "Content-Type": "text/plain"}
    status, _, body = await call(local_app, "POST", "/api/show", headers, body=b'{"model":"tiny"}')
    assert status == 200 and b"model_info" in body


def test_loopback_binds() -> None:
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("127.1.2.3") and is_loopback_bind("::1")
    assert is_loopback_bind("localhost") and is_loopback_bind("[::1]")
    assert not is_loopback_bind("") and not is_loopback_bind("0.0.0.0") and not is_loopback_bind("::")
    assert not is_loopback_bind("10.0.0.1")
    assert allowed_host_name("Box.Local") and not allowed_host_name("local")


# ---------------------------------------------------------------------------- trailing slash


async def test_trailing_slash_redirects(local_app: Starlette) -> None:
    status, headers, body = await call(local_app, "GET", "/api/tags/", query=b"x=1")
    assert (status, headers["location"]) == (301, ["/api/tags?x=1"])
    assert body == b'<a href="/api/tags?x=1">Moved Permanently</a>.\n\n'
    status, headers, body = await call(local_app, "POST", "/api/chat/")
    assert (status, headers["location"], body) == (307, ["/api/chat"], b"")
    assert (await call(local_app, "HEAD", "/api/version/"))[0] == 307


async def test_a_redirect_carries_any_path_percent_encoded(local_app: Starlette) -> None:
    """The ASGI path is decoded text; a header can only carry Latin-1 (this was a 500)."""
    status, headers, _ = await call(local_app, "POST", "/api/blobs/sha256:é\U0007a2c8 x/")
    assert (status, headers["location"]) == (307, ["/api/blobs/sha256:%C3%A9%F1%BA%8B%88%20x"])
    status, headers, _ = await call(local_app, "HEAD", "/api/blobs/<b>/")
    assert (status, headers["location"]) == (307, ["/api/blobs/%3Cb%3E"])


async def test_no_redirect_without_a_route_for_the_method(local_app: Starlette) -> None:
    assert (await call(local_app, "GET", "/api/chat/"))[:3:2] == (404, b"404 page not found")
    assert (await call(local_app, "POST", "/api/tags/"))[:3:2] == (404, b"404 page not found")
    assert (await call(local_app, "GET", "/nope/"))[:3:2] == (404, b"404 page not found")
    assert (await call(local_app, "GET", "/"))[0] == 200
