"""End to end: model lifecycle through a real daemon and real workers (reference §4.4, §6, §7).

keep_alive expiry and unloading, ``/api/ps`` through the official client, eviction order with
``OLLAMA_MAX_LOADED_MODELS=2``, a full queue (``OLLAMA_MAX_QUEUE=1``) answering 503 while a
running stream goes on, and the CORS and Host checks on the wire. Every daemon is checked on
exit for leftover workers and shared memory (``daemon_with_tiny``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import ollama
import pytest

from daemon.scheduler import SERVER_BUSY
from tests.conftest import TINY, Daemon, daemon_with_tiny, processes_mentioning

pytestmark = pytest.mark.e2e

SHORT = {"temperature": 0, "num_predict": 4}


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny models with different weights (so different digests): seeds 0, 1 and 2."""
    from registry.tiny_model import write_tiny_model

    root = tmp_path_factory.mktemp("seeds")
    dirs = {"tiny": tiny_model_dir}
    for name, seed in (("second", 1), ("third", 2)):
        write_tiny_model(root / name, seed=seed)
        dirs[name] = root / name
    return dirs


def create(daemon: Daemon, name: str, source: Path) -> None:
    response = httpx.post(
        daemon.url + "/api/create", json={"model": name, "from": str(source), "stream": False}, timeout=60
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def client_for() -> Iterator[Callable[[Daemon], ollama.Client]]:
    clients: list[ollama.Client] = []

    def make(daemon: Daemon) -> ollama.Client:
        clients.append(ollama.Client(host=daemon.url, timeout=120))
        return clients[-1]

    yield make
    for client in clients:
        client._client.close()


def loaded(client: ollama.Client) -> list[str]:
    return [m.model or "" for m in client.ps().models]


def workers(daemon: Daemon) -> int:
    return len(processes_mentioning(str(daemon.home)))


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def seconds_left(expires_at: datetime | None) -> float:
    assert expires_at is not None and expires_at.tzinfo is not None
    return (expires_at - datetime.now(timezone.utc)).total_seconds()


# ---------------------------------------------------------------------------- keep_alive, ps, hygiene


def test_keep_alive_and_ps(
    tiny_model_dir: Path, tmp_path: Path, client_for: Callable[[Daemon], ollama.Client]
) -> None:
    # A load without a time limit (OLLAMA_LOAD_TIMEOUT 0) loads as any other.
    env = {"OLLAMA_KEEP_ALIVE": "2s", "OLLAMA_ORIGINS": "https://my.app", "OLLAMA_LOAD_TIMEOUT": "0"}
    with daemon_with_tiny(tmp_path / "home", tiny_model_dir, extra_env=env) as daemon:
        client = client_for(daemon)
        assert client.ps().models == []

        # A short keep_alive: listed while loaded, gone (worker and all) once it expires.
        client.generate(model=TINY, prompt="Hi", options=SHORT, keep_alive="1s")
        [model] = client.ps().models
        assert model.model == model.name == f"{TINY}:latest"
        assert model.digest and len(model.digest) == 64
        assert model.size and model.size > 100_000
        # size_vram is the resident size on a GPU backend and 0 on MLX's CPU backend.
        assert model.size_vram == (0 if _cpu_backend() else model.size)
        assert model.details and model.details.family == "qwen2" and model.details.parent_model == ""
        assert model.context_length == 4096
        assert 0 < seconds_left(model.expires_at) <= 1.0
        assert workers(daemon) == 1
        wait_for(lambda: loaded(client) == [] and workers(daemon) == 0, timeout=10)

        # Forever, kept by a request without keep_alive, then the unload idiom.
        assert client.generate(model=TINY, prompt="", keep_alive=-1).done_reason == "load"
        client.generate(model=TINY, prompt="Hi", options=SHORT)
        [model] = client.ps().models
        assert model.expires_at is not None and model.expires_at.year > 2300
        assert client.generate(model=TINY, prompt="", keep_alive=0).done_reason == "unload"
        assert loaded(client) == [] and workers(daemon) == 0

        # keep_alive 0 on a generation: unloaded as soon as it is done.
        streamed = list(client.generate(model=TINY, prompt="Hi", options=SHORT, keep_alive=0, stream=True))
        assert streamed[-1].done
        wait_for(lambda: loaded(client) == [] and workers(daemon) == 0, timeout=5)

        # No keep_alive: OLLAMA_KEEP_ALIVE (2s).
        client.chat(model=TINY, messages=[{"role": "user", "content": "Hi"}], options=SHORT)
        [model] = client.ps().models
        assert 1.0 < seconds_left(model.expires_at) <= 2.0
        wait_for(lambda: loaded(client) == [] and workers(daemon) == 0, timeout=10)

        check_hygiene(daemon)


def check_hygiene(daemon: Daemon) -> None:
    """CORS, the Host check and redirects on the wire (uvicorn's scope, not a test's)."""
    with httpx.Client(base_url=daemon.url, timeout=10) as http:
        assert http.get("/api/version", headers={"Origin": "https://evil.example"}).status_code == 403
        for origin in ("https://my.app", "http://localhost:8080", "app://obsidian.md"):
            response = http.get("/api/version", headers={"Origin": origin})
            assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
        preflight = http.options(
            "/api/chat", headers={"Origin": "https://my.app", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204 and preflight.headers["access-control-max-age"] == "43200"

        refused = http.get("/api/tags", headers={"Host": "attacker.example"})
        assert (refused.status_code, refused.content) == (403, b"")
        assert http.get("/api/tags", headers={"Host": "ollama.localhost:11434"}).status_code == 200

        moved = http.get("/api/tags/")
        assert (moved.status_code, moved.headers["location"]) == (301, "/api/tags")
        assert http.post("/api/show/", json={"model": TINY}).status_code == 307

        authorized = http.get("/api/tags", headers={"Authorization": "Bearer anything"})
        assert authorized.status_code == 200


# ---------------------------------------------------------------------------- eviction


def test_eviction_order(
    model_dirs: dict[str, Path], tmp_path: Path, client_for: Callable[[Daemon], ollama.Client]
) -> None:
    env = {"OLLAMA_MAX_LOADED_MODELS": "2"}
    with daemon_with_tiny(tmp_path / "home", model_dirs["tiny"], extra_env=env) as daemon:
        create(daemon, "second", model_dirs["second"])
        create(daemon, "third", model_dirs["third"])
        client = client_for(daemon)
        digests = {m.model: m.digest for m in client.list().models}
        assert len(set(digests.values())) == 3

        for name in ("tiny", "second", "third"):
            client.generate(model=name, prompt="Hi", options=SHORT)
        assert sorted(loaded(client)) == ["second:latest", "third:latest"]  # tiny: least recently used
        assert workers(daemon) == 2

        client.generate(model="second", prompt="Hi", options=SHORT)  # second is used again
        client.generate(model="tiny", prompt="Hi", options=SHORT)
        assert sorted(loaded(client)) == ["second:latest", "tiny:latest"]  # third went
        assert workers(daemon) == 2


# ---------------------------------------------------------------------------- queue limit


def test_full_queue_answers_503_and_the_running_stream_goes_on(
    model_dirs: dict[str, Path], tmp_path: Path, client_for: Callable[[Daemon], ollama.Client]
) -> None:
    env = {"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_MAX_QUEUE": "1"}
    with daemon_with_tiny(tmp_path / "home", model_dirs["tiny"], extra_env=env) as daemon:
        create(daemon, "long", model_dirs["third"])  # greedy output without an early EOS
        create(daemon, "other", model_dirs["second"])
        client = client_for(daemon)
        long_options = {"temperature": 0, "num_predict": 1000}
        client.generate(model="long", prompt="")  # loaded before the clock starts

        first_chunk = threading.Event()
        stream_done = threading.Event()
        parts: list[ollama.GenerateResponse] = []
        results: dict[str, object] = {}

        def long_stream() -> None:
            for part in client_for(daemon).generate(
                model="long", prompt="Tell me a story", options=long_options, stream=True
            ):
                parts.append(part)
                first_chunk.set()
            stream_done.set()

        def queued() -> None:  # waits for "long" to be idle: the one place in the queue
            results["queued"] = client_for(daemon).generate(model=TINY, prompt="Hi", options=SHORT)

        running = threading.Thread(target=long_stream)
        running.start()
        assert first_chunk.wait(30)
        waiting = threading.Thread(target=queued)
        waiting.start()
        time.sleep(0.3)

        with pytest.raises(ollama.ResponseError) as refused:
            client.generate(model="other", prompt="Hi", options=SHORT)
        assert not stream_done.is_set(), "the long stream ended too early for this test"
        assert (refused.value.status_code, refused.value.error) == (503, SERVER_BUSY)
        raw = httpx.post(daemon.url + "/api/chat", json={"model": "other", "messages": []}, timeout=10)
        assert raw.status_code == 503 and raw.json() == {"error": SERVER_BUSY}

        running.join(60)
        waiting.join(60)
        final = parts[-1]
        assert final.done and final.done_reason == "length" and final.eval_count == 1000
        assert all(not part.done for part in parts[:-1])
        queued_result = results["queued"]
        assert isinstance(queued_result, ollama.GenerateResponse) and queued_result.done
        assert loaded(client) == [f"{TINY}:latest"] and workers(daemon) == 1


def _cpu_backend() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu
