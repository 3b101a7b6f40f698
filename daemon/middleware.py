"""Ollama's server hygiene as pure ASGI middleware (reference §1.1, §7).

In Ollama's order, outermost first:

* :class:`CORSMiddleware`: gin-contrib/cors as Ollama configures it. Requests without an
  ``Origin`` (or from the server's own origin) pass untouched; a disallowed origin gets 403
  with an empty body; an allowed preflight gets 204 with the CORS headers.
* :class:`AllowedHostsMiddleware`: the DNS-rebinding guard of a server bound to loopback:
  the ``Host`` header must name this machine (``localhost``, a ``.local`` name, a loopback
  or private address, ...), else 403.
* :class:`TrailingSlashMiddleware`: gin's trailing-slash redirect, 301 for GET and 307 for
  every other method, only where the path without the slash is a route for that method.

No ``BaseHTTPMiddleware``: responses stream through untouched. ``Authorization`` headers
are not looked at anywhere (clients send them, e.g. with ``OLLAMA_API_KEY``).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.config import Settings, split_host_port

# envconfig.AllowedOrigins: after the OLLAMA_ORIGINS entries.
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for port in ("", ":*")
        for scheme in ("http", "https")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
# Go's http.CanonicalHeaderKey of Ollama's list, joined as gin-contrib/cors does.
ALLOW_HEADERS = ",".join(
    [
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        "Openai-Beta",
        *(
            f"X-Stainless-{part}"
            for part in (
                "Arch",
                "Async",
                "Custom-Poll-Interval",
                "Helper-Method",
                "Lang",
                "Os",
                "Package-Version",
                "Poll-Helper",
                "Retry-Count",
                "Runtime",
                "Runtime-Version",
                "Timeout",
            )
        ),
    ]
)
MAX_AGE = str(12 * 3600)


def hygiene_middleware(settings: Settings) -> list[Middleware]:
    """The three middlewares, configured from the settings, in Ollama's order."""
    return [
        Middleware(CORSMiddleware, origins=settings.origins),
        Middleware(AllowedHostsMiddleware, bind_host=settings.host),
        Middleware(TrailingSlashMiddleware),
    ]


async def _empty(status: int, scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=status)(scope, receive, send)


# ---------------------------------------------------------------------------- CORS


class OriginPolicy:
    """Which origins may make cross-origin requests: exact entries, and entries with one
    ``*`` matched by prefix and suffix; a lone ``*`` allows every origin."""

    def __init__(self, origins: Iterable[str]) -> None:
        entries = [origin.strip().lower() for origin in origins]
        self.allow_all = "*" in entries
        self.exact = {entry for entry in entries if "*" not in entry}
        self.wildcards = [tuple(entry.split("*", 1)) for entry in entries if "*" in entry]

    def allows(self, origin: str) -> bool:
        if self.allow_all or origin in self.exact:
            return True
        return any(origin.startswith(prefix) and origin.endswith(suffix) for prefix, suffix in self.wildcards)


class CORSMiddleware:
    def __init__(self, app: ASGIApp, origins: Sequence[str] = ()) -> None:
        self.app = app
        self.policy = OriginPolicy([*origins, *DEFAULT_ORIGINS])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin", "")
        host = headers.get("host", "")
        if not origin or origin in (f"http://{host}", f"https://{host}"):
            await self.app(scope, receive, send)  # not a cross-origin request
            return
        if not self.policy.allows(origin):
            await _empty(403, scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._preflight(origin, scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                if self.policy.allow_all:
                    response_headers["Access-Control-Allow-Origin"] = "*"
                else:
                    response_headers.append("Vary", "Origin")
                    response_headers["Access-Control-Allow-Origin"] = origin
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, origin: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = Response(status_code=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = MAX_AGE
        if self.policy.allow_all:
            response.headers["Access-Control-Allow-Origin"] = "*"
        else:
            for value in ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"):
                response.headers.append("Vary", value)
            response.headers["Access-Control-Allow-Origin"] = origin
        await response(scope, receive, send)


# ---------------------------------------------------------------------------- Host


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmapped(ip: IP) -> IP:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only.
_PRIVATE = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def is_loopback_bind(host: str) -> bool:
    """Whether a server bound to ``host`` listens on loopback only (``""`` = every interface)."""
    if not host:
        return False
    ip = _ip(host.strip("[]"))
    if ip is not None:
        return _unmapped(ip).is_loopback
    if host.lower() == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = [_ip(str(info[4][0]).split("%")[0]) for info in infos]
    return bool(addresses) and all(a is not None and _unmapped(a).is_loopback for a in addresses)


@functools.lru_cache(maxsize=1)
def local_addresses() -> frozenset[str]:
    """This machine's own addresses, as far as the standard library can tell."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]).split("%")[0])
    except OSError:
        pass
    return frozenset(found)


def allowed_ip(ip: IP) -> bool:
    plain = _unmapped(ip)
    if plain.is_loopback or any(plain in net for net in _PRIVATE if net.version == plain.version):
        return True
    return ip.is_unspecified or str(ip) in local_addresses() or str(plain) in local_addresses()


def allowed_host_name(host: str) -> bool:
    """Ollama's ``allowedHost``: localhost, this machine's name, or a local-only domain."""
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith((".localhost", ".local", ".internal"))


class AllowedHostsMiddleware:
    """403 for a ``Host`` that does not name this machine, when the server listens on loopback.

    Applies to connections that arrived on a loopback address of a loopback-bound server,
    which is every connection such a server gets."""

    def __init__(self, app: ASGIApp, bind_host: str = "127.0.0.1") -> None:
        self.app = app
        self.active = is_loopback_bind(bind_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.active or not _arrived_on_loopback(scope):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        split = split_host_port(header)
        host = split[0] if split is not None else header
        ip = _ip(host)
        if ip is not None and allowed_ip(ip):
            await self.app(scope, receive, send)
        elif ip is None and allowed_host_name(host):
            if scope["method"] == "OPTIONS":
                await _empty(204, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        else:
            await _empty(403, scope, receive, send)


def _arrived_on_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server:
        return False
    ip = _ip(str(server[0]).split("%")[0])
    return ip is not None and _unmapped(ip).is_loopback


# ---------------------------------------------------------------------------- trailing slash


class TrailingSlashMiddleware:
    """``/api/tags/`` → ``/api/tags``: 301 for GET, 307 otherwise (gin's RedirectTrailingSlash).

    Only when the path has no route of its own and the path without the slash has one for
    the request's method; the application's router must not redirect by itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or len(path) < 2 or not path.endswith("/"):
            await self.app(scope, receive, send)
            return
        router = getattr(scope.get("app"), "router", None)
        routes = getattr(router, "routes", [])
        if _matches(routes, scope, path) or not _matches(routes, scope, path[:-1]):
            await self.app(scope, receive, send)
            return
        # The path arrives decoded: a header carries it percent-encoded (it may hold any
        # character, and a header only Latin-1).
        location = quote(path[:-1], safe="/!$&'()*+,;=:@-._~")
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            location += "?" + query
        if scope["method"] == "GET":
            response = Response(
                f'<a href="{location}">Moved Permanently</a>.\n\n',
                status_code=301,
                media_type="text/html",
                headers={"Location": location},
            )
        else:
            response = Response(status_code=307, headers={"Location": location})
        await response(scope, receive, send)


def _matches(routes: Sequence[object], scope: Scope, path: str) -> bool:
    child = {**scope, "path": path}
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is not None and matches(child)[0] == Match.FULL:
            return True
    return False
