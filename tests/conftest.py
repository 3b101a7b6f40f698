"""Shared fixtures: the tiny model, and a real ``mlxd serve`` on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import settings

# Property and fuzz tests draw the same examples every run (a CI run fails for the change it
# tests, not for an input first drawn that day); HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
# Tests never reach the real Hugging Face: pulls go to a fake hub, or fail fast here.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ.pop("HF_TOKEN", None)

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shm_entries() -> set[str]:
    """Our shared-memory segments and semaphores currently in /dev/shm, leaving out those of
    workers that are starting (their channel is named on their command line): other test
    sessions on this machine may be starting daemons and workers at the same time."""
    try:
        names = {name for name in os.listdir("/dev/shm") if "mlxd" in name}
    except FileNotFoundError:
        return set()
    if not names:
        return names
    in_use = set(_CHANNEL_RE.findall(" ".join(_command_lines())))
    return {name for name in names if not (set(_CHANNEL_RE.findall(name)) & in_use)}


_CHANNEL_RE = re.compile(r"mlxd-[0-9a-f]+")


def _proc_files(name: str) -> Iterator[tuple[int, bytes]]:
    """(PID, ``/proc/PID/<name>``) of every other process that can be read (Linux)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            yield int(entry), Path(f"/proc/{entry}/{name}").read_bytes()
        except OSError:
            continue


def _command_lines() -> list[str]:
    return [raw.replace(b"\0", b" ").decode(errors="replace") for _, raw in _proc_files("cmdline")]


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (Linux /proc)."""
    wanted = text.encode()
    return [pid for pid, raw in _proc_files("cmdline") if wanted in raw.replace(b"\0", b" ")]


def processes_with_environment(variable: str, value: str) -> list[int]:
    """PIDs started with ``variable=value`` in their environment (Linux /proc): a daemon's
    command line names neither its home nor its port."""
    wanted = f"{variable}={value}".encode()
    return [pid for pid, raw in _proc_files("environ") if wanted in raw.split(b"\0")]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from registry.tiny_model import write_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    write_tiny_model(path, seed=0)
    return path


@dataclass
class Daemon:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(home: Path, ipc: str = "shm", extra_env: dict[str, str] | None = None) -> Daemon:
    port = free_port()
    env = dict(os.environ)
    env.update({"OLLAMA_HOST": f"127.0.0.1:{port}", "MLXD_HOME": str(home), "MLXD_IPC": ipc})
    env.update(extra_env or {})
    home.mkdir(parents=True, exist_ok=True)
    log = home / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    daemon = Daemon(f"http://127.0.0.1:{port}", home, proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early:\n{daemon.logs()}")
        try:
            if httpx.head(daemon.url + "/", timeout=1).status_code == 200:
                return daemon
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(f"daemon did not start:\n{daemon.logs()}")


@contextmanager
def daemon_with_tiny(
    home: Path, model_dir: Path, ipc: str = "shm", extra_env: dict[str, str] | None = None
) -> Iterator[Daemon]:
    """A real daemon with the tiny model installed as ``tiny``; on exit, checks that it
    stopped cleanly and left no process, no shared memory and no traceback behind."""
    before = shm_entries()
    daemon = start_daemon(home, ipc=ipc, extra_env=extra_env)
    try:
        response = httpx.post(
            daemon.url + "/api/create",
            json={"model": TINY, "from": str(model_dir), "stream": False},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield daemon
    finally:
        code = daemon.stop()
        logs = daemon.logs()
        assert code == 0, logs
        assert "Traceback" not in logs, logs
        assert processes_mentioning(str(home)) == []
        assert shm_entries() - before == set()


@pytest.fixture(scope="module", params=["shm", "stdio"])
def tiny_daemon(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A real daemon per IPC build, with the tiny model installed."""
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    with daemon_with_tiny(home, tiny_model_dir, request.param) as daemon:
        yield daemon
