"""Settings from the environment: OLLAMA_HOST exactly as Ollama parses it (reference §8)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from daemon.config import Settings, parse_ollama_host, split_host_port

# envconfig/config_test.go TestHost, plus the rows of the reference table.
HOST_CASES = {
    "empty": ("", "http://127.0.0.1:11434"),
    "only address": ("1.2.3.4", "http://1.2.3.4:11434"),
    "only port": (":1234", "http://:1234"),
    "address and port": ("1.2.3.4:1234", "http://1.2.3.4:1234"),
    "hostname": ("example.com", "http://example.com:11434"),
    "hostname and port": ("example.com:1234", "http://example.com:1234"),
    "zero port": (":0", "http://:0"),
    "too large port": (":66000", "http://:11434"),
    "too small port": (":-1", "http://:11434"),
    "not a port": (":abc", "http://:11434"),
    "empty port": ("1.2.3.4:", "http://1.2.3.4:11434"),
    "ipv6 localhost": ("[::1]", "http://[::1]:11434"),
    "ipv6 world open": ("[::]", "http://[::]:11434"),
    "ipv6 no brackets": ("::1", "http://[::1]:11434"),
    "ipv6 + port": ("[::1]:1337", "http://[::1]:1337"),
    "ipv6 long form": ("0:0:0:0:0:0:0:1", "http://[::1]:11434"),
    "extra space": (" 1.2.3.4 ", "http://1.2.3.4:11434"),
    "extra quotes": ('"1.2.3.4"', "http://1.2.3.4:11434"),
    "extra space+quotes": (' " 1.2.3.4 " ', "http://1.2.3.4:11434"),
    "extra single quotes": ("'1.2.3.4'", "http://1.2.3.4:11434"),
    "http": ("http://1.2.3.4", "http://1.2.3.4:80"),
    "http port": ("http://1.2.3.4:4321", "http://1.2.3.4:4321"),
    "https": ("https://1.2.3.4", "https://1.2.3.4:443"),
    "https port": ("https://1.2.3.4:4321", "https://1.2.3.4:4321"),
    "https bad port": ("https://1.2.3.4:99999", "https://1.2.3.4:443"),
    "proxy path": ("https://example.com/ollama", "https://example.com:443/ollama"),
    "ollama.com": ("ollama.com", "https://ollama.com:443"),
    "all interfaces": ("0.0.0.0", "http://0.0.0.0:11434"),
}


@pytest.mark.parametrize(("value", "expected"), list(HOST_CASES.values()), ids=list(HOST_CASES))
def test_ollama_host(value: str, expected: str) -> None:
    assert Settings.from_env({"OLLAMA_HOST": value}).url == expected


def test_ollama_host_unset_is_default() -> None:
    settings = Settings.from_env({})
    assert (settings.scheme, settings.host, settings.port, settings.base_path) == (
        "http",
        "127.0.0.1",
        11434,
        "",
    )
    assert settings.bind_host == "127.0.0.1"


def test_bind_and_client_addresses() -> None:
    everywhere = Settings.from_env({"OLLAMA_HOST": ":1234"})
    assert (everywhere.bind_host, everywhere.port) == ("0.0.0.0", 1234)
    assert everywhere.client_url == "http://127.0.0.1:1234"
    assert Settings.from_env({"OLLAMA_HOST": "0.0.0.0:5"}).client_url == "http://127.0.0.1:5"
    assert Settings.from_env({"OLLAMA_HOST": "[::]:5"}).client_url == "http://[::1]:5"
    assert Settings.from_env({"OLLAMA_HOST": "example.com"}).client_url == "http://example.com:11434"
    assert Settings.from_env({"OLLAMA_HOST": "https://h/base"}).client_url == "https://h:443/base"


def test_split_host_port_matches_go() -> None:
    assert split_host_port("h:1") == ("h", "1")
    assert split_host_port(":1") == ("", "1")
    assert split_host_port("[::1]:2") == ("::1", "2")
    assert split_host_port("h") is None  # missing port
    assert split_host_port("::1") is None  # too many colons
    assert split_host_port("[::1]") is None  # missing port
    assert split_host_port("[::1]x:2") is None
    assert split_host_port("a]:1") is None
    assert parse_ollama_host("h:+80") == ("http", "h", 80, "")


def test_home(tmp_path: Path) -> None:
    assert Settings.from_env({}).home == Path("~/.mlxd").expanduser()
    assert Settings.from_env({"MLXD_HOME": str(tmp_path)}).home == tmp_path
    assert Settings.from_env({"MLXD_HOME": "~/x"}).home == Path("~/x").expanduser()


def test_ipc() -> None:
    assert Settings.from_env({}).ipc == "shm"
    assert Settings.from_env({"MLXD_IPC": "stdio"}).ipc == "stdio"
    assert Settings.from_env({"MLXD_IPC": " SHM "}).ipc == "shm"
    with pytest.raises(ValueError, match="MLXD_IPC must be 'shm' or 'stdio'"):
        Settings.from_env({"MLXD_IPC": "pipe"})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("", 300.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("3600", 3600.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("-1", math.inf),
        ("-1m", math.inf),
        ("'24h'", 86400.0),
        ("forever", 300.0),  # unparsable: Ollama keeps 5m
        ("5x", 300.0),
        ("1.5", 300.0),
    ],
)
def test_keep_alive(value: str, seconds: float) -> None:
    assert Settings.from_env({"OLLAMA_KEEP_ALIVE": value}).keep_alive == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("", 300.0),
        ("10m", 600.0),
        ("90", 90.0),
        ("0", math.inf),  # zero or less: no limit, as in Ollama
        ("-1", math.inf),
        ("-5m", math.inf),
        ("soon", 300.0),  # unparsable: the default
    ],
)
def test_load_timeout(value: str, seconds: float) -> None:
    assert Settings.from_env({"OLLAMA_LOAD_TIMEOUT": value}).load_timeout == seconds


@pytest.mark.parametrize(
    ("value", "length"),
    [("", 4096), ("8192", 8192), ("0", 4096), ("-5", 4096), ("lots", 4096), (" 2048 ", 2048)],
)
def test_context_length(value: str, length: int) -> None:
    assert Settings.from_env({"OLLAMA_CONTEXT_LENGTH": value}).context_length == length


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert settings.keep_alive == 300.0
    assert settings.context_length == 4096
    assert settings.url == "http://127.0.0.1:11434"
