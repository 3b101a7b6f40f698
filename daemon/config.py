"""Daemon settings from the environment, parsed the way Ollama parses them (reference §8)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daemon.durations import (
    DEFAULT_KEEP_ALIVE,
    DEFAULT_LOAD_TIMEOUT,
    parse_keep_alive_env,
    parse_load_timeout_env,
)

DEFAULT_PORT = 11434
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_MAX_LOADED_MODELS = 3  # Ollama's automatic value without a GPU count to scale it
DEFAULT_MAX_QUEUE = 512
DEFAULT_NUM_PARALLEL = 4
# What an OLLAMA_ORIGINS entry without a wildcard must start with (gin-contrib/cors with
# browser extensions allowed).
ORIGIN_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)
IpcKind = Literal["shm", "stdio"]

log = logging.getLogger("mlxd.config")

_PORT_RE = re.compile(r"[+-]?[0-9]+")


def _default_home() -> Path:
    return Path("~/.mlxd").expanduser()


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"  # "" = all interfaces (OLLAMA_HOST=":1234")
    port: int = DEFAULT_PORT
    scheme: str = "http"
    base_path: str = ""  # kept from OLLAMA_HOST ("https://example.com/ollama" → "ollama")
    home: Path = field(default_factory=_default_home)
    ipc: IpcKind = "shm"
    keep_alive: float = DEFAULT_KEEP_ALIVE  # seconds; math.inf = forever, 0 = unload after each request
    context_length: int = DEFAULT_CONTEXT_LENGTH  # the default num_ctx
    max_loaded_models: int = DEFAULT_MAX_LOADED_MODELS
    max_queue: int = DEFAULT_MAX_QUEUE  # requests that may wait for a model to load
    num_parallel: int = DEFAULT_NUM_PARALLEL  # requests one model serves at once
    load_timeout: float = DEFAULT_LOAD_TIMEOUT  # seconds a load may go without progress; math.inf = no limit
    origins: tuple[str, ...] = ()  # OLLAMA_ORIGINS: extra CORS origins (daemon.middleware)

    @property
    def url(self) -> str:
        """The address in Ollama's own notation, e.g. ``http://127.0.0.1:11434``."""
        url = f"{self.scheme}://{join_host_port(self.host, self.port)}"
        return f"{url}/{self.base_path}" if self.base_path else url

    @property
    def client_url(self) -> str:
        """Where a client on this machine connects (Ollama's ``ConnectableHost``): an unspecified
        address (``0.0.0.0``, ``::`` or none) becomes the matching loopback address."""
        host = self.host
        ip = _normalize_ip(host)
        if not host or ip == "0.0.0.0":
            host = "127.0.0.1"
        elif ip == "::":
            host = "::1"
        url = f"{self.scheme}://{join_host_port(host, self.port)}"
        return f"{url}/{self.base_path}" if self.base_path else url

    @property
    def bind_host(self) -> str:
        """The host to listen on (an empty host means every interface)."""
        return self.host or "0.0.0.0"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        scheme, host, port, base_path = parse_ollama_host(_var(env, "OLLAMA_HOST"))
        home_text = _var(env, "MLXD_HOME")
        ipc = (_var(env, "MLXD_IPC") or "shm").lower()
        if ipc not in ("shm", "stdio"):
            raise ValueError(f"MLXD_IPC must be 'shm' or 'stdio', not {_var(env, 'MLXD_IPC')!r}")
        return cls(
            host=host,
            port=port,
            scheme=scheme,
            base_path=base_path,
            home=Path(home_text).expanduser() if home_text else _default_home(),
            ipc="shm" if ipc == "shm" else "stdio",
            keep_alive=parse_keep_alive_env(_var(env, "OLLAMA_KEEP_ALIVE")),
            context_length=_context_length(_var(env, "OLLAMA_CONTEXT_LENGTH")),
            max_loaded_models=_uint(env, "OLLAMA_MAX_LOADED_MODELS", 0) or DEFAULT_MAX_LOADED_MODELS,
            max_queue=max(_uint(env, "OLLAMA_MAX_QUEUE", DEFAULT_MAX_QUEUE), 1),
            num_parallel=_uint(env, "OLLAMA_NUM_PARALLEL", 0) or DEFAULT_NUM_PARALLEL,
            load_timeout=parse_load_timeout_env(_var(env, "OLLAMA_LOAD_TIMEOUT")),
            origins=parse_origins(_var(env, "OLLAMA_ORIGINS")),
        )


def _var(env: Mapping[str, str], key: str) -> str:
    """Ollama's ``envconfig.Var``: surrounding spaces, then quote characters, are stripped."""
    return env.get(key, "").strip().strip("\"'")


def _uint(env: Mapping[str, str], key: str, default: int) -> int:
    """Ollama's ``envconfig.Uint``: a decimal unsigned integer; anything else keeps the default."""
    text = _var(env, key)
    if not text:
        return default
    if not text.isascii() or not text.isdigit():
        log.warning("invalid environment variable %s=%r, using the default %d", key, text, default)
        return default
    return int(text)


def parse_origins(text: str) -> tuple[str, ...]:
    """``OLLAMA_ORIGINS``: comma-separated origins, each with at most one ``*`` wildcard and,
    without one, a scheme CORS allows (Ollama refuses to start otherwise)."""
    origins = tuple(entry.strip() for entry in text.split(",") if entry.strip())
    for origin in origins:
        if origin.count("*") > 1:
            raise ValueError(f"OLLAMA_ORIGINS: only one * is allowed in {origin!r}")
        if "*" not in origin and not origin.lower().startswith(ORIGIN_SCHEMES):
            raise ValueError(
                f"OLLAMA_ORIGINS: bad origin {origin!r}: origins must contain '*' or start with "
                + ", ".join(ORIGIN_SCHEMES)
            )
    return origins


def _context_length(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        return DEFAULT_CONTEXT_LENGTH
    return int(text) or DEFAULT_CONTEXT_LENGTH


def split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``; ``None`` where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None  # missing ']', missing port, or too many colons
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: brackets around hosts that contain a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _normalize_ip(text: str) -> str | None:
    """Go's ``net.ParseIP(text).String()``, or None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed


def parse_ollama_host(value: str) -> tuple[str, str, int, str]:
    """``OLLAMA_HOST`` → (scheme, host, port, base path), following ``envconfig.Host``."""
    value = value.strip()
    default_port = str(DEFAULT_PORT)
    if "://" in value:
        scheme, hostport = value.split("://", 1)
        if scheme == "http":
            default_port = "80"
        elif scheme == "https":
            default_port = "443"
    elif value == "ollama.com":
        scheme, hostport = "https", "ollama.com:443"
    else:
        scheme, hostport = "http", value

    hostport, _, path = hostport.partition("/")
    split = split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        ip = _normalize_ip(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport:
            host = hostport
    else:
        host, port = split

    if not _PORT_RE.fullmatch(port) or not 0 <= int(port) <= 65535:
        port = default_port
    return scheme, host, int(port), path
