"""Clients that go away mid-stream, against a real daemon: the worker stops generating for them
at once, and a hundred of them leave the daemon as it was (processes, segments, descriptors,
memory)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import TINY, Daemon, daemon_with_tiny, processes_mentioning, shm_entries

pytestmark = pytest.mark.e2e

BUDGET = 100_000  # tokens the abandoned requests ask for: minutes of decoding if nothing stops them
ABANDONED = {"model": TINY, "prompt": "hi", "options": {"num_predict": BUDGET, "temperature": 0}}
CLIENTS = 100
RSS_SLACK = 24 * 2**20  # bytes of growth allowed to each process over the hundred clients
FD_SLACK = 4


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("cancel")
    # One sequence at a time: a request behind one that is not cancelled would wait for its budget.
    with daemon_with_tiny(home, tiny_model_dir, extra_env={"OLLAMA_NUM_PARALLEL": "1"}) as running:
        yield running


def workers(daemon: Daemon) -> list[int]:
    return processes_mentioning(str(daemon.home / "models"))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def abandon(url: str, path: str = "/api/generate", body: dict[str, Any] | None = None) -> None:
    """Start a long stream, read its first chunk, hang up."""
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", url + path, json=body or ABANDONED) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_lines())
        if path.startswith("/api/"):
            assert not orjson.loads(first).get("done")
        else:
            assert first.startswith("data: {")


def short(daemon: Daemon) -> tuple[float, dict[str, Any]]:
    """A four-token generation: its latency and its answer."""
    started = time.monotonic()
    body = {"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
    response = httpx.post(daemon.url + "/api/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return time.monotonic() - started, response.json()


def test_a_disconnect_frees_the_slot_within_a_step(daemon: Daemon) -> None:
    _, warm = short(daemon)
    rate = warm["eval_count"] / max(warm["eval_duration"], 1) * 1e9  # tokens per second
    abandon(daemon.url)
    latency, answer = short(daemon)
    assert answer["done_reason"] == "length"
    # The abandoned request would hold the only slot for BUDGET / rate seconds.
    assert latency < 5.0, latency
    assert BUDGET / rate > 10 * latency, (BUDGET / rate, latency)
    # Through the OpenAI route too.
    body = {
        "model": TINY,
        "stream": True,
        "max_tokens": BUDGET,
        "messages": [{"role": "user", "content": "hi"}],
    }
    abandon(daemon.url, "/v1/chat/completions", body)
    latency, _ = short(daemon)
    assert latency < 5.0, latency


def test_a_hundred_clients_that_hang_up_leave_the_daemon_as_it_was(daemon: Daemon) -> None:
    # Warm up: the model is loaded and the paths taken below have run once.
    for _ in range(3):
        abandon(daemon.url)
    short(daemon)
    [worker] = workers(daemon)
    pid = daemon.proc.pid
    before = {
        "shm": shm_entries(),
        "daemon_rss": rss(pid),
        "worker_rss": rss(worker),
        "daemon_fds": descriptors(pid),
        "worker_fds": descriptors(worker),
    }
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda _: abandon(daemon.url), range(CLIENTS)))
    elapsed = time.monotonic() - started
    latency, _ = short(daemon)  # served at once: no abandoned generation is still running
    assert latency < 5.0, latency
    after = {
        "shm": shm_entries(),
        "daemon_rss": rss(pid),
        "worker_rss": rss(worker),
        "daemon_fds": descriptors(pid),
        "worker_fds": descriptors(worker),
    }
    print(
        f"\n{CLIENTS} hang-ups in {elapsed:.1f}s; daemon RSS {before['daemon_rss'] / 2**20:.1f} → "
        f"{after['daemon_rss'] / 2**20:.1f} MiB, worker RSS {before['worker_rss'] / 2**20:.1f} → "
        f"{after['worker_rss'] / 2**20:.1f} MiB, daemon fds {before['daemon_fds']} → {after['daemon_fds']}, "
        f"worker fds {before['worker_fds']} → {after['worker_fds']}"
    )
    assert workers(daemon) == [worker]
    assert after["shm"] == before["shm"]
    assert after["daemon_fds"] <= before["daemon_fds"] + FD_SLACK
    assert after["worker_fds"] <= before["worker_fds"] + FD_SLACK
    assert after["daemon_rss"] <= before["daemon_rss"] + RSS_SLACK
    assert after["worker_rss"] <= before["worker_rss"] + RSS_SLACK
    assert httpx.get(daemon.url + "/api/ps", timeout=10).json()["models"][0]["name"] == "tiny:latest"
