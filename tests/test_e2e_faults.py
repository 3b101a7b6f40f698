"""Worker faults against a real daemon: a killed, a hung and a broken worker each cost their
requests an error, never the daemon; nothing is left behind and the next request succeeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from daemon.engine import RUNNER_STOPPED
from daemon.worker_client import load_stalled_message, stalled_message
from registry.tiny_model import write_tiny_model
from tests.conftest import TINY, Daemon, daemon_with_tiny, processes_mentioning, shm_entries

pytestmark = pytest.mark.e2e

STALL = 2.0  # the watchdog bound these daemons run with
LONG = {"model": TINY, "prompt": "hi", "options": {"num_predict": 5000, "temperature": 0}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("faults")
    env = {"MLXD_WORKER_STALL_TIMEOUT": str(STALL)}
    with daemon_with_tiny(home, tiny_model_dir, extra_env=env) as running:
        yield running


def workers(daemon: Daemon) -> list[int]:
    """The daemon's worker processes (their command line names the store's model folder)."""
    return processes_mentioning(str(daemon.home / "models"))


def gone(pid: int) -> bool:
    """No process, not even a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "X"


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def stream_and_signal(
    daemon: Daemon, sig: signal.Signals, after_lines: int = 3
) -> tuple[list[Any], int, float]:
    """Stream a long generation, send ``sig`` to its worker after ``after_lines`` lines, read to
    the end. Returns the lines, the worker's PID and the seconds from the signal to the end."""
    lines: list[Any] = []
    pid, signalled = 0, 0.0
    with httpx.stream("POST", daemon.url + "/api/generate", json=LONG, timeout=60) as response:
        assert response.status_code == 200
        for raw in response.iter_lines():
            lines.append(orjson.loads(raw))
            if len(lines) == after_lines:
                assert not lines[-1].get("done"), "the stream ended before the fault"
                [pid] = workers(daemon)
                os.kill(pid, sig)
                signalled = time.monotonic()
    assert signalled, "the stream ended before the fault"
    return lines, pid, time.monotonic() - signalled


def generate_ok(daemon: Daemon, model: str = TINY) -> dict[str, Any]:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
    response = httpx.post(daemon.url + "/api/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["done"] is True
    return answer


def test_sigkill_mid_stream_ends_with_runner_stopped_and_the_next_request_reloads(daemon: Daemon) -> None:
    before = shm_entries()
    lines, pid, _ = stream_and_signal(daemon, signal.SIGKILL)
    assert lines[-1] == {"error": RUNNER_STOPPED}
    assert not any(line.get("done") for line in lines)
    assert wait_until(lambda: gone(pid), 5), "the killed worker was not reaped"
    assert shm_entries() <= before
    generate_ok(daemon)
    [new_pid] = workers(daemon)
    assert new_pid != pid
    assert "exited with status -9" in daemon.logs()


def test_sigkill_of_an_idle_worker_is_noticed(daemon: Daemon) -> None:
    generate_ok(daemon)
    [pid] = workers(daemon)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), 5)
    assert httpx.get(daemon.url + "/api/ps", timeout=10).json()["models"] == []
    generate_ok(daemon)


def test_hung_worker_is_killed_after_the_bound_and_reported(daemon: Daemon) -> None:
    lines, pid, seconds = stream_and_signal(daemon, signal.SIGSTOP)
    assert lines[-1] == {"error": stalled_message(STALL)}
    assert STALL - 0.5 <= seconds <= STALL + 3.0, seconds
    assert wait_until(lambda: gone(pid), 5), "the hung worker was not killed"
    assert "killing it" in daemon.logs()
    generate_ok(daemon)


def test_hung_worker_before_the_first_token_answers_500(daemon: Daemon) -> None:
    generate_ok(daemon)
    [pid] = workers(daemon)
    os.kill(pid, signal.SIGSTOP)
    body = {**LONG, "stream": False}
    started = time.monotonic()
    response = httpx.post(daemon.url + "/api/generate", json=body, timeout=60)
    assert response.status_code == 500
    assert response.json() == {"error": stalled_message(STALL)}
    assert time.monotonic() - started <= STALL + 3.0
    assert wait_until(lambda: gone(pid), 5)
    generate_ok(daemon)


def broken_copy(daemon: Daemon, source: Path, name: str, seed: int) -> Path:
    """Install a copy of the tiny model (its own weights, so its own store folder) as ``name``;
    return the store folder the worker will load it from."""
    copy = daemon.home.parent / f"{daemon.home.name}-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    write_tiny_model(copy, seed=seed)
    response = httpx.post(
        daemon.url + "/api/create", json={"model": name, "from": str(copy), "stream": False}, timeout=60
    )
    assert response.status_code == 200, response.text
    modelfile = httpx.post(daemon.url + "/api/show", json={"model": name}, timeout=10).json()["modelfile"]
    [folder] = [line.split(" ", 1)[1] for line in modelfile.splitlines() if line.startswith("FROM /")]
    return Path(folder)


def replace_file(folder: Path, name: str, content: bytes) -> None:
    """Damage one file of an installed model (the link to the shared blob goes, the blob stays)."""
    (folder / name).unlink()
    (folder / name).write_bytes(content)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("weights", "model.safetensors"),
        ("config", "config.json is not valid json"),
        ("shapes", "shape"),
    ],
)
def test_a_model_that_fails_to_load_answers_500_with_the_reason(
    daemon: Daemon, tiny_model_dir: Path, damage: str, reason: str
) -> None:
    name = f"broken-{damage}"
    folder = broken_copy(daemon, tiny_model_dir, name, seed={"weights": 1, "config": 2, "shapes": 3}[damage])
    if damage == "weights":
        replace_file(folder, "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    elif damage == "config":
        replace_file(folder, "config.json", b"{not json")
    else:
        config = json.loads((folder / "config.json").read_text())
        config["hidden_size"] = config["hidden_size"] * 2
        replace_file(folder, "config.json", json.dumps(config).encode())
    before = set(workers(daemon))
    for stream in (False, True):
        body = {"model": name, "prompt": "hi", "stream": stream}
        response = httpx.post(daemon.url + "/api/generate", json=body, timeout=60)
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert reason in error.lower() or reason in error, error
        assert "Traceback" not in error
    # No worker of the broken model is left, running or zombie; the daemon serves on.
    assert wait_until(lambda: set(workers(daemon)) <= before, 5), workers(daemon)
    assert [m["name"] for m in httpx.get(daemon.url + "/api/ps", timeout=10).json()["models"]] in (
        [],
        ["tiny:latest"],
    )
    generate_ok(daemon)


def test_a_load_slower_than_ollama_load_timeout_answers_500(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``OLLAMA_LOAD_TIMEOUT`` bounds a load's time without progress: past it the request gets
    a 500 that says so, the half-loaded worker is stopped, and the daemon serves on."""
    env = {"OLLAMA_LOAD_TIMEOUT": "1ms"}
    with daemon_with_tiny(tmp_path / "home", tiny_model_dir, extra_env=env) as slow:
        for stream in (False, True):
            response = httpx.post(
                slow.url + "/api/generate", json={"model": TINY, "prompt": "hi", "stream": stream}, timeout=60
            )
            assert response.status_code == 500, response.text
            assert response.json() == {"error": load_stalled_message(0.001)}
        assert wait_until(lambda: workers(slow) == [], 5), workers(slow)
        assert httpx.get(slow.url + "/api/version", timeout=10).status_code == 200
