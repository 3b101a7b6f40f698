"""End to end: a real daemon pulls from a fake Hugging Face hub (``HF_ENDPOINT``), the
unchanged ``ollama`` client shows the progress, and the pulled model answers a chat.

Also through the real daemon: two concurrent pulls of one model share one download, a
dropped connection is retried, a corrupted file fails without a manifest, a copy outlives
its deleted source, and deleting a loaded model stops its worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from registry.tiny_model import write_tiny_model
from tests.conftest import Daemon, processes_mentioning, shm_entries, start_daemon
from tests.fakehub import FakeHub, wait_until

pytestmark = pytest.mark.e2e

TAG = "qwen2.5:0.5b"
REPO = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"  # what the catalog maps TAG to
WEIGHTS = "model.safetensors"
TOKEN = "hf_e2e_token"
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def hub(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_model_dir(REPO, tiny_model_dir)
    for seed, repo in ((1, "e2e/concurrent"), (2, "e2e/interrupted"), (3, "e2e/corrupt")):
        model_dir = tmp_path_factory.mktemp(f"seed{seed}") / "model"
        write_tiny_model(model_dir, seed=seed)
        fake.add_model_dir(repo, model_dir)
    fake.corrupt("e2e/corrupt", WEIGHTS)
    with fake.serve():
        yield fake


@pytest.fixture(scope="module")
def daemon(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("pull-home")
    before = shm_entries()
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.port}", "HF_TOKEN": TOKEN}
    daemon = start_daemon(home, extra_env=env)
    try:
        yield daemon
    finally:
        code = daemon.stop()
        logs = daemon.logs()
        assert code == 0, logs
        assert "Traceback" not in logs, logs
        assert processes_mentioning(str(home)) == []
        assert shm_entries() - before == set()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    client = ollama.Client(host=daemon.url)
    yield client
    client._client.close()


def names(client: ollama.Client) -> list[str]:
    return [m.model or "" for m in client.list().models]


def test_pull_by_tag_then_chat(client: ollama.Client, hub: FakeHub, daemon: Daemon) -> None:
    parts = list(client.pull(TAG, stream=True))
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [p for p in parts if p.digest]
    weights = hub.repos[REPO].files[WEIGHTS]
    assert {p.digest for p in layers} >= {f"sha256:{weights.sha256}"}
    for part in layers:
        assert part.status == f"pulling {part.digest[7:19]}" and part.total  # type: ignore[index]
    assert max(p.completed or 0 for p in layers if p.digest == f"sha256:{weights.sha256}") == len(
        weights.data
    )

    # The daemon used HF_ENDPOINT and HF_TOKEN (the token stays off the CDN host).
    api_calls = [r for r in hub.requests if r.host.startswith("127.0.0.1") and REPO in r.path]
    assert api_calls and all(r.authorization == f"Bearer {TOKEN}" for r in api_calls)
    assert all(r.authorization is None for r in hub.downloads(weights.sha256))

    assert TAG in names(client)
    listed = next(m for m in client.list().models if m.model == TAG)
    assert listed.digest and len(listed.digest) == 64 and listed.size and listed.modified_at
    assert listed.details and listed.details.format == "mlx" and listed.details.family == "qwen2"
    shown = client.show(TAG)
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "qwen2"
    assert shown.capabilities == ["completion"] and shown.template and shown.modelfile
    raw = httpx.post(f"{daemon.url}/api/show", json={"model": TAG}).json()
    assert {"modelfile", "template", "details", "model_info", "capabilities", "modified_at"} <= set(raw)
    assert raw["details"] == {
        "parent_model": "",
        "format": "mlx",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": raw["details"]["parameter_size"],
        "quantization_level": "F32",
    }

    reply = client.chat(TAG, messages=[{"role": "user", "content": "Hello!"}], options=GREEDY)
    assert reply.done and reply.message.role == "assistant" and reply.eval_count


def test_two_concurrent_pulls_share_one_download(client: ollama.Client, daemon: Daemon, hub: FakeHub) -> None:
    weights = hub.repos["e2e/concurrent"].files[WEIGHTS]
    hub.paused.set()
    results: dict[int, list[Any]] = {}
    joined = threading.Event()

    def pull(index: int) -> None:
        with ollama.Client(host=daemon.url) as own:
            parts = []
            for part in own.pull("e2e/concurrent", stream=True):
                parts.append(part)
                if index == 1:
                    joined.set()
            results[index] = parts

    first = threading.Thread(target=pull, args=(0,))
    first.start()
    wait_until(lambda: len(hub.downloads(weights.sha256)) == 1)
    second = threading.Thread(target=pull, args=(1,))
    second.start()
    assert joined.wait(10)  # the second client receives progress from the running pull
    hub.paused.clear()
    first.join(30)
    second.join(30)
    assert results[0][-1].status == results[1][-1].status == "success"
    assert len(hub.downloads(weights.sha256)) == 1
    assert "e2e/concurrent:latest" in names(client)


def test_a_dropped_connection_is_retried(client: ollama.Client, hub: FakeHub) -> None:
    weights = hub.repos["e2e/interrupted"].files[WEIGHTS]
    hub.cut("e2e/interrupted", WEIGHTS, 100_000)
    assert client.pull("e2e/interrupted").status == "success"
    assert len(hub.downloads(weights.sha256)) == 2
    assert "e2e/interrupted:latest" in names(client)


def test_a_corrupted_file_leaves_no_model(client: ollama.Client, daemon: Daemon) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        list(client.pull("e2e/corrupt", stream=True))
    assert info.value.error.startswith("digest mismatch, file must be downloaded again")
    assert "e2e/corrupt:latest" not in names(client)
    assert not (daemon.home / "manifests" / "registry.ollama.ai" / "e2e" / "corrupt").exists()
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("e2e/corrupt")  # stream: false
    assert info.value.status_code == 500 and "digest mismatch" in info.value.error


def test_copy_then_delete_the_source_then_delete_while_loaded(client: ollama.Client, daemon: Daemon) -> None:
    assert client.copy(TAG, "mine").status == "success"
    assert client.delete(TAG).status == "success"
    assert TAG not in names(client) and "mine:latest" in names(client)
    reply = client.chat("mine", messages=[{"role": "user", "content": "Still there?"}], options=GREEDY)
    assert reply.done
    assert processes_mentioning(str(daemon.home)) != []  # its worker is running
    assert client.delete("mine").status == "success"
    wait_until(lambda: processes_mentioning(str(daemon.home)) == [])
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("mine", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 404
