"""SIGTERM to a real daemon in the middle of a stream: a clean end within the bound, nothing left behind."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from daemon.shutdown import SHUTTING_DOWN
from tests.conftest import TINY, Daemon, processes_mentioning, shm_entries, start_daemon

pytestmark = pytest.mark.e2e

SLACK = 5.0  # seconds on top of the bound for the worker to stop and the process to exit


@contextmanager
def tiny_daemon_with(home: Path, model_dir: Path, ipc: str, shutdown_timeout: float) -> Iterator[Daemon]:
    before = shm_entries()
    daemon = start_daemon(home, ipc=ipc, extra_env={"MLXD_SHUTDOWN_TIMEOUT": str(shutdown_timeout)})
    try:
        response = httpx.post(
            daemon.url + "/api/create",
            json={"model": TINY, "from": str(model_dir), "stream": False},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield daemon
    finally:
        daemon.stop()
        logs = daemon.logs()
        assert "Traceback" not in logs, logs
        assert processes_mentioning(str(home)) == []
        assert shm_entries() - before == set()


def stream_then_sigterm(daemon: Daemon, body: dict[str, Any], after_lines: int) -> tuple[list[Any], float]:
    """Stream ``body``; after ``after_lines`` lines send SIGTERM; read to the end.

    Returns the lines and the seconds from the signal to the end of the stream."""
    lines: list[Any] = []
    signalled = 0.0
    with httpx.stream("POST", daemon.url + "/api/generate", json=body, timeout=60) as response:
        assert response.status_code == 200
        for raw in response.iter_lines():
            lines.append(orjson.loads(raw))
            if len(lines) == after_lines:
                assert not lines[-1].get("done"), "the stream ended before the signal"
                signalled = time.monotonic()
                daemon.proc.send_signal(signal.SIGTERM)
    assert signalled, "the stream ended before the signal"
    return lines, time.monotonic() - signalled


def long_generation(options: dict[str, Any]) -> dict[str, Any]:
    # Greedy decoding of this raw prompt runs for ~2,000 tokens before the tiny model's EOS.
    return {"model": TINY, "prompt": "a", "raw": True, "options": {"temperature": 0, **options}}


@pytest.mark.parametrize("ipc", ["shm", "stdio"])
def test_sigterm_mid_stream_ends_it_within_the_bound(tmp_path: Path, tiny_model_dir: Path, ipc: str) -> None:
    bound = 1.0
    with tiny_daemon_with(tmp_path / "home", tiny_model_dir, ipc, bound) as daemon:
        lines, ended_after = stream_then_sigterm(daemon, long_generation({"num_predict": 100_000}), 10)
        started = time.monotonic() - ended_after
        code = daemon.proc.wait(timeout=30)
        exited_after = time.monotonic() - started
    assert code == 0
    last = lines[-1]
    # Either the generation finished in time, or it was cut off with a final error line.
    assert last == {"error": SHUTTING_DOWN} or (last["done"] is True and last["done_reason"] == "stop")
    assert all(line["done"] is False for line in lines[:-1])
    assert ended_after < bound + SLACK
    assert exited_after < bound + SLACK


def test_sigterm_cuts_a_stream_off_at_once_with_a_zero_bound(tmp_path: Path, tiny_model_dir: Path) -> None:
    with tiny_daemon_with(tmp_path / "home", tiny_model_dir, "shm", 0) as daemon:
        lines, ended_after = stream_then_sigterm(daemon, long_generation({"num_predict": 100_000}), 10)
        assert daemon.proc.wait(timeout=30) == 0
    assert lines[-1] == {"error": SHUTTING_DOWN}
    assert ended_after < SLACK


def test_sigterm_lets_a_short_stream_finish(tmp_path: Path, tiny_model_dir: Path) -> None:
    with tiny_daemon_with(tmp_path / "home", tiny_model_dir, "shm", 30) as daemon:
        lines, ended_after = stream_then_sigterm(daemon, long_generation({"num_predict": 300}), 2)
        assert daemon.proc.wait(timeout=30) == 0
    assert lines[-1]["done"] is True
    assert lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 300
    assert ended_after < SLACK
