"""Load against a real daemon: 64 concurrent clients, a fixed number of requests each, over
the native and OpenAI routes. Every request succeeds or gets the documented 503 (a full load
queue); the daemon's and the worker's memory stay flat after the warm-up round, and no
descriptor, process or shared-memory segment is left over.

Short by default (it runs in ``make test``); ``MLXD_SOAK_ROUNDS=50`` makes it a soak.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from daemon.scheduler import SERVER_BUSY
from tests.conftest import TINY, Daemon, daemon_with_tiny, processes_mentioning, shm_entries

pytestmark = pytest.mark.e2e

CLIENTS = 64
ROUNDS = int(os.environ.get("MLXD_SOAK_ROUNDS", "2"))  # measured rounds after the warm-up one
MAX_QUEUE = 16  # small, so the cold round overflows the load queue and meets the 503
RSS_SLACK = 32 * 2**20
FD_SLACK = 4


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("load")
    with daemon_with_tiny(home, tiny_model_dir, extra_env={"OLLAMA_MAX_QUEUE": str(MAX_QUEUE)}) as running:
        yield running


def one_request(client: httpx.Client, url: str, i: int) -> str:
    """One request of three kinds in turn; its outcome: "ok", "busy" or a description."""
    options = {"num_predict": 6, "seed": i}
    kind = i % 3
    if kind == 0:
        body = {"model": TINY, "prompt": f"hi {i}", "options": options}
        with client.stream("POST", url + "/api/generate", json=body) as response:
            if response.status_code != 200:
                response.read()
                return outcome(response)
            lines = [orjson.loads(line) for line in response.iter_lines()]
            return "ok" if lines and lines[-1].get("done") else f"stream ended with {lines[-1:]}"
    if kind == 1:
        body = {"model": TINY, "messages": [{"role": "user", "content": f"hi {i}"}], "stream": False}
        response = client.post(url + "/api/chat", json={**body, "options": options})
        return "ok" if response.status_code == 200 and response.json()["done"] else outcome(response)
    body = {"model": TINY, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 6, "seed": i}
    response = client.post(url + "/v1/chat/completions", json=body)
    ok = response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    return "ok" if ok else outcome(response)


def outcome(response: httpx.Response) -> str:
    if response.status_code == 503 and SERVER_BUSY in response.text:
        return "busy"
    return f"{response.status_code} {response.text[:200]}"


def run_round(url: str, round_no: int) -> tuple[Counter[str], float]:
    def client_work(c: int) -> list[str]:
        with httpx.Client(timeout=120) as client:
            return [one_request(client, url, round_no * 1000 + c)]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = [r for rs in pool.map(client_work, range(CLIENTS)) for r in rs]
    return Counter(results), time.monotonic() - started


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(pid)


@dataclass(frozen=True)
class Snapshot:
    worker: int
    daemon_rss: int
    worker_rss: int
    daemon_fds: int
    worker_fds: int
    shm: frozenset[str]


def snapshot(daemon: Daemon) -> Snapshot:
    [worker] = processes_mentioning(str(daemon.home / "models"))
    pid = daemon.proc.pid
    return Snapshot(
        worker=worker,
        daemon_rss=rss(pid),
        worker_rss=rss(worker),
        daemon_fds=len(os.listdir(f"/proc/{pid}/fd")),
        worker_fds=len(os.listdir(f"/proc/{worker}/fd")),
        shm=frozenset(shm_entries()),
    )


def test_64_concurrent_clients(daemon: Daemon) -> None:
    # Cold: the model is not loaded, so all 64 wait for one load and the queue overflows.
    cold, cold_seconds = run_round(daemon.url, 0)
    assert set(cold) <= {"ok", "busy"}, cold
    assert cold["ok"] >= MAX_QUEUE - 1, cold
    warm, _ = run_round(daemon.url, 1)  # warm-up: allocations of a full batch happen here
    assert warm == Counter(ok=CLIENTS), warm
    before = snapshot(daemon)
    totals: Counter[str] = Counter()
    started = time.monotonic()
    for round_no in range(2, 2 + ROUNDS):
        results, _ = run_round(daemon.url, round_no)
        totals += results
    seconds = time.monotonic() - started
    after = snapshot(daemon)
    print(
        f"\ncold round: {dict(cold)} in {cold_seconds:.1f}s; {ROUNDS} loaded rounds of {CLIENTS} clients: "
        f"{dict(totals)} in {seconds:.1f}s ({sum(totals.values()) / seconds:.1f} req/s); "
        f"daemon RSS {before.daemon_rss / 2**20:.1f} → {after.daemon_rss / 2**20:.1f} MiB, "
        f"worker RSS {before.worker_rss / 2**20:.1f} → {after.worker_rss / 2**20:.1f} MiB, "
        f"fds daemon {before.daemon_fds} → {after.daemon_fds}, worker {before.worker_fds} → "
        f"{after.worker_fds}"
    )
    # Once loaded, nothing waits for a load: no 503 at all.
    assert totals == Counter(ok=CLIENTS * ROUNDS), totals
    assert after.worker == before.worker
    assert after.shm == before.shm
    assert after.daemon_fds <= before.daemon_fds + FD_SLACK
    assert after.worker_fds <= before.worker_fds + FD_SLACK
    assert after.daemon_rss <= before.daemon_rss + RSS_SLACK
    assert after.worker_rss <= before.worker_rss + RSS_SLACK
